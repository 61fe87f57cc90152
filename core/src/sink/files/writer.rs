//! `WriterExec`: runs in every task of the write stage. It streams its input
//! partition into files (see [`super::output`]) and emits one row per file
//! saying what it wrote. Nothing it writes is visible in the output
//! directory: only the commit step makes files visible.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties,
};
use tracing::Instrument;

use serde::{Deserialize, Serialize};

use super::output::{FileFactory, Written, write_partition};
use super::spec::{CHUNK_COLUMN, Distribution as Distribution_, WriteSpec};
use crate::exec::Report;

/// A writer task's report: one row per file it wrote (one with an empty
/// `path` when its input was empty), read by the commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WrittenFile {
    /// The writer partition (task attempt and local partition).
    pub task: String,
    #[serde(flatten)]
    pub file: Written,
}

impl Report for WrittenFile {
    const OPERATOR: &'static str = "SluiceWriterExec";

    fn fields() -> Vec<Field> {
        vec![
            Field::new("task", DataType::Utf8, false),
            Field::new("dir", DataType::Utf8, false),
            Field::new("path", DataType::Utf8, false),
            Field::new("rows", DataType::UInt64, false),
            Field::new("bytes", DataType::UInt64, false),
            Field::new("upload_id", DataType::Utf8, true),
            Field::new("parts", DataType::Utf8, true),
            Field::new("splits", DataType::Utf8, true),
        ]
    }
}

/// Schema of [`WrittenFile`].
pub fn written_file_schema() -> SchemaRef {
    WrittenFile::schema()
}

#[derive(Debug)]
pub struct WriterExec {
    input: Arc<dyn ExecutionPlan>,
    spec: WriteSpec,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    /// The stage-wide partition of each of this task's partitions, in local
    /// order; set by the executor (see [`WriterExec::with_global_partitions`]).
    global_partitions: Option<Arc<[usize]>>,
}

impl WriterExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, spec: WriteSpec) -> Self {
        // The rows it emits describe files, not the input's columns.
        let partitioning =
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count());
        let properties = PlanProperties::new(
            EquivalenceProperties::new(written_file_schema()),
            partitioning,
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            spec,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
            global_partitions: None,
        }
    }

    /// Ballista runs a task on a slice of the stage's partitions, renumbered
    /// from 0, and tells only the executor which ones
    /// (`global_output_partition_ids`). With them a file's final name
    /// depends on the partition, not on the attempt: a re-run writes the
    /// same key, and only one attempt's upload of it is ever completed.
    pub fn with_global_partitions(&self, ids: Vec<usize>) -> Self {
        let mut w = self.with_child(Arc::clone(&self.input));
        w.global_partitions = Some(ids.into());
        w
    }

    /// The same writer over a new input, keeping what the executor set.
    fn with_child(&self, input: Arc<dyn ExecutionPlan>) -> Self {
        let mut w = Self::new(input, self.spec.clone());
        w.global_partitions = self.global_partitions.clone();
        w
    }

    /// The name a partition's files are keyed under: its stage-wide number
    /// when known, else the attempt's own name.
    fn key_task(&self, partition: usize, task: &str) -> String {
        match self
            .global_partitions
            .as_ref()
            .and_then(|g| g.get(partition))
        {
            Some(global) => format!("p{global:05}"),
            None => task.to_string(),
        }
    }

    pub fn spec(&self) -> &WriteSpec {
        &self.spec
    }

    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }
}

impl DisplayAs for WriterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SluiceWriterExec: url={}, format={:?}, write_id={}",
            self.spec.url, self.spec.format, self.spec.write_id
        )
    }
}

impl ExecutionPlan for WriterExec {
    crate::exec::single_input_plan!("SluiceWriterExec", with_child);

    /// A skew-aware write wants each chunk in one writer (its input is
    /// already shuffled by chunk, see [`super::chunks`]); a `hash` write
    /// wants each partition value in one writer (one shuffle, planned by
    /// DataFusion), so that with `write.target_file_rows` every value gets
    /// ceil(rows / target) files.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        let schema = self.input.schema();
        if let Ok(chunk) = Column::new_with_schema(CHUNK_COLUMN, &schema) {
            return vec![Distribution::KeyPartitioned(vec![Arc::new(chunk)])];
        }
        if self.spec.partition_by.is_empty() || self.spec.distribution == Distribution_::None {
            return vec![Distribution::UnspecifiedDistribution];
        }
        let exprs: Option<Vec<Arc<dyn PhysicalExpr>>> = self
            .spec
            .partition_by
            .iter()
            .map(|c| {
                Column::new_with_schema(c, &schema)
                    .ok()
                    .map(|c| Arc::new(c) as Arc<dyn PhysicalExpr>)
            })
            .collect();
        match exprs {
            Some(exprs) => vec![Distribution::KeyPartitioned(exprs)],
            // A missing column fails in the writer, with its name.
            None => vec![Distribution::UnspecifiedDistribution],
        }
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        // Ballista runs several partitions per task and renumbers them from 0
        // in each task, so `partition` alone does not name a file uniquely.
        let task = staged_file_stem(context.task_id().as_deref(), partition);
        let key_task = self.key_task(partition, &task);
        let spec = self.spec.clone();
        let rows_metric = MetricBuilder::new(&self.metrics).output_rows(partition);
        let bytes_metric = MetricBuilder::new(&self.metrics).counter("bytes_written", partition);
        let span = tracing::info_span!(
            "sluice.write_task",
            write_id = %spec.write_id,
            partition,
            task = %task
        );
        let fut = async move {
            let started = Instant::now();
            let url = spec.output_url()?;
            let factory = FileFactory {
                spec: &spec,
                store: context
                    .runtime_env()
                    .object_store_registry
                    .get_store(&url)?,
                context: &context,
                task: &task,
                key_task: &key_task,
            };
            let mut files = write_partition(&factory, input).await?;
            let rows: u64 = files.iter().map(|f| f.rows).sum();
            let bytes: u64 = files.iter().map(|f| f.bytes).sum();
            rows_metric.add(rows as usize);
            bytes_metric.add(bytes as usize);
            super::metrics::partition_written(&spec, rows, bytes, files.len(), started.elapsed());
            tracing::info!(
                rows,
                bytes,
                files = files.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "wrote partition"
            );
            if files.is_empty() {
                // Still report the partition, so the commit can count it.
                files.push(Written {
                    dir: String::new(),
                    path: String::new(),
                    rows: 0,
                    bytes: 0,
                    upload_id: None,
                    parts: None,
                    splits: None,
                });
            }
            let reports: Vec<WrittenFile> = files
                .into_iter()
                .map(|file| WrittenFile {
                    task: task.clone(),
                    file,
                })
                .collect();
            let batch = WrittenFile::to_batch(&reports)?;
            Ok(batch)
        }
        .instrument(span);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            written_file_schema(),
            futures::stream::once(fut),
        )))
    }
}

/// Tells the sluice writer at the top of a stage (under the shuffle writer,
/// through operators that keep its partitions) the stage-wide partition of
/// each partition the task runs: `ids[local]`, Ballista's
/// `global_output_partition_ids` for such a pass-through stage. Any other
/// plan is returned as it was, and its files keep per-attempt names.
pub fn attach_global_partitions(
    plan: Arc<dyn ExecutionPlan>,
    ids: &[usize],
) -> Result<Arc<dyn ExecutionPlan>> {
    fn walk(
        plan: &Arc<dyn ExecutionPlan>,
        ids: &[usize],
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        if let Some(writer) = plan.downcast_ref::<WriterExec>() {
            return Ok(Some(Arc::new(writer.with_global_partitions(ids.to_vec()))));
        }
        // Rows change partitions here: Ballista numbers what is above it
        // afresh, and the ids no longer say which partition the writer runs.
        if plan.downcast_ref::<RepartitionExec>().is_some() {
            return Ok(None);
        }
        let children = plan.children();
        let [child] = children.as_slice() else {
            return Ok(None);
        };
        if child.output_partitioning().partition_count() != ids.len() {
            return Ok(None);
        }
        walk(child, ids)?
            .map(|child| replace_children_if_necessary(Arc::clone(plan), vec![child]))
            .transpose()
    }
    Ok(walk(&plan, ids)?.unwrap_or(plan))
}

/// A staged file's name: Ballista's task identity (`TID job/stage.attempt/
/// task.attempt`) and the task-local partition, zero-padded so names sort in
/// task order; a fresh id when there is no task identity (plain DataFusion).
pub fn staged_file_stem(task_id: Option<&str>, partition: usize) -> String {
    let numbers = |part: &str| -> Option<(u64, u64)> {
        let (a, b) = part.split_once('.')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let parsed = task_id.and_then(|t| {
        let mut parts = t.rsplit('/');
        let (task, task_attempt) = numbers(parts.next()?)?;
        let (stage, stage_attempt) = numbers(parts.next()?)?;
        Some(format!(
            "s{stage:03}.{stage_attempt}-t{task:06}.{task_attempt}-p{partition:04}"
        ))
    });
    parsed.unwrap_or_else(|| format!("local-{}-p{partition:04}", uuid::Uuid::new_v4().simple()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::Partitioning;
    use datafusion::physical_expr::expressions::lit;
    use datafusion::physical_plan::ExecutionPlan;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::physical_plan::filter::FilterExec;
    use datafusion::physical_plan::repartition::RepartitionExec;

    use super::{
        WriterExec, Written, WrittenFile, attach_global_partitions, replace_children_if_necessary,
        staged_file_stem,
    };
    use crate::exec::Report;
    use crate::sink::files::{WriteFormat, WriteSpec};

    #[test]
    fn written_files_round_trip_through_their_report() -> datafusion::common::Result<()> {
        let files = vec![
            WrittenFile {
                task: "s1.0-t2.0-p3".into(),
                file: Written {
                    dir: "id=7".into(),
                    path: "out/id=7/part-p00003-abc.parquet".into(),
                    rows: 240_000,
                    bytes: 1 << 33,
                    upload_id: Some("u-1".into()),
                    parts: Some(r#"["e1","e2"]"#.into()),
                    splits: Some(r#"{"shardId-1":240000}"#.into()),
                },
            },
            WrittenFile {
                task: "s1.0-t2.0-p4".into(),
                file: Written {
                    dir: String::new(),
                    path: String::new(),
                    rows: 0,
                    bytes: 0,
                    upload_id: None,
                    parts: None,
                    splits: None,
                },
            },
        ];
        let batch = WrittenFile::to_batch(&files)?;
        assert_eq!(batch.schema().field(0).name(), "task");
        assert_eq!(WrittenFile::from_batches(&[batch])?, files);
        Ok(())
    }

    fn writer_under(partitions: usize) -> Arc<dyn ExecutionPlan> {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let scan = Arc::new(EmptyExec::new(schema).with_partitions(partitions));
        let spec = WriteSpec::new("s3://b/o", WriteFormat::Parquet, true, BTreeMap::new()).unwrap();
        let writer = Arc::new(WriterExec::new(scan, spec));
        // The stage root (a shuffle writer on an executor) over a
        // partition-keeping operator over the writer.
        let keep = Arc::new(FilterExec::try_new(lit(true), writer).unwrap());
        Arc::new(FilterExec::try_new(lit(true), keep).unwrap())
    }

    fn find_writer(plan: &Arc<dyn ExecutionPlan>) -> &WriterExec {
        match plan.downcast_ref::<WriterExec>() {
            Some(w) => w,
            None => find_writer(plan.children()[0]),
        }
    }

    #[test]
    fn the_writer_learns_its_stage_wide_partitions() {
        let plan = attach_global_partitions(writer_under(3), &[4, 7, 9]).unwrap();
        let writer = find_writer(&plan);
        assert_eq!(writer.key_task(1, "attempt"), "p00007");
        assert_eq!(writer.key_task(2, "attempt"), "p00009");
        // Rebuilt over a new input (as Ballista's engine does with shuffle
        // readers), the writer keeps them.
        let writer_node = Arc::clone(plan.children()[0].children()[0]);
        let input = Arc::new(EmptyExec::new(writer.input().schema()).with_partitions(3));
        let rebuilt = replace_children_if_necessary(writer_node, vec![input]).unwrap();
        assert_eq!(find_writer(&rebuilt).key_task(0, "attempt"), "p00004");
        // Partition counts that do not match: names stay per attempt.
        let plan = attach_global_partitions(writer_under(3), &[4, 7]).unwrap();
        assert_eq!(find_writer(&plan).key_task(0, "attempt"), "attempt");
        // Nor through a repartition, which renumbers what is above it.
        let shuffled = Arc::new(
            RepartitionExec::try_new(writer_under(3), Partitioning::RoundRobinBatch(3)).unwrap(),
        );
        let root = Arc::new(FilterExec::try_new(lit(true), shuffled).unwrap());
        let plan = attach_global_partitions(root, &[4, 7, 9]).unwrap();
        assert_eq!(find_writer(&plan).key_task(0, "attempt"), "attempt");
    }

    #[test]
    fn stems_name_task_attempt_and_partition() {
        assert_eq!(
            staged_file_stem(Some("TID 038G4G1KG6000/1.0/12.2"), 3),
            "s001.0-t000012.2-p0003"
        );
        // Sorting the stems sorts by task, then partition.
        assert!(
            staged_file_stem(Some("TID j/1.0/2.0"), 5)
                < staged_file_stem(Some("TID j/1.0/10.0"), 0)
        );
        let a = staged_file_stem(None, 0);
        let b = staged_file_stem(None, 0);
        assert!(a.starts_with("local-") && a != b);
    }
}
