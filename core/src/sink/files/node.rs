//! The logical write node the client builds, and the physical plan it
//! becomes on the scheduler ([`plan_write`]).

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::physical_expr::Partitioning;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext};

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

/// Most reduce tasks a skew-aware write plans.
pub const MAX_REDUCE_PARTITIONS: usize = 4096;

/// Re-cuts each skew-aware write's shuffle by chunk into
/// [`reduce_partitions`] partitions, and tells its route the same count.
/// It runs after DataFusion's physical optimizer, whose EnforceDistribution
/// removes every repartition and plans it again at `target_partitions`.
pub fn size_skew_shuffles(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(repart) = node.downcast_ref::<RepartitionExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(route) = repart.input().downcast_ref::<SkewRouteExec>() else {
            return Ok(Transformed::no(node));
        };
        let &Partitioning::Hash(_, current) = repart.partitioning() else {
            return Ok(Transformed::no(node));
        };
        let partitions =
            reduce_partitions(route.input().as_ref(), current, route.spec().target_rows);
        if partitions == current && route.spec().partitions == partitions {
            return Ok(Transformed::no(node));
        }
        let spec = RouteSpec {
            partitions,
            ..route.spec().clone()
        };
        let routed: Arc<dyn ExecutionPlan> =
            Arc::new(SkewRouteExec::new(Arc::clone(route.input()), spec));
        let chunk = Column::new_with_schema(CHUNK_COLUMN, &routed.schema())?;
        let shuffle: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(
            routed,
            Partitioning::Hash(vec![Arc::new(chunk)], partitions),
        )?);
        Ok(Transformed::yes(shuffle))
    })
    .map(|t| t.data)
}

/// Reduce tasks of a skew-aware write: `target_partitions`, or one per
/// `target_rows` of input when the input's row count is known and that is
/// more, so that a reduce task holds about one file's rows.
///
/// Why rows and not a fixed count: Ballista 55 fetches each remote shuffle
/// block whole into memory (`fetch_partition_buffered`) and its governor
/// counts compressed bytes, so a reduce task holds most of its remote share
/// at once. heaptrack on an executor (`sluice-bench partitioned --rows
/// 20000000 --processes 2 --slots 4`, 16 reduce tasks) put 0.97 GB of the
/// reduce stage's 1.70 GB heap in those buffers. The row count is exact for
/// Parquet inputs (footers); without it (generators, streams) the count
/// stays `target_partitions`.
fn reduce_partitions(
    input: &dyn ExecutionPlan,
    target_partitions: usize,
    target_rows: u64,
) -> usize {
    let rows = StatisticsContext::new()
        .compute(input, &StatisticsArgs::new())
        .ok()
        .and_then(|s| s.num_rows.get_value().copied());
    let by_rows = rows.map_or(0, |r| (r as u64).div_ceil(target_rows.max(1)));
    usize::try_from(by_rows)
        .unwrap_or(MAX_REDUCE_PARTITIONS)
        .clamp(
            target_partitions.max(1),
            MAX_REDUCE_PARTITIONS.max(target_partitions),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::ExecutionPlanProperties;
    use datafusion::physical_plan::empty::EmptyExec;

    fn rows(n: i64) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from_iter_values(0..n))],
        )?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            schema,
            None,
        )?)
    }

    #[test]
    fn reduce_tasks_follow_the_input_rows_over_the_target() -> Result<()> {
        // 1,000 rows at 100 a file: ten tasks, unless the session asks for more.
        assert_eq!(reduce_partitions(rows(1000)?.as_ref(), 4, 100), 10);
        assert_eq!(reduce_partitions(rows(1000)?.as_ref(), 16, 100), 16);
        assert_eq!(reduce_partitions(rows(1001)?.as_ref(), 4, 100), 11);
        // Capped, however small the target.
        assert_eq!(
            reduce_partitions(rows(10_000)?.as_ref(), 4, 1),
            MAX_REDUCE_PARTITIONS
        );
        // No rows (an empty input): the session's count.
        let empty = EmptyExec::new(Arc::new(Schema::empty()));
        assert_eq!(reduce_partitions(&empty, 16, 100), 16);
        Ok(())
    }

    #[test]
    fn a_generator_gives_its_rows() -> Result<()> {
        use sluice_udfs::range::{RangeExec, RangeSpec, slice_source};
        // range(0, 40000, 1, 3): exactly 40,000 rows, 40 tasks at 1,000.
        let spec = RangeSpec::new(0, 40_000, 1, 3)?;
        let range = RangeExec::try_new(spec, false, slice_source(spec)?)?;
        assert_eq!(reduce_partitions(&range, 16, 1000), 40);
        Ok(())
    }

    #[test]
    fn a_skew_shuffle_is_recut_by_rows_with_its_route() -> Result<()> {
        let spec = RouteSpec {
            write_id: "w".into(),
            partition_by: vec!["id".into()],
            target_rows: 100,
            partitions: 4,
        };
        let routed: Arc<dyn ExecutionPlan> = Arc::new(SkewRouteExec::new(rows(1000)?, spec));
        let chunk = Column::new_with_schema(CHUNK_COLUMN, &routed.schema())?;
        let plan: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(
            routed,
            Partitioning::Hash(vec![Arc::new(chunk)], 4),
        )?);
        let sized = size_skew_shuffles(plan)?;
        assert_eq!(sized.output_partitioning().partition_count(), 10);
        let route = sized.children()[0]
            .downcast_ref::<SkewRouteExec>()
            .map(|r| r.spec().partitions);
        assert_eq!(route, Some(10));
        Ok(())
    }
}
