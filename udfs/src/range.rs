//! `range(start, end, step, numPartitions)` as in Spark: a BIGINT column `id`
//! from `start` (inclusive) to `end` (exclusive) by `step`, split into exactly
//! `numPartitions` contiguous slices. DataFusion's own `range` yields one
//! partition, which would funnel a whole benchmark through one writer.

use std::fmt;
use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, RecordBatch, RecordBatchOptions, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, ScalarValue, Statistics, plan_err};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    StatisticsArgs,
};
use futures::TryStreamExt;

/// Rows per generated batch.
const BATCH_ROWS: i64 = 8192;

/// The arguments of one `range(...)` call, after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeSpec {
    pub start: i64,
    pub end: i64,
    pub step: i64,
    pub partitions: usize,
}

/// The most partitions `range` and `skewed_events` make: planning builds one
/// source per partition, so `range(0, 1, 1, 1e12)` must not reach it.
pub const MAX_PARTITIONS: usize = 10_000;

impl RangeSpec {
    /// Validates the arguments the way Spark does: a zero step is an error, a
    /// step pointing away from `end` yields no rows. Partitions are capped
    /// at [`MAX_PARTITIONS`].
    pub fn new(start: i64, end: i64, step: i64, partitions: usize) -> Result<Self> {
        if step == 0 {
            return plan_err!("range: step must not be 0");
        }
        if partitions == 0 {
            return plan_err!("range: numPartitions must be at least 1");
        }
        if partitions > MAX_PARTITIONS {
            return plan_err!("numPartitions must be at most {MAX_PARTITIONS}, got {partitions}");
        }
        Ok(Self {
            start,
            end,
            step,
            partitions,
        })
    }

    /// Number of values in the whole range.
    pub fn len(&self) -> u64 {
        let (span, step) = (
            i128::from(self.end) - i128::from(self.start),
            i128::from(self.step),
        );
        if span == 0 || (span > 0) != (step > 0) {
            return 0;
        }
        let n = (span.abs() + step.abs() - 1) / step.abs();
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value indices `[from, to)` of one slice; slices differ by at most one row.
    pub fn slice(&self, partition: usize) -> (u64, u64) {
        let n = u128::from(self.len());
        let p = self.partitions as u128;
        let i = partition as u128;
        let from = n * i / p;
        let to = n * (i + 1) / p;
        (from as u64, to as u64)
    }

    /// The exact row count of the whole range (`None`) or of one
    /// partition's slice, so the planner can size what depends on it (a
    /// skew-aware write's reduce tasks).
    pub fn statistics(&self, schema: &Schema, partition: Option<usize>) -> Statistics {
        let rows = match partition {
            None => self.len(),
            Some(p) if p < self.partitions => {
                let (from, to) = self.slice(p);
                to - from
            }
            Some(_) => return Statistics::new_unknown(schema),
        };
        let rows = usize::try_from(rows).map_or(Precision::Absent, Precision::Exact);
        Statistics::new_unknown(schema).with_num_rows(rows)
    }

    fn value(&self, index: u64) -> i64 {
        (i128::from(self.start) + i128::from(index) * i128::from(self.step)) as i64
    }
}

pub fn range_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]))
}

/// The table function; register it as `range` to shadow DataFusion's.
#[derive(Debug, Default)]
pub struct RangeFunction;

pub(crate) fn literal_i64(expr: &Expr, what: &str) -> Result<i64> {
    let value = match expr {
        Expr::Literal(v, _) => v.clone(),
        Expr::Negative(inner) => match inner.as_ref() {
            Expr::Literal(v, _) => v.arithmetic_negate()?,
            other => return plan_err!("range: {what} must be a number, got {other}"),
        },
        Expr::Cast(c) => return literal_i64(&c.expr, what),
        other => return plan_err!("range: {what} must be a number, got {other}"),
    };
    let as_f64 = |f: f64| -> Result<i64> {
        if f.fract() == 0.0 && f.abs() < 9.2e18 {
            Ok(f as i64)
        } else {
            plan_err!("range: {what} must be a whole number, got {f}")
        }
    };
    match value {
        ScalarValue::Int8(Some(v)) => Ok(v.into()),
        ScalarValue::Int16(Some(v)) => Ok(v.into()),
        ScalarValue::Int32(Some(v)) => Ok(v.into()),
        ScalarValue::Int64(Some(v)) => Ok(v),
        ScalarValue::UInt8(Some(v)) => Ok(v.into()),
        ScalarValue::UInt16(Some(v)) => Ok(v.into()),
        ScalarValue::UInt32(Some(v)) => Ok(v.into()),
        ScalarValue::UInt64(Some(v)) => i64::try_from(v)
            .map_err(|_| DataFusionError::Plan(format!("range: {what} {v} is out of range"))),
        ScalarValue::Float32(Some(v)) => as_f64(v.into()),
        ScalarValue::Float64(Some(v)) => as_f64(v),
        ScalarValue::Decimal128(Some(v), _, scale) => {
            let f = v as f64 / 10f64.powi(scale.into());
            as_f64(f)
        }
        other => plan_err!("range: {what} must be a whole number, got {other}"),
    }
}

impl TableFunctionImpl for RangeFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let default_partitions = args.session().config().target_partitions();
        let num = |i: usize, what: &str| literal_i64(&exprs[i], what);
        let spec = match exprs.len() {
            1 => RangeSpec::new(0, num(0, "end")?, 1, default_partitions)?,
            2 => RangeSpec::new(num(0, "start")?, num(1, "end")?, 1, default_partitions)?,
            3 => RangeSpec::new(
                num(0, "start")?,
                num(1, "end")?,
                num(2, "step")?,
                default_partitions,
            )?,
            4 => {
                let parts = num(3, "numPartitions")?;
                let parts = usize::try_from(parts).map_err(|_| {
                    DataFusionError::Plan(format!(
                        "range: numPartitions must be at least 1, got {parts}"
                    ))
                })?;
                RangeSpec::new(num(0, "start")?, num(1, "end")?, num(2, "step")?, parts)?
            }
            n => {
                return plan_err!(
                    "range takes 1 to 4 arguments (start, end, step, numPartitions), got {n}"
                );
            }
        };
        Ok(Arc::new(RangeTable { spec }))
    }
}

/// The table a `range(...)` call resolves to; serialisable by sluice's codec.
#[derive(Debug, Clone)]
pub struct RangeTable {
    pub spec: RangeSpec,
}

#[async_trait]
impl TableProvider for RangeTable {
    fn schema(&self) -> SchemaRef {
        range_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let with_id = projection.is_none_or(|p| p.contains(&0));
        Ok(Arc::new(RangeExec::try_new(
            self.spec,
            with_id,
            slice_source(self.spec)?,
        )?))
    }
}

/// Schema of the slice descriptors `RangeExec` reads: one row per partition.
pub fn slice_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("from", DataType::UInt64, false),
        Field::new("to", DataType::UInt64, false),
    ]))
}

/// One in-memory partition per range slice, each holding a single
/// `(from, to)` row. Ballista 55 runs several partitions in one task and
/// narrows a stage's leaves to the task's partitions; it knows how to narrow a
/// memory source but not a custom leaf, which every task would then run whole.
/// Describing the slices as a memory source keeps each id generated once.
pub fn slice_source(spec: RangeSpec) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = slice_schema();
    let partitions = (0..spec.partitions)
        .map(|p| {
            let (from, to) = spec.slice(p);
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(UInt64Array::from(vec![from])),
                    Arc::new(UInt64Array::from(vec![to])),
                ],
            )
            .map(|b| vec![b])
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let exec: Arc<dyn ExecutionPlan> = MemorySourceConfig::try_new_exec(&partitions, schema, None)?;
    Ok(exec)
}

/// Expands each `(from, to)` slice row of its input into the range's ids.
#[derive(Debug)]
pub struct RangeExec {
    spec: RangeSpec,
    with_id: bool,
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl RangeExec {
    /// `input` yields slice rows (see [`slice_source`]); its partitions are
    /// this operator's partitions.
    pub fn try_new(spec: RangeSpec, with_id: bool, input: Arc<dyn ExecutionPlan>) -> Result<Self> {
        if input.schema() != slice_schema() {
            return Err(DataFusionError::Internal(format!(
                "RangeExec input must have the slice schema, got {}",
                input.schema()
            )));
        }
        let schema = if with_id {
            range_schema()
        } else {
            Arc::new(Schema::empty())
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            spec,
            with_id,
            input,
            properties: Arc::new(properties),
        })
    }

    pub fn spec(&self) -> RangeSpec {
        self.spec
    }

    pub fn with_id(&self) -> bool {
        self.with_id
    }
}

impl DisplayAs for RangeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let s = &self.spec;
        write!(
            f,
            "RangeExec: start={}, end={}, step={}, partitions={}",
            s.start, s.end, s.step, s.partitions
        )
    }
}

impl ExecutionPlan for RangeExec {
    fn name(&self) -> &str {
        "RangeExec"
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

    // Splitting the slice source further would change the file count a
    // `range(..., numPartitions)` write promises.
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        Ok(Arc::new(
            self.spec.statistics(&self.schema(), args.partition()),
        ))
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match children.pop() {
            Some(child) if children.is_empty() => {
                Ok(Arc::new(Self::try_new(self.spec, self.with_id, child)?))
            }
            _ => Err(DataFusionError::Internal(
                "RangeExec takes exactly one child".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let slices = self.input.execute(partition, context)?;
        let spec = self.spec;
        let with_id = self.with_id;
        let schema = self.schema();
        let out_schema = Arc::clone(&schema);
        Ok(expand_slices(slices, schema, move |lo, hi| {
            if with_id {
                let ids: Int64Array = (lo..hi).map(|i| spec.value(i)).collect();
                RecordBatch::try_new(Arc::clone(&out_schema), vec![Arc::new(ids)])
            } else {
                RecordBatch::try_new_with_options(
                    Arc::clone(&out_schema),
                    vec![],
                    &RecordBatchOptions::new().with_row_count(Some((hi - lo) as usize)),
                )
            }
            .map_err(DataFusionError::from)
        }))
    }
}

/// Turns a stream of slice rows (see [`slice_source`]) into batches of at
/// most 8192 rows, `make(lo, hi)` building the batch of rows `lo..hi`.
pub fn expand_slices(
    slices: SendableRecordBatchStream,
    schema: SchemaRef,
    make: impl Fn(u64, u64) -> Result<RecordBatch> + Send + Sync + Clone + 'static,
) -> SendableRecordBatchStream {
    let batches = slices
        .map_ok(move |batch| {
            let froms = batch.column(0).as_primitive::<UInt64Type>().clone();
            let tos = batch.column(1).as_primitive::<UInt64Type>().clone();
            let chunks: Vec<(u64, u64)> = froms
                .values()
                .iter()
                .zip(tos.values().iter())
                .flat_map(|(&from, &to)| {
                    (from..to)
                        .step_by(BATCH_ROWS as usize)
                        .map(move |lo| (lo, (lo + BATCH_ROWS as u64).min(to)))
                })
                .collect();
            let make = make.clone();
            futures::stream::iter(chunks.into_iter().map(move |(lo, hi)| make(lo, hi)))
        })
        .try_flatten();
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

#[cfg(test)]
mod tests {

    #[test]
    fn partitions_are_capped_before_anything_is_planned() {
        let err = RangeSpec::new(0, 1, 1, 1_000_000_000_000)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("numPartitions must be at most 10000"), "{err}");
        assert!(RangeSpec::new(0, 1, 1, MAX_PARTITIONS).is_ok());
    }

    use super::*;

    #[test]
    fn slices_cover_the_range_exactly() -> Result<()> {
        let spec = RangeSpec::new(0, 1003, 1, 10)?;
        let mut next = 0;
        for p in 0..10 {
            let (from, to) = spec.slice(p);
            assert_eq!(from, next);
            assert!(to - from == 100 || to - from == 101);
            next = to;
        }
        assert_eq!(next, 1003);
        Ok(())
    }

    #[test]
    fn lengths_follow_spark() -> Result<()> {
        assert_eq!(RangeSpec::new(0, 10, 3, 1)?.len(), 4);
        assert_eq!(RangeSpec::new(10, 0, -3, 1)?.len(), 4);
        assert_eq!(RangeSpec::new(0, 10, -1, 1)?.len(), 0);
        assert!(RangeSpec::new(0, 10, 0, 1).is_err());
        assert!(RangeSpec::new(0, 10, 1, 0).is_err());
        Ok(())
    }
}

#[cfg(test)]
mod sql_tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, RecordBatch};
    use arrow::datatypes::Int64Type;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::RangeFunction;

    async fn query(sql: &str) -> Vec<RecordBatch> {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(4));
        ctx.register_udtf("range", Arc::new(RangeFunction));
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    }

    #[tokio::test]
    async fn every_row_once_across_partitions() {
        let batches = query(
            "SELECT count(*) AS c, sum(id) AS s, count(DISTINCT id) AS d FROM range(0, 1003, 1, 7)",
        )
        .await;
        let b = &batches[0];
        assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 1003);
        assert_eq!(
            b.column(1).as_primitive::<Int64Type>().value(0),
            1003 * 1002 / 2
        );
        assert_eq!(b.column(2).as_primitive::<Int64Type>().value(0), 1003);
    }
}
