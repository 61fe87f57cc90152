//! Guards every shuffle read of a task against rows read twice or missed.
//!
//! Ballista's scheduler appends a map task's output locations to the
//! reading stage as each success arrives, without de-duplicating them, and
//! its reader opens a location as a local file whenever a file of that name
//! exists in the reader's own work directory. Either way a reduce task can
//! pass on rows twice, and a sink downstream would commit them: a 10 M-row
//! write once reported 10,154,405. [`CheckedShuffleRead`] sits over each
//! `ShuffleReaderExec` of a task: a partition whose location list names the
//! same map output twice fails before it reads, and one whose rows differ
//! from what its map tasks reported fails when the difference shows, so
//! the task (and after Ballista's retries, the job) fails with the stage,
//! partition and map task named instead of writing a wrong count.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use ballista_core::execution_plans::ShuffleReaderExec;
use ballista_core::serde::protobuf;
use ballista_core::serde::scheduler::PartitionLocation;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{Stream, StreamExt};

/// Why a shuffle read was stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShuffleReadError {
    #[error(
        "shuffle read of stage {stage} partition {partition}: the output of map task {map_task} \
         is listed {times} times (executors {executors}); reading it would repeat its rows"
    )]
    Repeated {
        stage: usize,
        partition: usize,
        map_task: usize,
        executors: String,
        times: usize,
    },
    #[error(
        "shuffle read of stage {stage} partition {partition}: read {read} rows, its {maps} map \
         outputs reported {reported}; rows were read twice or missed"
    )]
    Miscounted {
        stage: usize,
        partition: usize,
        read: u64,
        reported: u64,
        maps: usize,
    },
}

impl From<ShuffleReadError> for DataFusionError {
    fn from(e: ShuffleReadError) -> Self {
        DataFusionError::External(Box::new(e))
    }
}

/// Puts a [`CheckedShuffleRead`] over every `ShuffleReaderExec` of a
/// task's plan (and only there; a plan without shuffle reads is returned
/// as it was).
pub fn check_shuffle_reads(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|p| {
        if p.downcast_ref::<ShuffleReaderExec>().is_some() {
            Ok(Transformed::yes(Arc::new(CheckedShuffleRead::new(p)) as _))
        } else {
            Ok(Transformed::no(p))
        }
    })
    .map(|t| t.data)
}

/// A `ShuffleReaderExec` whose partitions are checked as they are read
/// (see the module docs). Runs on the executor only, so it is never
/// serialized.
#[derive(Debug)]
pub struct CheckedShuffleRead {
    input: Arc<dyn ExecutionPlan>,
}

impl CheckedShuffleRead {
    fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        Self { input }
    }
}

impl DisplayAs for CheckedShuffleRead {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CheckedShuffleRead")
    }
}

/// The rows a partition's map outputs reported, when every one did.
fn reported_rows(locations: &[PartitionLocation]) -> Option<u64> {
    locations
        .iter()
        .map(|l| {
            let stats: protobuf::PartitionStats = l.partition_stats.into();
            u64::try_from(stats.num_rows).ok()
        })
        .sum()
}

/// Fails when one map output appears twice in a partition's locations. A
/// map task's slot is never reused within a stage and runs on one
/// executor, so the same slot twice is a repeat even from two executors
/// (a late success from an executor taken for lost, and its re-run).
fn check_locations(locations: &[PartitionLocation]) -> Result<(), ShuffleReadError> {
    let mut seen: HashMap<(usize, usize, usize), Vec<&str>> = HashMap::new();
    for l in locations {
        let key = (
            l.partition_id.stage_id,
            l.partition_id.partition_id,
            l.map_partition_id,
        );
        seen.entry(key)
            .or_default()
            .push(l.executor_meta.id.as_str());
    }
    match seen.into_iter().find(|(_, on)| on.len() > 1) {
        Some(((stage, partition, map_task), on)) => Err(ShuffleReadError::Repeated {
            stage,
            partition,
            map_task,
            executors: on.join(", "),
            times: on.len(),
        }),
        None => Ok(()),
    }
}

impl ExecutionPlan for CheckedShuffleRead {
    fn name(&self) -> &str {
        "CheckedShuffleRead"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(child), true) => Ok(Arc::new(Self::new(child))),
            _ => Err(DataFusionError::Internal(
                "CheckedShuffleRead takes exactly one child".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let Some(reader) = self.input.downcast_ref::<ShuffleReaderExec>() else {
            return self.input.execute(partition, context);
        };
        let index = if reader.broadcast { 0 } else { partition };
        let Some(locations) = reader.partition.get(index) else {
            // The reader names the bad index itself.
            return self.input.execute(partition, context);
        };
        check_locations(locations)?;
        // The stage-wide partition, for the error (a task numbers its own
        // partitions from 0).
        let stage_partition = locations
            .first()
            .map_or(partition, |l| l.partition_id.partition_id);
        let stream = self.input.execute(partition, context)?;
        Ok(match reported_rows(locations) {
            Some(reported) => Box::pin(CountedRead {
                inner: stream,
                read: 0,
                reported,
                stage: reader.stage_id,
                partition: stage_partition,
                maps: locations.len(),
                done: false,
            }),
            None => stream,
        })
    }
}

/// A partition's rows, counted against what its map outputs reported.
struct CountedRead {
    inner: SendableRecordBatchStream,
    read: u64,
    reported: u64,
    stage: usize,
    partition: usize,
    maps: usize,
    done: bool,
}

impl CountedRead {
    fn miscounted(&mut self) -> DataFusionError {
        self.done = true;
        ShuffleReadError::Miscounted {
            stage: self.stage,
            partition: self.partition,
            read: self.read,
            reported: self.reported,
            maps: self.maps,
        }
        .into()
    }
}

impl Stream for CountedRead {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match ready!(self.inner.poll_next_unpin(cx)) {
            Some(Ok(batch)) => {
                self.read += batch.num_rows() as u64;
                // Stop at the first row too many, before a sink takes it.
                if self.read > self.reported {
                    return Poll::Ready(Some(Err(self.miscounted())));
                }
                Poll::Ready(Some(Ok(batch)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None if self.read != self.reported => Poll::Ready(Some(Err(self.miscounted()))),
            None => {
                self.done = true;
                Poll::Ready(None)
            }
        }
    }
}

impl RecordBatchStream for CountedRead {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::ipc::writer::StreamWriter;
    use ballista_core::JobId;
    use ballista_core::execution_plans::create_shuffle_path;
    use ballista_core::extension::SessionConfigExt;
    use ballista_core::serde::scheduler::{
        ExecutorMetadata, ExecutorOperatingSystemSpecification, ExecutorSpecification, PartitionId,
        PartitionStats,
    };
    use datafusion::physical_plan::{Partitioning, collect};
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]))
    }

    /// Map task `map` of stage 1 wrote `rows` rows for partition 0 into
    /// `work_dir` and reported `reported`.
    fn map_output(work_dir: &Path, map: usize, rows: i64, reported: u64) -> PartitionLocation {
        let job = JobId::new("job");
        let path = create_shuffle_path(work_dir, &job, 1, 0, Some(map as u64), false).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let batch = RecordBatch::try_new(
            schema(),
            vec![Arc::new(Int64Array::from_iter_values(0..rows))],
        )
        .unwrap();
        let mut writer =
            StreamWriter::try_new(std::fs::File::create(&path).unwrap(), &schema()).unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        PartitionLocation {
            map_partition_id: map,
            partition_id: PartitionId {
                job_id: job,
                stage_id: 1,
                partition_id: 0,
            },
            executor_meta: ExecutorMetadata {
                id: "executor-a".into(),
                host: "127.0.0.1".into(),
                port: 1,
                grpc_port: 1,
                specification: ExecutorSpecification { vcores: 1 },
                os_info: ExecutorOperatingSystemSpecification::default(),
            },
            partition_stats: PartitionStats::new(Some(reported), Some(1), None),
            file_id: Some(map as u64),
            is_sort_shuffle: false,
        }
    }

    /// Reads partition 0 of `locations` through the guard; the rows read or
    /// the error.
    async fn read(work_dir: &Path, locations: Vec<PartitionLocation>) -> Result<usize, String> {
        let reader = ShuffleReaderExec::try_new(
            1,
            vec![locations],
            schema(),
            Partitioning::UnknownPartitioning(1),
        )
        .unwrap()
        .with_work_dir(work_dir.display().to_string());
        let plan = check_shuffle_reads(Arc::new(reader)).unwrap();
        assert_eq!(plan.name(), "CheckedShuffleRead");
        let ctx = SessionContext::new_with_config(SessionConfig::new_with_ballista());
        collect(plan, ctx.task_ctx())
            .await
            .map(|batches| batches.iter().map(RecordBatch::num_rows).sum())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn map_outputs_that_match_their_reports_are_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let locations = vec![
            map_output(dir.path(), 0, 5, 5),
            map_output(dir.path(), 1, 3, 3),
        ];
        assert_eq!(read(dir.path(), locations).await, Ok(8));
    }

    #[tokio::test]
    async fn a_map_output_listed_twice_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        // A late success from an executor taken for lost, and the re-run.
        let once = map_output(dir.path(), 7, 5, 5);
        let mut again = once.clone();
        again.executor_meta.id = "executor-b".into();
        let err = read(dir.path(), vec![once, again]).await.unwrap_err();
        assert!(
            err.contains(
                "shuffle read of stage 1 partition 0: the output of map task 7 is listed 2 \
                 times (executors executor-a, executor-b)"
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn more_rows_than_reported_fail_the_read() {
        // A file left by an earlier attempt under the same name holds 9 rows;
        // this attempt's map task reported 4.
        let dir = tempfile::tempdir().unwrap();
        let err = read(dir.path(), vec![map_output(dir.path(), 0, 9, 4)])
            .await
            .unwrap_err();
        assert!(
            err.contains(
                "read 9 rows, its 1 map outputs reported 4; rows were read twice or missed"
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn fewer_rows_than_reported_fail_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(
            dir.path(),
            vec![
                map_output(dir.path(), 0, 2, 2),
                map_output(dir.path(), 1, 3, 6),
            ],
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("read 5 rows, its 2 map outputs reported 8"),
            "{err}"
        );
    }

    #[test]
    fn a_plan_without_shuffle_reads_is_left_as_it_was() {
        let plan: Arc<dyn ExecutionPlan> =
            Arc::new(datafusion::physical_plan::empty::EmptyExec::new(schema()));
        let checked = check_shuffle_reads(Arc::clone(&plan)).unwrap();
        assert!(Arc::ptr_eq(&plan, &checked));
    }
}
