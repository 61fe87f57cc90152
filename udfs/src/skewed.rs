//! `skewed_events(rows [, seed [, numPartitions]])`: the skewed event stream
//! of the field notes' small-files incident, for partitioned-write tests and
//! benchmarks. Columns: `seq` (0..rows), `id` (the partition key: 100..109
//! and 200..209 with the incident's shares, 100-102 about 83% of rows), `ts`
//! (milliseconds over one hour from 2024-01-01T00:00Z) and `payload` (500
//! bytes). Deterministic: the same `seed` gives the same rows, whatever the
//! partitioning. Partitions are described by the same memory slice source as
//! `range`, so Ballista gives each task only its slices.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Array, RecordBatch, RecordBatchOptions, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, Statistics, plan_err};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    StatisticsArgs,
};

use crate::range::{RangeSpec, expand_slices, literal_i64, slice_schema, slice_source};

/// Each id's share of rows in units of 0.001%, from the field notes:
/// 100-102 hold 28%, 27% and 27.8%; 103-109 hold 5, 4, 3, 2, 1.5, 1 and 0.5%;
/// 200-209 hold 0.1% down to 0.001%.
pub const SHARES: [(i64, u32); 20] = [
    (100, 28_000),
    (101, 27_000),
    (102, 27_800),
    (103, 5_000),
    (104, 4_000),
    (105, 3_000),
    (106, 2_000),
    (107, 1_500),
    (108, 1_000),
    (109, 500),
    (200, 100),
    (201, 50),
    (202, 20),
    (203, 10),
    (204, 8),
    (205, 5),
    (206, 3),
    (207, 2),
    (208, 1),
    (209, 1),
];
const SHARE_TOTAL: u64 = 100_000;
const PAYLOAD_BYTES: usize = 500;
/// 2024-01-01T00:00:00Z in milliseconds.
const BASE_MS: i64 = 1_704_067_200_000;

pub fn skewed_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        Field::new("id", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("payload", DataType::Utf8, false),
    ]))
}

/// splitmix64: a fixed, well-mixed function of (seed, row).
fn mix(seed: u64, row: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(row)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The id of row `row`.
pub fn id_of(seed: u64, row: u64) -> i64 {
    let mut u = mix(seed, row) % SHARE_TOTAL;
    for (id, share) in SHARES {
        let share = u64::from(share);
        if u < share {
            return id;
        }
        u -= share;
    }
    SHARES[SHARES.len() - 1].0
}

#[derive(Debug, Default)]
pub struct SkewedEventsFunction;

impl TableFunctionImpl for SkewedEventsFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let default_partitions = args.session().config().target_partitions();
        if exprs.is_empty() || exprs.len() > 3 {
            return plan_err!(
                "skewed_events takes 1 to 3 arguments (rows, seed, numPartitions), got {}",
                exprs.len()
            );
        }
        let rows = literal_i64(&exprs[0], "rows")?;
        let seed = match exprs.get(1) {
            Some(e) => literal_i64(e, "seed")?,
            None => 0,
        };
        let partitions = match exprs.get(2) {
            Some(e) => usize::try_from(literal_i64(e, "numPartitions")?).map_err(|_| {
                DataFusionError::Plan("skewed_events: numPartitions must be at least 1".into())
            })?,
            None => default_partitions,
        };
        if rows < 0 {
            return plan_err!("skewed_events: rows must not be negative, got {rows}");
        }
        Ok(Arc::new(SkewedTable {
            spec: RangeSpec::new(0, rows, 1, partitions)?,
            seed,
        }))
    }
}

/// The table a `skewed_events(...)` call resolves to.
#[derive(Debug, Clone)]
pub struct SkewedTable {
    pub spec: RangeSpec,
    pub seed: i64,
}

#[async_trait]
impl TableProvider for SkewedTable {
    fn schema(&self) -> SchemaRef {
        skewed_schema()
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
        let columns = projection.cloned().unwrap_or_else(|| (0..4).collect());
        Ok(Arc::new(SkewedExec::try_new(
            self.spec,
            self.seed,
            columns,
            slice_source(self.spec)?,
        )?))
    }
}

/// Expands each `(from, to)` slice row of its input into generated events.
#[derive(Debug)]
pub struct SkewedExec {
    spec: RangeSpec,
    seed: i64,
    columns: Vec<usize>,
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl SkewedExec {
    pub fn try_new(
        spec: RangeSpec,
        seed: i64,
        columns: Vec<usize>,
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Self> {
        if input.schema() != slice_schema() {
            return Err(DataFusionError::Internal(
                "SkewedExec input must have the slice schema".into(),
            ));
        }
        let schema = Arc::new(skewed_schema().project(&columns)?);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            spec,
            seed,
            columns,
            input,
            properties: Arc::new(properties),
        })
    }

    pub fn spec(&self) -> RangeSpec {
        self.spec
    }

    pub fn seed(&self) -> i64 {
        self.seed
    }

    pub fn columns(&self) -> &[usize] {
        &self.columns
    }
}

impl DisplayAs for SkewedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SkewedExec: rows={}, seed={}, partitions={}, columns={:?}",
            self.spec.end, self.seed, self.spec.partitions, self.columns
        )
    }
}

fn generate(
    seed: u64,
    lo: u64,
    hi: u64,
    columns: &[usize],
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let arrays: Vec<ArrayRef> = columns
        .iter()
        .map(|&c| -> ArrayRef {
            match c {
                0 => Arc::new((lo..hi).map(|r| r as i64).collect::<Int64Array>()),
                1 => Arc::new((lo..hi).map(|r| id_of(seed, r)).collect::<Int64Array>()),
                2 => Arc::new(TimestampMillisecondArray::from_iter_values(
                    (lo..hi).map(|r| BASE_MS + (mix(seed ^ 0x5EED, r) % 3_600_000) as i64),
                )),
                _ => Arc::new(
                    (lo..hi)
                        .map(|r| {
                            let tag = format!("{:016x}", mix(seed ^ 0xFACE, r));
                            tag.repeat(PAYLOAD_BYTES / tag.len() + 1)[..PAYLOAD_BYTES].to_string()
                        })
                        .map(Some)
                        .collect::<StringArray>(),
                ),
            }
        })
        .collect();
    let options = RecordBatchOptions::new().with_row_count(Some((hi - lo) as usize));
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        arrays,
        &options,
    )?)
}

impl ExecutionPlan for SkewedExec {
    fn name(&self) -> &str {
        "SkewedExec"
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
            Some(child) if children.is_empty() => Ok(Arc::new(Self::try_new(
                self.spec,
                self.seed,
                self.columns.clone(),
                child,
            )?)),
            _ => Err(DataFusionError::Internal(
                "SkewedExec takes exactly one child".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let slices = self.input.execute(partition, context)?;
        let seed = self.seed as u64;
        let columns = self.columns.clone();
        let schema = self.schema();
        let out_schema = Arc::clone(&schema);
        Ok(expand_slices(slices, schema, move |lo, hi| {
            generate(seed, lo, hi, &columns, &out_schema)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_field_notes() {
        let rows = 1_000_000u64;
        let mut counts = std::collections::HashMap::new();
        for r in 0..rows {
            *counts.entry(id_of(7, r)).or_insert(0u64) += 1;
        }
        let share = |id: i64| counts.get(&id).copied().unwrap_or(0) as f64 / rows as f64;
        assert!((share(100) - 0.28).abs() < 0.005);
        assert!((share(102) - 0.278).abs() < 0.005);
        assert!((share(109) - 0.005).abs() < 0.001);
        let big3 = share(100) + share(101) + share(102);
        assert!((big3 - 0.828).abs() < 0.005, "{big3}");
        assert_eq!(counts.len(), 20);
        // Deterministic in the seed, different across seeds.
        assert_eq!(id_of(7, 12345), id_of(7, 12345));
        assert!((0..100).any(|r| id_of(7, r) != id_of(8, r)));
    }
}
