//! Sources read as numbered parts (scan segments, shard ranges, files):
//! the in-memory part source Ballista narrows to each task's partitions,
//! and [`PartScanExec`], the one operator every such source runs, with
//! what differs between them in its [`PartRead`] spec.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;
use futures::stream::BoxStream;

/// What a part-reading source knows: its schema, its parts, and how to
/// read one. The spec travels in the plan (`plan::codec`).
pub trait PartRead: fmt::Debug + Clone + Send + Sync + 'static {
    /// The operator's name in plans and errors.
    const NAME: &'static str;
    fn schema(&self) -> Result<SchemaRef>;
    /// How many parts the source reads.
    fn parts(&self) -> usize;
    /// What the operator shows in a plan after its name.
    fn describe(&self) -> String;
    /// The batches of part `i`, read as the stream is polled.
    fn read_part(
        self: Arc<Self>,
        schema: SchemaRef,
        i: usize,
        context: Arc<TaskContext>,
    ) -> BoxStream<'static, Result<RecordBatch>>;
}

/// Reads the parts its input names (see [`part_source`]: one per
/// partition until Ballista narrows a task to its own), part by part.
#[derive(Debug)]
pub struct PartScanExec<S> {
    spec: S,
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl<S: PartRead> PartScanExec<S> {
    /// The scan of every part of `spec`, one partition each.
    pub fn try_new(spec: S) -> Result<Self> {
        let input = part_source(spec.parts())?;
        Self::with_input(spec, input)
    }

    /// The scan over `input`'s part indices.
    pub fn with_input(spec: S, input: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let schema = spec.schema()?;
        Ok(Self::assemble(spec, schema, input))
    }

    fn assemble(spec: S, schema: SchemaRef, input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = part_properties(&schema, &input);
        Self {
            spec,
            input,
            schema,
            properties,
        }
    }

    fn rebuild(&self, input: Arc<dyn ExecutionPlan>) -> Self {
        Self::assemble(self.spec.clone(), Arc::clone(&self.schema), input)
    }

    pub fn spec(&self) -> &S {
        &self.spec
    }
}

impl<S: PartRead> DisplayAs for PartScanExec<S> {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}", S::NAME, self.spec.describe())
    }
}

impl<S: PartRead> ExecutionPlan for PartScanExec<S> {
    super::single_input_plan!(S::NAME, rebuild);

    // Splitting the part source would read a part twice.
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let spec = Arc::new(self.spec.clone());
        let schema = Arc::clone(&self.schema);
        let input = Arc::clone(&self.input);
        let indices = async move {
            let indices = part_indices(&input, partition, Arc::clone(&context)).await;
            (indices, context)
        };
        // Part by part, each read as it is polled: a task holds one page
        // or chunk of a part, not the part.
        let stream = futures::stream::once(indices)
            .map(move |(indices, context)| match indices {
                Ok(indices) => {
                    let (spec, schema) = (Arc::clone(&spec), Arc::clone(&schema));
                    futures::stream::iter(indices)
                        .map(move |i| {
                            Arc::clone(&spec).read_part(
                                Arc::clone(&schema),
                                i,
                                Arc::clone(&context),
                            )
                        })
                        .flatten()
                        .boxed()
                }
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            })
            .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}

/// The input of a source whose partitions read planned parts (scan
/// segments, shard ranges): one in-memory partition per part, holding one
/// row with the part's index. Ballista's scheduler narrows a task to its
/// own partitions only for the leaves it knows (in-memory and file
/// sources); a custom leaf would be read whole by every task, so the
/// source reads the indices of its input instead.
pub(crate) fn part_source(
    parts: usize,
) -> datafusion::common::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    use std::sync::Arc;

    use arrow::array::{RecordBatch, UInt32Array};
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![Field::new(
        "part",
        DataType::UInt32,
        false,
    )]));
    let mut partitions = (0..parts)
        .map(|i| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(UInt32Array::from(vec![i as u32]))],
            )
            .map(|b| vec![b])
        })
        .collect::<Result<Vec<_>, _>>()?;
    if partitions.is_empty() {
        partitions.push(vec![]);
    }
    let exec: Arc<dyn datafusion::physical_plan::ExecutionPlan> =
        datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
            &partitions,
            schema,
            None,
        )?;
    Ok(exec)
}

/// The part indices of `input`'s `partition` (see [`part_source`]).
pub(crate) async fn part_indices(
    input: &std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    partition: usize,
    context: std::sync::Arc<datafusion::execution::TaskContext>,
) -> datafusion::common::Result<Vec<usize>> {
    use arrow::array::AsArray;
    use futures::TryStreamExt;
    let batches: Vec<arrow::array::RecordBatch> =
        input.execute(partition, context)?.try_collect().await?;
    let mut out = Vec::new();
    for b in &batches {
        let parts = b
            .column(0)
            .as_primitive_opt::<arrow::datatypes::UInt32Type>()
            .ok_or_else(|| {
                datafusion::common::DataFusionError::Internal(
                    "a part source's column is not UInt32".into(),
                )
            })?;
        out.extend(parts.values().iter().map(|v| *v as usize));
    }
    Ok(out)
}

/// The properties of a source that reads its input's parts: as many
/// partitions as the input, unordered, incremental, bounded.
pub(crate) fn part_properties(
    schema: &arrow::datatypes::SchemaRef,
    input: &std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
) -> std::sync::Arc<datafusion::physical_plan::PlanProperties> {
    use datafusion::physical_plan::ExecutionPlanProperties;
    use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
    std::sync::Arc::new(datafusion::physical_plan::PlanProperties::new(
        datafusion::physical_expr::EquivalenceProperties::new(std::sync::Arc::clone(schema)),
        datafusion::physical_plan::Partitioning::UnknownPartitioning(
            input.output_partitioning().partition_count(),
        ),
        EmissionType::Incremental,
        Boundedness::Bounded,
    ))
}
