//! sluice's distributed write path: a writer operator in every task of the
//! write stage, then one commit operator that makes the output visible.
//! DataFusion's `DataSinkExec` needs a single input partition, which would
//! funnel every row through one task; this path keeps the writes parallel.

mod commit;
pub mod files;
mod logical;
pub mod multipart;
mod spec;
mod writer;

pub use commit::{
    CleanedWrite, CommitExec, CommittedFile, SuccessData, abandon, clean_abandoned, commit,
    remove_staging,
};
pub use logical::{SluiceQueryPlanner, WriteNode, WritePlanner, write_result_schema};
pub use spec::{
    COMMITTER_OPTION, Committer, STAGING_DIR, SUCCESS_FILE, WriteFormat, WriteSpec,
    normalize_output_url,
};
pub use writer::{WriterExec, parquet_properties, written_file_schema};

/// The one child of a single-input operator, or an error naming it.
pub(crate) fn only_child(
    mut children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
    name: &str,
) -> datafusion::common::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    match children.pop() {
        Some(child) if children.is_empty() => Ok(child),
        _ => Err(datafusion::common::DataFusionError::Internal(format!(
            "{name} takes exactly one child"
        ))),
    }
}
