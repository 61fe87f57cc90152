//! `WriterExec`: runs in every task of the write stage. It streams its input
//! partition into one file under the write's staging prefix and emits one row
//! saying what it wrote. Nothing it writes is visible in the output directory:
//! only the commit step moves files there.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use arrow::array::{RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::config::{ConfigField, TableParquetOptions};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::file::properties::WriterPropertiesBuilder;
use tracing::Instrument;

use super::multipart;
use super::spec::{Committer, WriteFormat, WriteSpec};
use crate::error::SluiceError;

/// Schema of the rows a writer task emits: one per task, read by the commit.
pub fn written_file_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("task", DataType::Utf8, false),
            // The staged file, or for a multipart upload its final key.
            Field::new("path", DataType::Utf8, false),
            Field::new("rows", DataType::UInt64, false),
            Field::new("bytes", DataType::UInt64, false),
            // A pending multipart upload: its id and part ids (JSON list).
            Field::new("upload_id", DataType::Utf8, true),
            Field::new("parts", DataType::Utf8, true),
        ]))
    });
    Arc::clone(&SCHEMA)
}

#[derive(Debug)]
pub struct WriterExec {
    input: Arc<dyn ExecutionPlan>,
    spec: WriteSpec,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl WriterExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, spec: WriteSpec) -> Self {
        let partitioning = input.output_partitioning().clone();
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

/// Writer properties as DataFusion's `COPY` would use them: the session's
/// `datafusion.execution.parquet.*` settings, then the statement's options.
pub fn parquet_properties(
    spec: &WriteSpec,
    schema: &SchemaRef,
    ctx: &TaskContext,
) -> Result<WriterPropertiesBuilder> {
    let mut options = TableParquetOptions {
        global: ctx.session_config().options().execution.parquet.clone(),
        ..Default::default()
    };
    for (key, value) in &spec.options {
        let key = key.strip_prefix("format.").unwrap_or(key);
        options.set(key, value)?;
    }
    // Like DataFusion's ParquetSink: the arrow schema travels in the footer's
    // key-value metadata unless the user turned it off.
    if !options.global.skip_arrow_metadata {
        options.arrow_schema(schema);
    }
    WriterPropertiesBuilder::try_from(&options)
}

impl ExecutionPlan for WriterExec {
    fn name(&self) -> &str {
        "SluiceWriterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
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
        match children.pop() {
            Some(child) if children.is_empty() => Ok(Arc::new(Self::new(child, self.spec.clone()))),
            _ => Err(DataFusionError::Internal(
                "SluiceWriterExec takes exactly one child".into(),
            )),
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
            let written = write_partition(&spec, &task, input, &context).await?;
            let (path, rows, bytes) = (written.path, written.rows, written.bytes);
            rows_metric.add(rows as usize);
            bytes_metric.add(bytes as usize);
            tracing::info!(
                rows,
                bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                path = %path,
                "staged file"
            );
            let batch = RecordBatch::try_new(
                written_file_schema(),
                vec![
                    Arc::new(StringArray::from(vec![task])),
                    Arc::new(StringArray::from(vec![path])),
                    Arc::new(UInt64Array::from(vec![rows])),
                    Arc::new(UInt64Array::from(vec![bytes])),
                    Arc::new(StringArray::from(vec![written.upload_id])),
                    Arc::new(StringArray::from(vec![written.parts])),
                ],
            )?;
            Ok(batch)
        }
        .instrument(span);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            written_file_schema(),
            futures::stream::once(fut),
        )))
    }
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

/// What one writer partition produced.
struct Written {
    path: String,
    rows: u64,
    bytes: u64,
    upload_id: Option<String>,
    parts: Option<String>,
}

async fn write_partition(
    spec: &WriteSpec,
    stem: &str,
    input: SendableRecordBatchStream,
    context: &TaskContext,
) -> Result<Written> {
    let url = spec.output_url()?;
    let store = context
        .runtime_env()
        .object_store_registry
        .get_store(&url)?;
    if spec.uses_multipart()? {
        let s3 = multipart::s3_store(&url)?;
        let key = spec.final_path_for(stem)?;
        let shown = format!("{}{}", spec.url, key.filename().unwrap_or_default());
        let upload_id = multipart::start_upload(&s3, &store, spec, stem, &key)
            .await
            .map_err(|e| write_error(&shown, e.to_string()))?;
        let file = multipart::MultipartFileWriter::new(s3, key.clone(), upload_id);
        let (rows, bytes, file) = encode_file(spec, file, input, context, &shown).await?;
        let pending = file.pending();
        let parts = serde_json::to_string(&pending.parts)
            .map_err(|e| write_error(&shown, e.to_string()))?;
        return Ok(Written {
            path: pending.key,
            rows,
            bytes,
            upload_id: Some(pending.upload_id),
            parts: Some(parts),
        });
    }
    let path = spec.staging_path(stem)?;
    let shown = format!(
        "{}://{}/{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        path
    );
    let file = BufWriter::new(Arc::clone(&store), path.clone());
    let (rows, bytes, _) = encode_file(spec, file, input, context, &shown).await?;
    // The rename committers' task commit (comparison shapes, see `Committer`).
    let path = match spec.committer {
        Committer::Auto => path,
        Committer::RenameV1 => {
            let to = spec.task_committed_path(stem)?;
            store
                .rename(&path, &to)
                .await
                .map_err(|e| write_error(&shown, e.to_string()))?;
            to
        }
        Committer::RenameV2 => {
            let to = spec.final_path_for(stem)?;
            store
                .rename(&path, &to)
                .await
                .map_err(|e| write_error(&shown, e.to_string()))?;
            to
        }
    };
    Ok(Written {
        path: path.to_string(),
        rows,
        bytes,
        upload_id: None,
        parts: None,
    })
}

/// Encodes the partition into `file` in the write's format and finishes the
/// file (which for a multipart upload sends the last part, no more).
/// Returns rows, bytes and the file writer.
async fn encode_file<W: AsyncFileWriter>(
    spec: &WriteSpec,
    mut file: W,
    mut input: SendableRecordBatchStream,
    context: &TaskContext,
    shown: &str,
) -> Result<(u64, u64, W)> {
    let schema = input.schema();
    let fail = |e: &dyn std::fmt::Display| write_error(shown, e.to_string());
    if spec.format == WriteFormat::Parquet {
        let props = parquet_properties(spec, &schema, context)?.build();
        // The schema is already in `props`' metadata; stop the writer adding it twice.
        let options = ArrowWriterOptions::new()
            .with_properties(props)
            .with_skip_arrow_metadata(true);
        let mut writer =
            AsyncArrowWriter::try_new_with_options(file, schema, options).map_err(|e| fail(&e))?;
        let mut rows = 0u64;
        while let Some(batch) = input.next().await {
            let batch = batch?;
            rows += batch.num_rows() as u64;
            writer.write(&batch).await.map_err(|e| fail(&e))?;
        }
        writer.finish().await.map_err(|e| fail(&e))?;
        let bytes = writer.bytes_written() as u64;
        return Ok((rows, bytes, writer.into_inner()));
    }
    let text = TextOptions::from_spec(spec)?;
    let (mut rows, mut bytes) = (0u64, 0u64);
    let mut first = true;
    while let Some(batch) = input.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        let mut buf = Vec::with_capacity(batch.get_array_memory_size());
        match spec.format {
            WriteFormat::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(text.header && first)
                    .with_delimiter(text.delimiter)
                    .build(&mut buf);
                w.write(&batch).map_err(|e| fail(&e))?;
            }
            _ => {
                let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
                w.write(&batch).map_err(|e| fail(&e))?;
                w.finish().map_err(|e| fail(&e))?;
            }
        }
        first = false;
        bytes += buf.len() as u64;
        file.write(buf.into()).await.map_err(|e| fail(&e))?;
    }
    if first && text.header && spec.format == WriteFormat::Csv {
        // An empty partition still gets its header line.
        let mut buf = Vec::new();
        arrow::csv::WriterBuilder::new()
            .with_header(true)
            .with_delimiter(text.delimiter)
            .build(&mut buf)
            .write(&RecordBatch::new_empty(schema))
            .map_err(|e| fail(&e))?;
        bytes += buf.len() as u64;
        file.write(buf.into()).await.map_err(|e| fail(&e))?;
    }
    file.complete().await.map_err(|e| fail(&e))?;
    Ok((rows, bytes, file))
}

/// CSV options a statement may give (`OPTIONS ('format.has_header' 'false',
/// 'format.delimiter' '|')`), DataFusion's names.
struct TextOptions {
    header: bool,
    delimiter: u8,
}

impl TextOptions {
    fn from_spec(spec: &WriteSpec) -> Result<Self> {
        let mut out = Self {
            header: true,
            delimiter: b',',
        };
        for (key, value) in &spec.options {
            match key.strip_prefix("format.").unwrap_or(key) {
                "has_header" => {
                    out.header = value.parse().map_err(|_| {
                        DataFusionError::Configuration(format!(
                            "has_header must be true or false, got '{value}'"
                        ))
                    })?;
                }
                "delimiter" => match value.as_bytes() {
                    [b] => out.delimiter = *b,
                    _ => {
                        return Err(DataFusionError::Configuration(format!(
                            "delimiter must be one byte, got '{value}'"
                        )));
                    }
                },
                other => {
                    return Err(DataFusionError::Configuration(format!(
                        "unknown {:?} write option '{other}'",
                        spec.format
                    )));
                }
            }
        }
        Ok(out)
    }
}

fn write_error(path: &str, reason: String) -> DataFusionError {
    DataFusionError::External(Box::new(SluiceError::Write {
        path: path.to_string(),
        reason,
    }))
}

#[cfg(test)]
mod tests {
    use super::staged_file_stem;

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
