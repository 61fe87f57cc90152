//! `SELECT ... FROM` a `STORED AS DYNAMODB` table: a parallel read paced on
//! the table's read capacity, for backfills and plain batch reads.
//!
//! The table is the sink's (`sink::dynamo::DynamoTable`); the plan layer
//! gives it a [`ScanTable`] to read through. Planning (on the scheduler,
//! where the physical plan is made) reads `DescribeTable`, splits the read
//! into `Segment`s of one parallel `Scan` (or one `Query` per partition-key
//! value when the statement filters on the partition key) and registers
//! the read with the coordinator, which then leases it read capacity like a
//! write: `read.percent` of the provisioned RCU (EMR's
//! `dynamodb.throughput.read.percent`, default 0.5), capped by
//! `read.max_units`, shared among the partitions reading now, charged from
//! each answer's `ConsumedCapacity`. Items become rows through the declared
//! columns, parsed as JSON like the stream sources' images ([`read`]).

pub mod read;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::ExecutionPlan;
use serde::{Deserialize, Serialize};

use super::kafka::Declared;
use crate::storage::dynamodb::{self as client, Capacity, CapacityShare};
pub use read::DynamoScanExec;

/// `read.percent`: share of the table's read capacity to use.
pub const PERCENT_OPTION: &str = "read.percent";
/// `read.max_units`: an absolute cap in RCU/s (the setting for on-demand tables).
pub const MAX_UNITS_OPTION: &str = "read.max_units";
/// `read.consistent`: strongly consistent reads (twice the RCU).
pub const CONSISTENT_OPTION: &str = "read.consistent";
/// `read.segments`: how many parallel segments a scan has.
pub const SEGMENTS_OPTION: &str = "read.segments";
/// `read.call_timeout_ms`: the timeout of every Scan or Query call.
pub const CALL_TIMEOUT_OPTION: &str = "read.call_timeout_ms";
/// `read.max_retry_secs`: how long one page may be retried in total.
pub const MAX_RETRY_OPTION: &str = "read.max_retry_secs";

const OPTIONS: [&str; 6] = [
    PERCENT_OPTION,
    MAX_UNITS_OPTION,
    CONSISTENT_OPTION,
    SEGMENTS_OPTION,
    CALL_TIMEOUT_OPTION,
    MAX_RETRY_OPTION,
];

/// DynamoDB's own limit on `TotalSegments` is 1,000,000; far fewer are
/// useful (each is a task), so sluice caps them here.
pub const MAX_SEGMENTS: u32 = 10_000;
/// Without `read.segments`: one segment per this many bytes of table, but
/// never fewer than the session's target partitions.
const BYTES_PER_SEGMENT: u64 = 256 << 20;
/// Partition-key values one statement may turn into Queries.
const MAX_QUERY_KEYS: usize = 1_000;

/// The read options of `CREATE EXTERNAL TABLE ... STORED AS DYNAMODB`
/// (the `write.*` ones are the sink's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanOptions {
    pub percent: f64,
    pub max_units: Option<f64>,
    pub consistent: bool,
    pub segments: Option<u32>,
    pub call_timeout_ms: u64,
    pub max_retry_secs: u64,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            // EMR's connector default (`dynamodb.throughput.read.percent`).
            percent: 0.5,
            max_units: None,
            consistent: false,
            segments: None,
            call_timeout_ms: 10_000,
            max_retry_secs: 300,
        }
    }
}

/// A read option that cannot be used; names the option and the table.
#[derive(thiserror::Error)]
pub enum ScanError {
    #[error("DynamoDB table {table}: option '{key}' = '{value}': {reason}")]
    BadOption {
        table: String,
        key: String,
        value: String,
        reason: &'static str,
    },
    #[error("DynamoDB table {table}: unknown read option '{key}' (known: {})", OPTIONS.join(", "))]
    UnknownOption { table: String, key: String },
}

crate::error::debug_as_display!(ScanError);

impl ScanOptions {
    /// Whether `key` (with or without DataFusion's `format.` prefix) is a
    /// read option, which the sink leaves to this module.
    pub fn is_read_option(key: &str) -> bool {
        key.strip_prefix("format.")
            .unwrap_or(key)
            .starts_with("read.")
    }

    /// The read options among a table's options; `table` names it in errors.
    pub fn parse(table: &str, raw: &HashMap<String, String>) -> Result<Self, ScanError> {
        let mut o = Self::default();
        for (key, value) in raw {
            if !Self::is_read_option(key) {
                continue;
            }
            let key = key.strip_prefix("format.").unwrap_or(key);
            let bad = |reason: &'static str| ScanError::BadOption {
                table: table.to_string(),
                key: key.to_string(),
                value: value.clone(),
                reason,
            };
            let whole = |v: &str| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| bad("not a whole number"))
            };
            match key {
                PERCENT_OPTION => {
                    let mut v: f64 = value.trim().parse().map_err(|_| bad("not a number"))?;
                    // Accept both 0.8 and 80 (%), as the write option does.
                    if v > 1.0 {
                        v /= 100.0;
                    }
                    if !(v > 0.0 && v <= 1.0) {
                        return Err(bad("must be in (0, 1] or (0, 100]"));
                    }
                    o.percent = v;
                }
                MAX_UNITS_OPTION => {
                    let v: f64 = value.trim().parse().map_err(|_| bad("not a number"))?;
                    if !(v.is_finite() && v >= 1.0) {
                        return Err(bad("must be at least 1"));
                    }
                    o.max_units = Some(v);
                }
                CONSISTENT_OPTION => {
                    o.consistent = match value.trim().to_ascii_lowercase().as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad("must be true or false")),
                    }
                }
                SEGMENTS_OPTION => {
                    let n = whole(value)?;
                    if n == 0 || n > u64::from(MAX_SEGMENTS) {
                        return Err(bad("must be from 1 to 10000"));
                    }
                    o.segments = Some(n as u32);
                }
                CALL_TIMEOUT_OPTION => {
                    o.call_timeout_ms = whole(value)?;
                    if o.call_timeout_ms == 0 {
                        return Err(bad("must be at least 1"));
                    }
                }
                MAX_RETRY_OPTION => {
                    o.max_retry_secs = whole(value)?;
                    if o.max_retry_secs == 0 {
                        return Err(bad("must be at least 1"));
                    }
                }
                other => {
                    return Err(ScanError::UnknownOption {
                        table: table.to_string(),
                        key: other.to_string(),
                    });
                }
            }
        }
        Ok(o)
    }

    pub fn share(&self) -> CapacityShare {
        CapacityShare {
            percent: self.percent,
            max_units: self.max_units,
        }
    }
}

/// What one partition of a read reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Part {
    /// `Scan` with `Segment` = `segment` of `TotalSegments` = `total`.
    Segment { segment: u32, total: u32 },
    /// `Query` on one partition-key value: `(type, text)` with type `S` or `N`.
    Query { value: (String, String) },
}

/// A planned read, as it travels to the executors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanSpec {
    pub table: String,
    pub options: ScanOptions,
    /// The columns read (the statement's projection of the declared ones).
    pub columns: Vec<Declared>,
    /// Partition key, then sort key: (name, `S`|`N`|`B`).
    pub keys: Vec<(String, String)>,
    /// The id the coordinator leases read capacity to.
    pub scan_id: String,
    pub parts: Vec<Part>,
    /// The planner's budget (RCU/s), until the coordinator answers.
    pub budget_hint: f64,
    /// Average item size from `DescribeTable`, for sizing the first pages.
    pub item_bytes: f64,
    /// Every attribute of every item, not `columns` (a change stream's
    /// snapshot, whose rows are whole items).
    #[serde(default)]
    pub whole_items: bool,
}

impl ScanSpec {
    pub fn schema(&self) -> Result<SchemaRef> {
        Declared::schema(&self.columns)
    }

    /// The RCU one page of `items` items is expected to cost.
    pub fn rcu_per_item(&self) -> f64 {
        let units = (self.item_bytes / 4096.0).max(1.0 / 64.0);
        if self.options.consistent {
            units
        } else {
            units / 2.0
        }
    }
}

/// A `STORED AS DYNAMODB` table as it is read: the table, its read options
/// and its declared columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanTableSpec {
    pub table: String,
    pub options: ScanOptions,
    pub declared: Vec<Declared>,
}

/// The read side of a `STORED AS DYNAMODB` table.
#[derive(Debug)]
pub struct ScanTable {
    pub spec: ScanTableSpec,
    schema: SchemaRef,
}

impl ScanTable {
    pub fn try_new(spec: ScanTableSpec) -> Result<Self> {
        let schema = Declared::schema(&spec.declared)?;
        Ok(Self { spec, schema })
    }

    /// The partition-key values `filters` pin, when one of them is
    /// `pk = literal` or `pk IN (literals)` (`None`: scan everything).
    fn key_values(&self, pk: &str, filters: &[Expr]) -> Option<Vec<ScalarValue>> {
        filters.iter().find_map(|f| key_filter(pk, f))
    }
}

/// `pk = literal`, `pk IN (literals)` or an `OR` of them (DataFusion
/// rewrites a short `IN` list that way): the values.
fn key_filter(pk: &str, filter: &Expr) -> Option<Vec<ScalarValue>> {
    let is_pk = |e: &Expr| matches!(e, Expr::Column(c) if c.name == pk);
    let literal = |e: &Expr| match e {
        Expr::Literal(v, _) if !v.is_null() => Some(v.clone()),
        _ => None,
    };
    match filter {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let mut values = key_filter(pk, left)?;
            values.extend(key_filter(pk, right)?);
            (values.len() <= MAX_QUERY_KEYS).then_some(values)
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => {
            if is_pk(left) {
                literal(right).map(|v| vec![v])
            } else if is_pk(right) {
                literal(left).map(|v| vec![v])
            } else {
                None
            }
        }
        Expr::InList(list) if !list.negated && is_pk(&list.expr) => {
            let values: Option<Vec<ScalarValue>> = list.list.iter().map(literal).collect();
            values.filter(|v| !v.is_empty() && v.len() <= MAX_QUERY_KEYS)
        }
        _ => None,
    }
}

/// A literal as a key value of DynamoDB type `ty`, when it can be one.
fn key_value(ty: &str, v: &ScalarValue) -> Option<(String, String)> {
    let text = match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s.clone(),
        ScalarValue::Int8(_)
        | ScalarValue::Int16(_)
        | ScalarValue::Int32(_)
        | ScalarValue::Int64(_)
        | ScalarValue::UInt8(_)
        | ScalarValue::UInt16(_)
        | ScalarValue::UInt32(_)
        | ScalarValue::UInt64(_) => v.to_string(),
        _ => return None,
    };
    match ty {
        "S" => Some(("S".into(), text)),
        "N" if text.parse::<i128>().is_ok() => Some(("N".into(), text)),
        _ => None,
    }
}

#[async_trait]
impl TableProvider for ScanTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // The key schema is not known until planning reads it: every
        // equality on any column may become a Query; DataFusion still
        // applies the filter (Inexact), so a filter on another column
        // costs nothing but is never trusted.
        Ok(filters
            .iter()
            .map(|f| {
                let columns = f.column_refs();
                let pinned = match columns.iter().next() {
                    Some(c) if columns.len() == 1 => key_filter(&c.name, f).is_some(),
                    _ => false,
                };
                if pinned {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let table = &self.spec.table;
        let sdk = client::client().await;
        let shape = client::describe(&sdk, table)
            .await
            .map_err(|e| DataFusionError::Plan(format!("reading DynamoDB table {table}: {e}")))?;
        let columns: Vec<Declared> = match projection {
            Some(p) => p
                .iter()
                .filter_map(|i| self.spec.declared.get(*i).cloned())
                .collect(),
            None => self.spec.declared.clone(),
        };
        let pk = shape.keys.first().cloned().unwrap_or_default();
        let queries = self.key_values(&pk.0, filters).and_then(|values| {
            values
                .iter()
                .map(|v| key_value(&pk.1, v))
                .collect::<Option<Vec<_>>>()
        });
        let parts: Vec<Part> = match queries {
            Some(mut values) => {
                values.sort();
                values.dedup();
                values
                    .into_iter()
                    .map(|value| Part::Query { value })
                    .collect()
            }
            None => {
                let by_size = shape.size_bytes.div_ceil(BYTES_PER_SEGMENT);
                let total = self.spec.options.segments.unwrap_or_else(|| {
                    (state.config().target_partitions() as u64)
                        .max(by_size)
                        .clamp(1, u64::from(MAX_SEGMENTS)) as u32
                });
                (0..total)
                    .map(|segment| Part::Segment { segment, total })
                    .collect()
            }
        };
        let spec = registered(
            state,
            ScanSpec {
                table: table.clone(),
                options: self.spec.options.clone(),
                columns,
                keys: shape.keys.clone(),
                scan_id: String::new(),
                parts,
                budget_hint: shape.budget_of(Capacity::Read, self.spec.options.share()),
                item_bytes: item_bytes(&shape),
                whole_items: false,
            },
        );
        Ok(Arc::new(DynamoScanExec::try_new(spec)?))
    }
}

fn item_bytes(shape: &client::TableShape) -> f64 {
    match shape.item_count {
        0 => 1024.0,
        n => shape.size_bytes as f64 / n as f64,
    }
}

/// `spec` with a fresh id, registered with the coordinator of this process
/// (the scheduler's, where reads are planned), which then leases it read
/// capacity (and to no read it did not plan).
fn registered(state: &dyn Session, mut spec: ScanSpec) -> ScanSpec {
    spec.scan_id = uuid::Uuid::new_v4().simple().to_string();
    if let Some(local) = &crate::coordinator::CoordinatorHandle::of(state.config()).local {
        local.planned.register(&spec.scan_id);
    }
    tracing::info!(table = %spec.table, parts = spec.parts.len(), budget_rcu = spec.budget_hint, "DynamoDB read planned");
    spec
}

/// A parallel scan of every item of `table` in `segments` segments at
/// `options` (the stream table's `read.*`): a change stream's snapshot.
pub async fn plan_snapshot(
    state: &dyn Session,
    table: &str,
    segments: u32,
    options: ScanOptions,
) -> Result<ScanSpec> {
    let sdk = client::client().await;
    let shape = client::describe(&sdk, table)
        .await
        .map_err(|e| DataFusionError::Plan(format!("snapshot of DynamoDB table {table}: {e}")))?;
    // Strongly consistent: every stream record the snapshot skips must be
    // in what the scan reads.
    let options = ScanOptions {
        consistent: true,
        ..options
    };
    Ok(registered(
        state,
        ScanSpec {
            table: table.to_string(),
            budget_hint: shape.budget_of(Capacity::Read, options.share()),
            options,
            columns: vec![],
            keys: shape.keys.clone(),
            scan_id: String::new(),
            parts: (0..segments.max(1))
                .map(|segment| Part::Segment {
                    segment,
                    total: segments.max(1),
                })
                .collect(),
            item_bytes: item_bytes(&shape),
            whole_items: true,
        },
    ))
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    #[test]
    fn read_options_parse_and_bad_ones_are_named() {
        let raw: HashMap<String, String> = [
            ("format.read.percent", "80"),
            ("read.segments", "16"),
            ("read.consistent", "TRUE"),
            ("write.percent", "0.2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let o = ScanOptions::parse("t", &raw).unwrap_or_default();
        assert_eq!(o.percent, 0.8);
        assert_eq!(o.segments, Some(16));
        assert!(o.consistent);
        for (key, value, want) in [
            (
                "read.percent",
                "0",
                "DynamoDB table t: option 'read.percent' = '0': must be in (0, 1] or (0, 100]",
            ),
            (
                "read.segments",
                "0",
                "DynamoDB table t: option 'read.segments' = '0': must be from 1 to 10000",
            ),
            (
                "read.speed",
                "1",
                "DynamoDB table t: unknown read option 'read.speed'",
            ),
            (
                "read.max_retry_secs",
                "0",
                "DynamoDB table t: option 'read.max_retry_secs' = '0': must be at least 1",
            ),
        ] {
            let raw = HashMap::from([(key.to_string(), value.to_string())]);
            let err = ScanOptions::parse("t", &raw)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.starts_with(want), "{err}");
        }
    }

    #[test]
    fn partition_key_equalities_become_queries() {
        let eq = col("pk").eq(lit("a"));
        assert_eq!(key_filter("pk", &eq), Some(vec![ScalarValue::from("a")]));
        assert_eq!(key_filter("sk", &eq), None);
        let flipped = lit(7i64).eq(col("pk"));
        assert_eq!(
            key_filter("pk", &flipped),
            Some(vec![ScalarValue::from(7i64)])
        );
        let list = col("pk").in_list(vec![lit("a"), lit("b")], false);
        assert_eq!(key_filter("pk", &list).map(|v| v.len()), Some(2));
        let either = col("pk").eq(lit("a")).or(col("pk").eq(lit("b")));
        assert_eq!(key_filter("pk", &either).map(|v| v.len()), Some(2));
        let mixed = col("pk").eq(lit("a")).or(col("sk").eq(lit(1)));
        assert_eq!(key_filter("pk", &mixed), None);
        let negated = col("pk").in_list(vec![lit("a")], true);
        assert_eq!(key_filter("pk", &negated), None);
        assert_eq!(key_filter("pk", &col("pk").gt(lit("a"))), None);
        assert_eq!(
            key_value("N", &ScalarValue::from(7i64)),
            Some(("N".into(), "7".into()))
        );
        assert_eq!(
            key_value("S", &ScalarValue::from("x")),
            Some(("S".into(), "x".into()))
        );
        // A string cannot pin a number key: the statement scans.
        assert_eq!(key_value("N", &ScalarValue::from("x")), None);
        assert_eq!(key_value("B", &ScalarValue::from("x")), None);
    }
}
