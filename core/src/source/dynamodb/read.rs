//! Reading a planned DynamoDB read: one partition per [`Part`], each
//! paging through its `Scan` segment or `Query` under a read lease
//! (`coordinator::limiter`), one record batch per page.
//!
//! Pages are sized to about half a second of the partition's share, from
//! the RCU per item the last page cost (the table's average item size at
//! first), so no single call takes a large bite of the table's capacity;
//! when a partition's work per page (its call, and the rest of the plan
//! taking the page) takes longer than that, the page covers one and a half
//! times that work instead (up to `MAX_PAGE_SECONDS`), or the share could
//! never be used: a segment is read one call at a time. A page is paid for after its call,
//! from what DynamoDB says it consumed.
//! Throttles and network errors are retried with backoff within
//! `read.max_retry_secs`; anything else fails the read naming the table,
//! the part and DynamoDB's message.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity, Select};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use futures::StreamExt;

use super::{Part, ScanSpec};
use crate::coordinator::CoordinatorHandle;
use crate::coordinator::leases::LeaseRequest;
use crate::coordinator::limiter::{Limiter, unit_random};
use crate::storage::dynamodb::{self as client, Capacity, Failure};

/// The most items one call asks for (DynamoDB answers at most 1 MB).
const MAX_PAGE_ITEMS: i32 = 50_000;
/// A page is sized to about this much of the partition's share...
const PAGE_SECONDS: f64 = 0.5;
/// ...or to this many times the partition's work per page (so the share,
/// not the work, sets the pace when the work varies)...
const WORK_PAGES: f64 = 1.5;
/// ...up to this long.
const MAX_PAGE_SECONDS: f64 = 2.0;

/// Why a read failed; names the table and the part.
#[derive(thiserror::Error)]
pub enum ReadError {
    #[error("reading DynamoDB table {table} ({part}): {message}")]
    Call {
        table: String,
        part: String,
        message: String,
    },
    #[error(
        "reading DynamoDB table {table} ({part}): still failing after {secs} s of retries: {last}"
    )]
    RetriesExhausted {
        table: String,
        part: String,
        secs: u64,
        last: String,
    },
    #[error("reading DynamoDB table {table} ({part}): item {key}: {reason}")]
    BadItem {
        table: String,
        part: String,
        key: String,
        reason: String,
    },
    #[error("reading DynamoDB table {table} ({part}): stopped: {reason}")]
    Stopped {
        table: String,
        part: String,
        reason: String,
    },
}

crate::error::debug_as_display!(ReadError);

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Segment { segment, total } => write!(f, "scan segment {segment} of {total}"),
            Part::Query { value } => write!(f, "query on {}", value.1),
        }
    }
}

/// Reads the [`Part`]s its input names, each page by page.
pub type DynamoScanExec = crate::exec::PartScanExec<ScanSpec>;

impl crate::exec::PartRead for ScanSpec {
    const NAME: &'static str = "DynamoScanExec";

    fn schema(&self) -> Result<SchemaRef> {
        ScanSpec::schema(self)
    }

    fn parts(&self) -> usize {
        self.parts.len()
    }

    fn describe(&self) -> String {
        let queries = self
            .parts
            .iter()
            .filter(|p| matches!(p, Part::Query { .. }))
            .count();
        let how = if queries > 0 {
            format!("{queries} queries")
        } else {
            format!("{} scan segments", self.parts.len())
        };
        format!(
            "table={}, {how}, read budget {:.0} RCU/s",
            self.table, self.budget_hint
        )
    }

    fn read_part(
        self: Arc<Self>,
        schema: SchemaRef,
        i: usize,
        context: Arc<TaskContext>,
    ) -> futures::stream::BoxStream<'static, Result<RecordBatch>> {
        let Some(part) = self.parts.get(i).cloned() else {
            let e = DataFusionError::Internal(format!(
                "DynamoScanExec: part {i} of {}",
                self.parts.len()
            ));
            return futures::stream::once(async move { Err(e) }).boxed();
        };
        let coordinator = CoordinatorHandle::of(context.session_config());
        let reader = Reader::new(self.as_ref().clone(), part, i, coordinator);
        futures::stream::try_unfold(reader, move |mut r| {
            let schema = Arc::clone(&schema);
            async move {
                match r.next_page().await? {
                    Some(page) => Ok(Some((r.to_batch(&schema, &page)?, r))),
                    None => Ok(None),
                }
            }
        })
        .boxed()
    }
}

/// Reads one part page by page under its own read lease.
pub(crate) struct Reader {
    spec: ScanSpec,
    part: Part,
    partition: usize,
    parts: usize,
    coordinator: Arc<CoordinatorHandle>,
    state: Option<Running>,
}

/// A partition's reading state, from its first page on.
struct Running {
    client: Client,
    limiter: Arc<Limiter>,
    start_key: Option<HashMap<String, AttributeValue>>,
    done: bool,
    rcu_per_item: f64,
    /// When the last page was asked for, and how long it waited for its
    /// share: the partition's work in a round is the rest.
    last_round: Option<(Instant, Duration)>,
    started: Instant,
    items: u64,
    consumed: f64,
    throttles: u64,
    calls: u64,
    waited: Duration,
}

/// One answer of a Scan or a Query.
pub(crate) struct Page {
    pub(crate) items: Vec<HashMap<String, AttributeValue>>,
    pub(crate) count: usize,
    next: Option<HashMap<String, AttributeValue>>,
    consumed: Option<f64>,
}

impl Reader {
    /// Part `part` (partition `partition` of the read) of `spec`.
    pub(crate) fn new(
        spec: ScanSpec,
        part: Part,
        partition: usize,
        coordinator: Arc<CoordinatorHandle>,
    ) -> Self {
        let parts = spec.parts.len();
        Self {
            spec,
            part,
            partition,
            parts,
            coordinator,
            state: None,
        }
    }

    fn error(&self, make: impl FnOnce(String, String) -> ReadError) -> DataFusionError {
        DataFusionError::External(Box::new(make(
            self.spec.table.clone(),
            self.part.to_string(),
        )))
    }

    async fn start(&self) -> Running {
        let writer = format!(
            "{}-{}-{}",
            self.spec.scan_id,
            self.partition,
            (unit_random() * 1e9) as u64
        );
        // Until the coordinator answers (or without one): an even share of
        // the planner's budget, which can only under-use the table.
        let fallback = self.spec.budget_hint / self.parts.max(1) as f64;
        let request = LeaseRequest {
            table: self.spec.table.clone(),
            writer,
            write_id: self.spec.scan_id.clone(),
            share: self.spec.options.share(),
            budget_hint: self.spec.budget_hint,
            consumed_wcu: 0.0,
            throttles: 0,
            capacity: Capacity::Read,
        };
        let limiter = Limiter::start(
            request,
            fallback,
            self.coordinator.url.clone(),
            self.coordinator.http.clone(),
        )
        .await;
        Running {
            client: client::client().await,
            limiter,
            start_key: None,
            done: false,
            rcu_per_item: self.spec.rcu_per_item(),
            last_round: None,
            started: Instant::now(),
            items: 0,
            consumed: 0.0,
            throttles: 0,
            calls: 0,
            waited: Duration::ZERO,
        }
    }

    /// The next page of items; `None` once the part is read.
    pub(crate) async fn next_page(&mut self) -> Result<Option<Page>> {
        if self.state.is_none() {
            self.state = Some(self.start().await);
        }
        let Some(state) = self.state.as_mut() else {
            return Ok(None);
        };
        if state.done {
            return Ok(None);
        }
        let span =
            tracing::info_span!("dynamodb.read_page", table = %self.spec.table, part = %self.part);
        let page = tracing::Instrument::instrument(self.fetch(), span).await;
        let mut page = match page {
            Ok(p) => p,
            Err(e) => {
                if let Some(s) = &self.state {
                    s.limiter.release().await;
                }
                return Err(e);
            }
        };
        let Some(state) = self.state.as_mut() else {
            return Ok(None);
        };
        state.items += page.count as u64;
        state.start_key = page.next.take();
        if state.start_key.is_none() {
            state.done = true;
            // The last page is paid for too before the share goes back:
            // the next part's lease starts without this debt.
            if let Err(reason) = state.limiter.acquire(0.0).await {
                tracing::debug!(%reason, "the read's lease ended before its last page was paid for");
            }
            state.limiter.release().await;
            let l = [("table", self.spec.table.clone())];
            metrics::counter!("sluice_dynamodb_read_items_total", &l).increment(state.items);
            metrics::counter!("sluice_dynamodb_consumed_rcu_total", &l)
                .increment(state.consumed.round() as u64);
            metrics::counter!("sluice_dynamodb_read_throttles_total", &l)
                .increment(state.throttles);
            metrics::counter!("sluice_dynamodb_read_calls_total", &l).increment(state.calls);
            tracing::info!(
                table = %self.spec.table,
                part = %self.part,
                items = state.items,
                consumed_rcu = state.consumed,
                throttles = state.throttles,
                waited_ms = state.waited.as_millis() as u64,
                elapsed_ms = state.started.elapsed().as_millis() as u64,
                "DynamoDB read part done"
            );
        }
        Ok(Some(page))
    }

    /// One page, retried through throttles and network errors.
    async fn fetch(&mut self) -> Result<Page> {
        let opts = self.spec.options.clone();
        let deadline = Instant::now() + Duration::from_secs(opts.max_retry_secs);
        let timeout = Duration::from_millis(opts.call_timeout_ms);
        let mut attempt = 0u32;
        let mut last = String::new();
        loop {
            let Some(state) = self.state.as_mut() else {
                return Err(DataFusionError::Internal("read not started".into()));
            };
            if Instant::now() > deadline {
                let secs = opts.max_retry_secs;
                return Err(self.error(|table, part| ReadError::RetriesExhausted {
                    table,
                    part,
                    secs,
                    last,
                }));
            }
            // A page is paid for once DynamoDB says what it cost: the
            // next call waits off the debt, less what the share refilled
            // while the partition worked (the bucket keeps little, a fifth
            // of a second of share, so paying first would lose the rest).
            let round_started = Instant::now();
            let waited = match state.limiter.acquire(0.0).await {
                Ok(waited) => waited,
                Err(reason) => {
                    return Err(self.error(|table, part| ReadError::Stopped {
                        table,
                        part,
                        reason,
                    }));
                }
            };
            state.waited += waited;
            let work = state.last_round.map_or(0.0, |(t, w)| {
                round_started
                    .duration_since(t)
                    .saturating_sub(w)
                    .as_secs_f64()
            });
            state.last_round = Some((round_started, waited));
            let seconds = (work * WORK_PAGES).clamp(PAGE_SECONDS, MAX_PAGE_SECONDS);
            let share = state.limiter.rate();
            let limit = ((share * seconds / state.rcu_per_item) as i64)
                .clamp(1, i64::from(MAX_PAGE_ITEMS)) as i32;
            // Never less than one read unit: the smallest a call costs.
            let estimated = (f64::from(limit) * state.rcu_per_item).max(0.5);
            state.calls += 1;
            let call = call(
                &state.client,
                &self.spec,
                &self.part,
                limit,
                state.start_key.clone(),
            );
            let answer = match tokio::time::timeout(timeout, call).await {
                Ok(a) => a,
                Err(_) => Err((
                    Failure::Transient,
                    format!("no answer within {} ms", timeout.as_millis()),
                )),
            };
            let Some(state) = self.state.as_mut() else {
                return Err(DataFusionError::Internal("read not started".into()));
            };
            match answer {
                Ok(page) => {
                    let consumed = page.consumed.unwrap_or(estimated);
                    state.limiter.record(0.0, consumed, false);
                    state.consumed += consumed;
                    if page.count > 0 {
                        state.rcu_per_item = (consumed / page.count as f64).max(1.0 / 1024.0);
                    }
                    return Ok(page);
                }
                Err((failure, message)) => {
                    let throttled = failure == Failure::Throttled;
                    state.limiter.record(0.0, 0.0, throttled);
                    // After a backoff, pages start again at half a second.
                    state.last_round = None;
                    state.throttles += u64::from(throttled);
                    if matches!(failure, Failure::Fatal | Failure::Invalid) {
                        return Err(self.error(|table, part| ReadError::Call {
                            table,
                            part,
                            message,
                        }));
                    }
                    last = message;
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// A page's items as rows of the declared columns `schema`.
    fn to_batch(&self, schema: &SchemaRef, page: &Page) -> Result<RecordBatch> {
        if schema.fields().is_empty() {
            // `SELECT count(*)`: rows without columns.
            let options = RecordBatchOptions::new().with_row_count(Some(page.count));
            return Ok(RecordBatch::try_new_with_options(
                Arc::clone(schema),
                vec![],
                &options,
            )?);
        }
        let texts: Vec<String> = page
            .items
            .iter()
            .map(|i| item_json(i, Binary::Hex))
            .collect();
        let values: Vec<Option<&[u8]>> = texts.iter().map(|t| Some(t.as_bytes())).collect();
        let parsed = crate::source::kafka::parse_values(schema, &values)
            .map_err(|e| DataFusionError::External(e.into()))?;
        if let Some((at, reason)) = parsed
            .errors
            .iter()
            .enumerate()
            .find_map(|(i, e)| e.as_ref().map(|e| (i, e.clone())))
        {
            let key = page
                .items
                .get(at)
                .map(|item| key_text(item, &self.spec.keys))
                .unwrap_or_default();
            return Err(self.error(|table, part| ReadError::BadItem {
                table,
                part,
                key,
                reason: format!("{reason} (declared columns: {})", self.declared_text()),
            }));
        }
        Ok(RecordBatch::try_new(
            Arc::clone(schema),
            parsed.decoded.columns().to_vec(),
        )?)
    }

    fn declared_text(&self) -> String {
        self.spec
            .columns
            .iter()
            .map(|c| format!("{} {}", c.name, c.data_type))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One Scan or Query call; `Err` carries how to treat the failure and
/// DynamoDB's message.
async fn call(
    client: &Client,
    spec: &ScanSpec,
    part: &Part,
    limit: i32,
    start: Option<HashMap<String, AttributeValue>>,
) -> Result<Page, (Failure, String)> {
    // Only the projected attributes travel (the RCU are the same).
    let mut names: HashMap<String, String> = HashMap::new();
    let projection = spec
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            names.insert(format!("#c{i}"), c.name.clone());
            format!("#c{i}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let count_only = spec.columns.is_empty() && !spec.whole_items;
    match part {
        Part::Segment { segment, total } => {
            let mut req = client
                .scan()
                .table_name(&spec.table)
                .segment(*segment as i32)
                .total_segments(*total as i32)
                .limit(limit)
                .consistent_read(spec.options.consistent)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .set_exclusive_start_key(start);
            if count_only {
                req = req.select(Select::Count);
            } else if !spec.whole_items {
                req = req
                    .projection_expression(projection)
                    .set_expression_attribute_names(Some(names));
            }
            let out = req.send().await.map_err(|e| sdk_failure(&e))?;
            Ok(Page {
                count: usize::try_from(out.count()).unwrap_or(0),
                consumed: out.consumed_capacity().and_then(|c| c.capacity_units()),
                next: out.last_evaluated_key().cloned(),
                items: out.items.unwrap_or_default(),
            })
        }
        Part::Query { value } => {
            let pk = spec.keys.first().map(|k| k.0.clone()).unwrap_or_default();
            let key = match value.0.as_str() {
                "N" => AttributeValue::N(value.1.clone()),
                _ => AttributeValue::S(value.1.clone()),
            };
            names.insert("#pk".into(), pk);
            let mut req = client
                .query()
                .table_name(&spec.table)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_values(":pk", key)
                .limit(limit)
                .consistent_read(spec.options.consistent)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .set_exclusive_start_key(start);
            if count_only {
                req = req.select(Select::Count);
            } else if !spec.whole_items {
                req = req.projection_expression(projection);
            }
            let out = req
                .set_expression_attribute_names(Some(names))
                .send()
                .await
                .map_err(|e| sdk_failure(&e))?;
            Ok(Page {
                count: usize::try_from(out.count()).unwrap_or(0),
                consumed: out.consumed_capacity().and_then(|c| c.capacity_units()),
                next: out.last_evaluated_key().cloned(),
                items: out.items.unwrap_or_default(),
            })
        }
    }
}

fn sdk_failure<E, R>(e: &SdkError<E, R>) -> (Failure, String)
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    (client::classify(e), client::describe_error(e))
}

/// Exponential backoff with full jitter, capped at 5 s.
fn backoff(attempt: u32) -> Duration {
    let cap_ms = (50u64 << attempt.min(7)).min(5_000) as f64;
    Duration::from_millis((unit_random() * cap_ms).max(cap_ms / 4.0) as u64)
}

/// The item's key attributes, as `pk=a, sk=7`.
fn key_text(item: &HashMap<String, AttributeValue>, keys: &[(String, String)]) -> String {
    keys.iter()
        .map(|(name, _)| {
            let mut v = String::new();
            if let Some(a) = item.get(name) {
                write_value(a, &mut v, Binary::Hex);
            }
            format!("{name}={v}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How binary values are written in an item's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// Hex: what Arrow's JSON reader reads into `BYTEA` (declared columns).
    Hex,
    /// Base64: as the stream sources' images show binary.
    Base64,
}

/// An item as plain JSON: numbers keep their digits, binary as `binary`
/// says, sets are arrays, maps are objects.
pub fn item_json(item: &HashMap<String, AttributeValue>, binary: Binary) -> String {
    let mut out = String::with_capacity(64 * item.len());
    write_map(item, &mut out, binary);
    out
}

fn write_map(map: &HashMap<String, AttributeValue>, out: &mut String, bin: Binary) {
    // Sorted, so one item always reads as the same text.
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    out.push('{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(k, out);
        out.push(':');
        if let Some(v) = map.get(k) {
            write_value(v, out, bin);
        }
    }
    out.push('}');
}

fn write_string(s: &str, out: &mut String) {
    out.push_str(&serde_json::Value::String(s.to_string()).to_string());
}

/// `bytes` as a JSON string, hex or base64.
pub(crate) fn write_bytes(bytes: &[u8], out: &mut String, bin: Binary) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    match bin {
        Binary::Hex => {
            for b in bytes {
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 15)] as char);
            }
        }
        Binary::Base64 => out.push_str(&aws_smithy_types::base64::encode(bytes)),
    }
    out.push('"');
}

fn write_list<T>(items: &[T], out: &mut String, mut each: impl FnMut(&T, &mut String)) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        each(item, out);
    }
    out.push(']');
}

fn write_value(v: &AttributeValue, out: &mut String, bin: Binary) {
    let number = |n: &String, o: &mut String| o.push_str(&crate::source::shards::number_json(n));
    match v {
        AttributeValue::S(s) => write_string(s, out),
        AttributeValue::N(n) => number(n, out),
        AttributeValue::B(b) => write_bytes(b.as_ref(), out, bin),
        AttributeValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        AttributeValue::M(m) => write_map(m, out, bin),
        AttributeValue::L(l) => write_list(l, out, |v, o| write_value(v, o, bin)),
        AttributeValue::Ss(s) => write_list(s, out, |s, o| write_string(s, o)),
        AttributeValue::Ns(n) => write_list(n, out, number),
        AttributeValue::Bs(b) => write_list(b, out, |b, o| write_bytes(b.as_ref(), o, bin)),
        _ => out.push_str("null"),
    }
}

/// The item's key attributes as a JSON object, as a change's `keys`.
pub fn keys_json(item: &HashMap<String, AttributeValue>, keys: &[(String, String)]) -> String {
    let key: HashMap<String, AttributeValue> = keys
        .iter()
        .filter_map(|(k, _)| item.get(k).map(|v| (k.clone(), v.clone())))
        .collect();
    item_json(&key, Binary::Base64)
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::primitives::Blob;

    use super::*;

    #[test]
    fn items_become_plain_json() {
        let item = HashMap::from([
            (
                "n".to_string(),
                AttributeValue::N("12345678901234567890123".into()),
            ),
            (
                "b".to_string(),
                AttributeValue::B(Blob::new(vec![0u8, 255])),
            ),
            (
                "l".to_string(),
                AttributeValue::L(vec![
                    AttributeValue::S("a\"b".into()),
                    AttributeValue::Null(true),
                    AttributeValue::Bool(false),
                ]),
            ),
            ("ns".to_string(), AttributeValue::Ns(vec!["1.50".into()])),
        ]);
        let v: serde_json::Value =
            serde_json::from_str(&item_json(&item, Binary::Hex)).unwrap_or_default();
        assert_eq!(v["b"], "00ff");
        assert_eq!(v["l"], serde_json::json!(["a\"b", null, false]));
        // Numbers keep their own text, every digit.
        assert!(item_json(&item, Binary::Hex).contains("\"ns\":[1.50]"));
        assert!(item_json(&item, Binary::Hex).contains("12345678901234567890123"));
        let keys = [
            ("pk".to_string(), "S".to_string()),
            ("n".to_string(), "N".to_string()),
        ];
        let mut with_key = item.clone();
        with_key.insert("pk".into(), AttributeValue::S("k1".into()));
        assert_eq!(
            key_text(&with_key, &keys),
            "pk=\"k1\", n=12345678901234567890123"
        );
    }
}
