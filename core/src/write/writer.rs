//! `WriterExec`: runs in every task of the write stage. It streams its input
//! partition into one file under the write's staging prefix and emits one row
//! saying what it wrote. Nothing it writes is visible in the output directory:
//! only the commit step moves files there.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use arrow::array::{RecordBatch, StringArray, UInt32Array, UInt64Array};
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
use parquet::arrow::AsyncArrowWriter;
use object_store::buffered::BufWriter;
use parquet::file::properties::WriterPropertiesBuilder;
use tracing::Instrument;

use super::spec::WriteSpec;
use crate::error::SluiceError;

/// Schema of the rows a writer task emits: one per task, read by the commit.
pub fn written_file_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("partition", DataType::UInt32, false),
            Field::new("partitions", DataType::UInt32, false),
            Field::new("staging_path", DataType::Utf8, false),
            Field::new("rows", DataType::UInt64, false),
            Field::new("bytes", DataType::UInt64, false),
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
pub fn parquet_properties(spec: &WriteSpec, ctx: &TaskContext) -> Result<WriterPropertiesBuilder> {
    let mut options = TableParquetOptions {
        global: ctx.session_config().options().execution.parquet.clone(),
        ..Default::default()
    };
    for (key, value) in &spec.options {
        let key = key.strip_prefix("format.").unwrap_or(key);
        options.set(key, value)?;
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
            Some(child) if children.is_empty() => {
                Ok(Arc::new(Self::new(child, self.spec.clone())))
            }
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
        let partitions = self.input.output_partitioning().partition_count();
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let spec = self.spec.clone();
        let rows_metric = MetricBuilder::new(&self.metrics).output_rows(partition);
        let bytes_metric = MetricBuilder::new(&self.metrics).counter("bytes_written", partition);
        let span = tracing::info_span!(
            "sluice.write_task",
            write_id = %spec.write_id,
            partition,
            partitions
        );
        let fut = async move {
            let started = Instant::now();
            let (path, rows, bytes) = write_partition(&spec, partition, input, &context).await?;
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
                    Arc::new(UInt32Array::from(vec![partition as u32])),
                    Arc::new(UInt32Array::from(vec![partitions as u32])),
                    Arc::new(StringArray::from(vec![path])),
                    Arc::new(UInt64Array::from(vec![rows])),
                    Arc::new(UInt64Array::from(vec![bytes])),
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

async fn write_partition(
    spec: &WriteSpec,
    partition: usize,
    mut input: SendableRecordBatchStream,
    context: &TaskContext,
) -> Result<(String, u64, u64)> {
    let url = spec.output_url()?;
    let store = context.runtime_env().object_store_registry.get_store(&url)?;
    let path = spec.staging_path(partition)?;
    let shown = format!("{}://{}/{}", url.scheme(), url.host_str().unwrap_or_default(), path);
    let fail = |reason: String| SluiceError::Write {
        path: shown.clone(),
        reason,
    };
    let props = parquet_properties(spec, context)?.build();
    let object_writer = BufWriter::new(Arc::clone(&store), path.clone());
    let mut writer = AsyncArrowWriter::try_new(object_writer, input.schema(), Some(props))
        .map_err(|e| fail(e.to_string()))?;
    let mut rows = 0u64;
    while let Some(batch) = input.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        writer
            .write(&batch)
            .await
            .map_err(|e| fail(e.to_string()))?;
    }
    writer.finish().await.map_err(|e| fail(e.to_string()))?;
    let bytes = writer.bytes_written() as u64;
    Ok((path.to_string(), rows, bytes))
}
