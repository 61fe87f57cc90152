//! `CommitExec`: the single task after the write stage. It gathers every
//! writer partition's report and runs the commit ([`super::committer`]);
//! until it runs nothing of the write is visible in the output directory.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties,
};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::committer::{CommitSummary, commit};
use super::spec::WriteSpec;
use crate::exec::Report;

/// A write statement's result: one row of totals from the commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitReport {
    pub rows: u64,
    pub files: u64,
    pub bytes: u64,
    pub write_id: String,
    pub output: String,
    /// The whole commit step, staging cleanup included.
    pub commit_ms: u64,
    /// Rows per source split (a JSON object), when every file counted them.
    #[serde(default)]
    pub splits: Option<String>,
}

impl CommitReport {
    /// [`CommitReport::splits`], read.
    pub fn rows_by_split(&self) -> Option<std::collections::BTreeMap<String, u64>> {
        serde_json::from_str(self.splits.as_deref()?).ok()
    }
}

impl Report for CommitReport {
    const OPERATOR: &'static str = "SluiceCommitExec";

    fn fields() -> Vec<Field> {
        vec![
            Field::new("rows", DataType::UInt64, false),
            Field::new("files", DataType::UInt64, false),
            Field::new("bytes", DataType::UInt64, false),
            Field::new("write_id", DataType::Utf8, false),
            Field::new("output", DataType::Utf8, false),
            Field::new("commit_ms", DataType::UInt64, false),
            Field::new("splits", DataType::Utf8, true),
        ]
    }
}

/// Schema of a write statement's result ([`CommitReport`]).
pub fn write_result_schema() -> SchemaRef {
    CommitReport::schema()
}

#[derive(Debug)]
pub struct CommitExec {
    input: Arc<dyn ExecutionPlan>,
    spec: WriteSpec,
    properties: Arc<PlanProperties>,
}

impl CommitExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, spec: WriteSpec) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(write_result_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            spec,
            properties: Arc::new(properties),
        }
    }

    pub fn spec(&self) -> &WriteSpec {
        &self.spec
    }

    /// How many writer partitions must report: the input under the
    /// coalesce that gathers them (a shuffle reader once Ballista cut the
    /// stage), which is never narrowed to a task's slice.
    fn writer_partitions(&self) -> usize {
        match self.input.downcast_ref::<CoalescePartitionsExec>() {
            Some(coalesce) => coalesce.input().output_partitioning().partition_count(),
            None => self.input.output_partitioning().partition_count(),
        }
    }
}

impl DisplayAs for CommitExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SluiceCommitExec: url={}, overwrite={}, write_id={}",
            self.spec.url, self.spec.overwrite, self.spec.write_id
        )
    }
}

impl ExecutionPlan for CommitExec {
    crate::exec::single_input_plan!("SluiceCommitExec");

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        crate::exec::only_partition_zero("SluiceCommitExec", partition)?;
        let expected = self.writer_partitions();
        let input = self.input.execute(0, Arc::clone(&context))?;
        let spec = self.spec.clone();
        let span = tracing::info_span!("sluice.commit", write_id = %spec.write_id, url = %spec.url);
        let fut = async move {
            let staged: Vec<RecordBatch> = input.try_collect().await?;
            let store = context
                .runtime_env()
                .object_store_registry
                .get_store(&spec.output_url()?)?;
            let summary = commit(&spec, store, expected, &staged).await?;
            summary_batch(&summary, &spec)
        }
        .instrument(span);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            write_result_schema(),
            futures::stream::once(fut),
        )))
    }
}

/// The commit's one result row.
fn summary_batch(summary: &CommitSummary, spec: &WriteSpec) -> Result<RecordBatch> {
    CommitReport::to_batch(&[CommitReport {
        rows: summary.rows,
        files: summary.files.len() as u64,
        bytes: summary.bytes,
        write_id: spec.write_id.clone(),
        output: spec.url.clone(),
        commit_ms: summary.commit_ms,
        splits: super::manifest::rows_by_split(&summary.files)
            .and_then(|s| serde_json::to_string(&s).ok()),
    }])
}
