//! The logical write node the client builds, and the physical plan it
//! becomes on the scheduler ([`plan_write`]).

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::physical_expr::Partitioning;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::repartition::RepartitionExec;

use super::commit::{CommitExec, write_result_schema};
use super::route::{RouteSpec, SkewRouteExec};
use super::spec::{CHUNK_COLUMN, WriteSpec};
use super::writer::WriterExec;
use crate::exec::{SinkNode, SinkSpec};

/// A file write in the logical plan.
pub type WriteNode = SinkNode<WriteSpec>;

impl SinkSpec for WriteSpec {
    const NODE: &'static str = "SluiceWrite";

    fn result_schema() -> SchemaRef {
        write_result_schema()
    }

    fn explain(&self) -> String {
        format!(
            "url={}, format={:?}, overwrite={}, write_id={}",
            self.url, self.format, self.overwrite, self.write_id
        )
    }
}

/// The physical shape of a file write:
/// `CommitExec(CoalescePartitionsExec(WriterExec(input)))`, with the one
/// shuffle by chunk below the writers for a skew-aware write. The coalesce
/// is where Ballista cuts the stage: one task per input partition writes,
/// then one task commits.
pub fn plan_write(
    input: Arc<dyn ExecutionPlan>,
    spec: &WriteSpec,
    target_partitions: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    let input = match RouteSpec::for_write(spec, target_partitions) {
        // The one shuffle, by chunk, planned here so that its partition
        // count is the one the chunk tags were chosen for.
        Some(route) => {
            let partitions = route.partitions;
            let routed: Arc<dyn ExecutionPlan> = Arc::new(SkewRouteExec::new(input, route));
            let chunk = Column::new_with_schema(CHUNK_COLUMN, &routed.schema())?;
            Arc::new(RepartitionExec::try_new(
                routed,
                Partitioning::Hash(vec![Arc::new(chunk)], partitions),
            )?)
        }
        None => input,
    };
    let writer = Arc::new(WriterExec::new(input, spec.clone()));
    let gathered = Arc::new(CoalescePartitionsExec::new(writer));
    Ok(Arc::new(CommitExec::new(gathered, spec.clone())))
}
