//! sluice's distributed write path: a writer operator in every task of the
//! write stage, then one commit operator that makes the output visible.
//! DataFusion's `DataSinkExec` needs a single input partition, which would
//! funnel every row through one task; this path keeps the writes parallel.

pub mod chunks;
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
pub use writer::{WriterExec, attach_global_partitions, parquet_properties, written_file_schema};

/// The `ExecutionPlan` methods sluice's write and commit operators share:
/// each holds `input`, `spec` and `properties`, is rebuilt with
/// `Self::new(child, spec)`, and has no expressions of its own.
macro_rules! single_input_plan {
    ($name:literal) => {
        $crate::write::single_input_plan!(@body $name, |this: &Self, child| Self::new(child, this.spec.clone()));
    };
    // An operator with state beyond its spec rebuilds itself with `$rebuild`.
    ($name:literal, $rebuild:ident) => {
        $crate::write::single_input_plan!(@body $name, |this: &Self, child| this.$rebuild(child));
    };
    (@body $name:literal, $make:expr) => {
        fn name(&self) -> &str {
            $name
        }

        fn properties(&self) -> &::std::sync::Arc<::datafusion::physical_plan::PlanProperties> {
            &self.properties
        }

        fn children(
            &self,
        ) -> Vec<&::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>> {
            vec![&self.input]
        }

        fn apply_expressions(
            &self,
            _f: &mut dyn FnMut(
                &::std::sync::Arc<dyn ::datafusion::physical_expr::PhysicalExpr>,
            ) -> ::datafusion::common::Result<
                ::datafusion::common::tree_node::TreeNodeRecursion,
            >,
        ) -> ::datafusion::common::Result<::datafusion::common::tree_node::TreeNodeRecursion> {
            Ok(::datafusion::common::tree_node::TreeNodeRecursion::Continue)
        }

        fn with_new_children(
            self: ::std::sync::Arc<Self>,
            children: Vec<::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>>,
        ) -> ::datafusion::common::Result<
            ::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>,
        > {
            let child = $crate::write::only_child(children, $name)?;
            let make = $make;
            Ok(::std::sync::Arc::new(make(&self, child)))
        }
    };
}
pub(crate) use single_input_plan;

/// Operators that gather every writer's report run as one partition.
pub(crate) fn only_partition_zero(name: &str, partition: usize) -> datafusion::common::Result<()> {
    if partition != 0 {
        return Err(datafusion::common::DataFusionError::Internal(format!(
            "{name} has one partition, asked for {partition}"
        )));
    }
    Ok(())
}

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
