//! `DynamoWriterExec` writes one input partition to a DynamoDB table with
//! BatchWriteItem, paced by the cluster-wide [`Limiter`]; it emits one row
//! saying what it wrote, retried and dead-lettered, and where its time went.
//! `DynamoCommitExec` sums those rows, applies the failure tolerance and
//! returns the statement's result.
//!
//! Every item is written at least once: a batch is retried until DynamoDB
//! accepts each item (unprocessed items are re-sent), the item proves
//! unwritable (it then goes to the dead-letter location with its reason),
//! or the retry time runs out (the job fails and says which table and why).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, SchemaRef};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{PutRequest, ReturnConsumedCapacity, WriteRequest};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::item::{self, Item, MAX_ITEM_BYTES};
use super::spec::DynamoSpec;
use crate::coordinator::CoordinatorHandle;
use crate::coordinator::leases::LeaseRequest;
use crate::coordinator::limiter::Limiter;
use crate::exec::Report;
use crate::storage::dynamodb::Capacity;
use crate::storage::dynamodb::{self as client, Failure};

/// BatchWriteItem's limits.
const MAX_BATCH_ITEMS: usize = 25;
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// A batch holds about this many seconds of the writer's share.
const BATCH_SECONDS: f64 = 0.5;

/// Why a DynamoDB write failed on a writer or at its commit; each names the
/// table or the dead-letter location.
#[derive(thiserror::Error)]
pub enum WriteError {
    #[error("table '{table}': {reason}")]
    Columns {
        table: String,
        reason: item::SchemaError,
    },
    #[error(
        "table '{table}': {count} items still unwritten after retrying for {secs}s (last: {last})"
    )]
    RetriesExhausted {
        table: String,
        count: usize,
        secs: u64,
        last: String,
    },
    #[error("building a request: {0}")]
    Request(#[source] aws_sdk_dynamodb::error::BuildError),
    /// The write ended or this writer was cut off: it must not go on.
    #[error("writer of table '{table}' stopped: {reason}")]
    Stopped { table: String, reason: String },
    /// Credentials, a missing table, access denied: retrying cannot help.
    #[error("writing to DynamoDB table '{table}': {reason}")]
    Fatal { table: String, reason: String },
    #[error("dead-letter location '{0}' is not a URL or an absolute path")]
    DeadLetterLocation(String),
    #[error("dead-letter write to {dir}: no answer within {secs}s")]
    DeadLetterTimeout { dir: String, secs: u64 },
    #[error("dead-letter write to {dir}")]
    DeadLetterWrite {
        dir: String,
        #[source]
        source: object_store::Error,
    },
    #[error("encoding a dead letter")]
    Encode(#[source] serde_json::Error),
    #[error(
        "{count} items could not be written to DynamoDB table '{table}' (tolerated: {tolerated}); first: {first}{place}"
    )]
    TooManyFailures {
        count: u64,
        table: String,
        tolerated: u64,
        first: String,
        place: String,
    },
}

crate::error::debug_as_display!(WriteError);

fn external(e: WriteError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// What one writer partition did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WriterReport {
    pub writer: String,
    pub items: u64,
    pub duplicates: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub throttles: u64,
    pub calls: u64,
    pub consumed_wcu: f64,
    pub build_ms: u64,
    pub call_ms: u64,
    pub response_ms: u64,
    pub wait_ms: u64,
    pub elapsed_ms: u64,
    pub first_failure: Option<String>,
    pub dead_letter_file: Option<String>,
}

impl WriterReport {
    fn add(&mut self, o: &WriterReport) {
        self.items += o.items;
        self.duplicates += o.duplicates;
        self.retried += o.retried;
        self.dead_lettered += o.dead_lettered;
        self.throttles += o.throttles;
        self.calls += o.calls;
        self.consumed_wcu += o.consumed_wcu;
        self.build_ms += o.build_ms;
        self.call_ms += o.call_ms;
        self.response_ms += o.response_ms;
        self.wait_ms += o.wait_ms;
        self.elapsed_ms = self.elapsed_ms.max(o.elapsed_ms);
        if self.first_failure.is_none() {
            self.first_failure.clone_from(&o.first_failure);
        }
    }
}

impl Report for WriterReport {
    const OPERATOR: &'static str = "SluiceDynamoWriterExec";

    fn fields() -> Vec<Field> {
        let u = |n: &str| Field::new(n, DataType::UInt64, false);
        vec![
            Field::new("writer", DataType::Utf8, false),
            u("items"),
            u("duplicates"),
            u("retried"),
            u("dead_lettered"),
            u("throttles"),
            u("calls"),
            Field::new("consumed_wcu", DataType::Float64, false),
            u("build_ms"),
            u("call_ms"),
            u("response_ms"),
            u("wait_ms"),
            u("elapsed_ms"),
            Field::new("first_failure", DataType::Utf8, true),
            Field::new("dead_letter_file", DataType::Utf8, true),
        ]
    }
}

/// Schema of a DynamoDB write statement's result ([`DynamoCommitReport`]).
pub fn dynamo_result_schema() -> SchemaRef {
    DynamoCommitReport::schema()
}

/// A DynamoDB write statement's result: one row of totals over the
/// writers. Times are summed over writers; `elapsed_ms` is the longest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamoCommitReport {
    pub items: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub throttles: u64,
    pub calls: u64,
    pub consumed_wcu: u64,
    pub build_ms: u64,
    pub call_ms: u64,
    pub response_ms: u64,
    pub wait_ms: u64,
    pub elapsed_ms: u64,
    pub table: String,
    pub write_id: String,
    /// Where dead-lettered items went, when any were.
    pub dead_letter: Option<String>,
}

impl Report for DynamoCommitReport {
    const OPERATOR: &'static str = "SluiceDynamoCommitExec";

    fn fields() -> Vec<Field> {
        let u = |n: &str| Field::new(n, DataType::UInt64, false);
        vec![
            u("items"),
            u("retried"),
            u("dead_lettered"),
            u("throttles"),
            u("calls"),
            u("consumed_wcu"),
            u("build_ms"),
            u("call_ms"),
            u("response_ms"),
            u("wait_ms"),
            u("elapsed_ms"),
            Field::new("table", DataType::Utf8, false),
            Field::new("write_id", DataType::Utf8, false),
            Field::new("dead_letter", DataType::Utf8, true),
        ]
    }
}

fn plan_properties(schema: SchemaRef, partitions: usize) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema),
        Partitioning::UnknownPartitioning(partitions),
        EmissionType::Final,
        Boundedness::Bounded,
    ))
}

#[derive(Debug)]
pub struct DynamoWriterExec {
    input: Arc<dyn ExecutionPlan>,
    spec: DynamoSpec,
    properties: Arc<PlanProperties>,
}

impl DynamoWriterExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, spec: DynamoSpec) -> Self {
        let properties = plan_properties(
            WriterReport::schema(),
            input.output_partitioning().partition_count(),
        );
        Self {
            input,
            spec,
            properties,
        }
    }

    pub fn spec(&self) -> &DynamoSpec {
        &self.spec
    }
}

impl DisplayAs for DynamoWriterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SluiceDynamoWriterExec: table={}, write_id={}",
            self.spec.table, self.spec.write_id
        )
    }
}

impl ExecutionPlan for DynamoWriterExec {
    crate::exec::single_input_plan!("SluiceDynamoWriterExec");

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let spec = self.spec.clone();
        let partitions = self.input.output_partitioning().partition_count();
        let writer = format!(
            "{}/pid{}/{}/p{partition}",
            context.task_id().unwrap_or_else(|| "local".into()),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8],
        );
        let span = tracing::info_span!("sluice.dynamodb.writer", table = %spec.table, %writer);
        let fut = async move {
            let report = write_partition(&spec, input, &writer, partitions, &context).await?;
            WriterReport::to_batch(&[report])
        }
        .instrument(span);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            WriterReport::schema(),
            futures::stream::once(fut),
        )))
    }
}

struct PartitionWriter<'a> {
    spec: &'a DynamoSpec,
    client: Client,
    limiter: Arc<Limiter>,
    report: WriterReport,
    dead: Vec<serde_json::Value>,
    labels: [(&'static str, String); 1],
}

async fn write_partition(
    spec: &DynamoSpec,
    mut input: SendableRecordBatchStream,
    writer: &str,
    partitions: usize,
    context: &TaskContext,
) -> Result<WriterReport> {
    let started = Instant::now();
    let client = client::client().await;
    // Without the coordinator, the configured-parallelism formula is the
    // safe choice: it can only under-use the table.
    let fallback = spec.budget_hint / partitions.max(1) as f64;
    let coordinator = CoordinatorHandle::of(context.session_config());
    let request = LeaseRequest {
        table: spec.table.clone(),
        writer: writer.to_string(),
        write_id: spec.write_id.clone(),
        share: spec.options.share(),
        budget_hint: spec.budget_hint,
        consumed_wcu: 0.0,
        throttles: 0,
        capacity: Capacity::Write,
    };
    let limiter = Limiter::start(
        request,
        fallback,
        coordinator.url.clone(),
        coordinator.http.clone(),
    )
    .await;
    let mut w = PartitionWriter {
        spec,
        client,
        limiter: Arc::clone(&limiter),
        report: WriterReport {
            writer: writer.to_string(),
            ..Default::default()
        },
        dead: Vec::new(),
        labels: [("table", spec.table.clone())],
    };
    let keys = spec.shape.key_names();
    let result = async {
        let mut pending: Vec<Item> = Vec::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        let mut pending_bytes = 0usize;
        let mut pending_wcu = 0u64;
        while let Some(batch) = input.try_next().await? {
            let t = Instant::now();
            let items = item::batch_to_items(&batch, &spec.options.set_columns, &keys).map_err(
                |reason| {
                    external(WriteError::Columns {
                        table: spec.table.clone(),
                        reason,
                    })
                },
            )?;
            w.report.build_ms += t.elapsed().as_millis() as u64;
            // Batches are sized to about BATCH_SECONDS of this writer's
            // share: with many writers on a small share, 25-item batches
            // would leave each writer silent for seconds and then send in
            // clumps the table's one-second bucket cannot absorb.
            // Read again after every flush, when a renewal may have changed it.
            let mut share = (limiter.rate() * BATCH_SECONDS) as u64;
            for (row, result) in items.into_iter().enumerate() {
                let item = match result {
                    Ok(item) => item,
                    Err(e) => {
                        let reason = e.to_string();
                        let record = serde_json::json!({
                            "reason": reason,
                            "row": row_json(&batch, row),
                        });
                        w.dead_letter(record, &reason);
                        continue;
                    }
                };
                if item.bytes > MAX_ITEM_BYTES {
                    let reason = format!(
                        "item is {} bytes, over DynamoDB's {} byte limit",
                        item.bytes, MAX_ITEM_BYTES
                    );
                    w.dead_letter_item(&item, &reason);
                    continue;
                }
                // A batch may not name a key twice: the later row wins,
                // as it would if the rows were written one after another.
                let key = item::key_text(&item, &keys);
                if let Some(&at) = by_key.get(&key) {
                    pending_bytes = pending_bytes + item.bytes - pending[at].bytes;
                    pending_wcu = pending_wcu + spec.wcu(&item) - spec.wcu(&pending[at]);
                    pending[at] = item;
                    w.report.duplicates += 1;
                    continue;
                }
                let wcu = spec.wcu(&item);
                if pending.len() == MAX_BATCH_ITEMS
                    || pending_bytes + item.bytes > MAX_BATCH_BYTES
                    || (!pending.is_empty() && pending_wcu + wcu > share)
                {
                    w.flush(std::mem::take(&mut pending)).await?;
                    by_key.clear();
                    pending_bytes = 0;
                    pending_wcu = 0;
                    share = (limiter.rate() * BATCH_SECONDS) as u64;
                }
                by_key.insert(key, pending.len());
                pending_bytes += item.bytes;
                pending_wcu += wcu;
                pending.push(item);
            }
        }
        if !pending.is_empty() {
            w.flush(pending).await?;
        }
        Ok::<(), DataFusionError>(())
    }
    .await;
    limiter.release().await;
    w.write_dead_letters(context).await?;
    result?;
    w.report.elapsed_ms = started.elapsed().as_millis() as u64;
    let l = &w.labels;
    metrics::counter!("sluice_dynamodb_items_total", l).increment(w.report.items);
    metrics::counter!("sluice_dynamodb_retried_total", l).increment(w.report.retried);
    metrics::counter!("sluice_dynamodb_dead_letter_total", l).increment(w.report.dead_lettered);
    metrics::counter!("sluice_dynamodb_throttles_total", l).increment(w.report.throttles);
    metrics::counter!("sluice_dynamodb_calls_total", l).increment(w.report.calls);
    metrics::counter!("sluice_dynamodb_consumed_wcu_total", l)
        .increment(w.report.consumed_wcu.round() as u64);
    for (phase, ms) in [
        ("build", w.report.build_ms),
        ("call", w.report.call_ms),
        ("response", w.report.response_ms),
        ("wait", w.report.wait_ms),
    ] {
        metrics::histogram!("sluice_dynamodb_writer_phase_seconds", "table" => spec.table.clone(), "phase" => phase)
            .record(ms as f64 / 1000.0);
    }
    tracing::info!(
        items = w.report.items,
        retried = w.report.retried,
        throttles = w.report.throttles,
        wait_ms = w.report.wait_ms,
        call_ms = w.report.call_ms,
        "DynamoDB writer done"
    );
    Ok(w.report)
}

fn row_json(batch: &RecordBatch, row: usize) -> serde_json::Value {
    let mut buf = Vec::new();
    let mut writer = arrow::json::ArrayWriter::new(&mut buf);
    let written = writer
        .write(&batch.slice(row, 1))
        .and_then(|()| writer.finish());
    match written {
        Ok(()) => serde_json::from_slice::<Vec<serde_json::Value>>(&buf)
            .ok()
            .and_then(|mut v| v.pop())
            .unwrap_or_default(),
        Err(e) => serde_json::Value::String(format!("(row not printable: {e})")),
    }
}

/// Exponential backoff with full jitter, capped at 5 s.
fn backoff(attempt: u32) -> Duration {
    let cap_ms = (50u64 << attempt.min(7)).min(5_000) as f64;
    let jitter = crate::coordinator::limiter::unit_random() * cap_ms;
    Duration::from_millis(jitter.max(cap_ms / 4.0) as u64)
}

impl PartitionWriter<'_> {
    fn dead_letter(&mut self, record: serde_json::Value, reason: &str) {
        self.report.dead_lettered += 1;
        if self.report.first_failure.is_none() {
            self.report.first_failure = Some(reason.to_string());
        }
        self.dead.push(record);
    }

    fn dead_letter_item(&mut self, item: &Item, reason: &str) {
        let record = serde_json::json!({
            "reason": reason,
            "bytes": item.bytes,
            "item": item::to_json(&item.attributes),
        });
        self.dead_letter(record, reason);
    }

    /// Writes `items` (at most one batch), retrying until every item is
    /// accepted or dead-lettered.
    async fn flush(&mut self, items: Vec<Item>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(self.spec.options.max_retry_secs);
        let call_timeout = Duration::from_millis(self.spec.options.call_timeout_ms);
        let mut todo = items;
        let mut attempt = 0u32;
        let mut last_error = String::new();
        while !todo.is_empty() {
            if Instant::now() > deadline {
                return Err(external(WriteError::RetriesExhausted {
                    table: self.spec.table.clone(),
                    count: todo.len(),
                    secs: self.spec.options.max_retry_secs,
                    last: last_error,
                }));
            }
            let estimated: f64 = todo.iter().map(|i| self.spec.wcu(i) as f64).sum();
            let waited = self.limiter.acquire(estimated).await.map_err(|reason| {
                external(WriteError::Stopped {
                    table: self.spec.table.clone(),
                    reason,
                })
            })?;
            self.report.wait_ms += waited.as_millis() as u64;
            let t = Instant::now();
            let requests = todo
                .iter()
                .map(|i| {
                    PutRequest::builder()
                        .set_item(Some(i.attributes.clone()))
                        .build()
                        .map(|p| WriteRequest::builder().put_request(p).build())
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| external(WriteError::Request(e)))?;
            self.report.build_ms += t.elapsed().as_millis() as u64;
            let t = Instant::now();
            let call = self
                .client
                .batch_write_item()
                .request_items(&self.spec.table, requests)
                .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
                .send()
                .instrument(tracing::debug_span!(
                    "dynamodb.batch_write_item",
                    table = %self.spec.table,
                    items = todo.len()
                ));
            let result = tokio::time::timeout(call_timeout, call).await;
            self.report.call_ms += t.elapsed().as_millis() as u64;
            self.report.calls += 1;
            let t = Instant::now();
            let failure = match result {
                Err(_) => {
                    last_error = format!("no answer within {} ms", call_timeout.as_millis());
                    Some(Failure::Transient)
                }
                Ok(Ok(out)) => {
                    let unprocessed: Vec<Item> = out
                        .unprocessed_items()
                        .and_then(|u| u.get(&self.spec.table))
                        .map(|reqs| {
                            reqs.iter()
                                .filter_map(|r| r.put_request())
                                .map(|p| {
                                    let attributes = p.item().clone();
                                    let bytes = attributes
                                        .iter()
                                        .map(|(k, v)| k.len() + item::value_size(v))
                                        .sum();
                                    Item { attributes, bytes }
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let unprocessed_wcu: f64 =
                        unprocessed.iter().map(|i| self.spec.wcu(i) as f64).sum();
                    let reported: Option<f64> = out
                        .consumed_capacity()
                        .iter()
                        .map(|c| c.capacity_units())
                        .sum::<Option<f64>>()
                        .filter(|_| !out.consumed_capacity().is_empty());
                    let consumed = reported.unwrap_or(estimated - unprocessed_wcu);
                    let throttled = !unprocessed.is_empty();
                    self.limiter.record(estimated, consumed, throttled);
                    self.report.consumed_wcu += consumed;
                    self.report.items += (todo.len() - unprocessed.len()) as u64;
                    if throttled {
                        self.report.retried += unprocessed.len() as u64;
                        self.report.throttles += 1;
                        last_error = format!("{} unprocessed items", unprocessed.len());
                    }
                    todo = unprocessed;
                    throttled.then_some(Failure::Throttled)
                }
                Ok(Err(e)) => {
                    last_error = client::describe_error(&e);
                    let kind = client::classify(&e);
                    tracing::debug!(table = %self.spec.table, error = %last_error, ?kind, "BatchWriteItem failed");
                    if kind == Failure::Throttled {
                        // The whole request was refused: nothing consumed.
                        self.limiter.record(estimated, 0.0, true);
                        self.report.throttles += 1;
                        self.report.retried += todo.len() as u64;
                    }
                    Some(kind)
                }
            };
            self.report.response_ms += t.elapsed().as_millis() as u64;
            match failure {
                None => attempt = 0,
                Some(Failure::Throttled) => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Some(Failure::Transient) => {
                    self.limiter.record(estimated, 0.0, false);
                    self.report.retried += todo.len() as u64;
                    tracing::warn!(table = %self.spec.table, error = %last_error, attempt, "BatchWriteItem failed; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Some(Failure::Invalid) => {
                    self.limiter.record(estimated, 0.0, false);
                    if todo.len() == 1 {
                        let item = todo.remove(0);
                        self.dead_letter_item(&item, &last_error);
                    } else {
                        // Find the item DynamoDB refuses: one request each.
                        for item in std::mem::take(&mut todo) {
                            Box::pin(self.flush(vec![item])).await?;
                        }
                    }
                }
                Some(Failure::Fatal) => {
                    return Err(external(WriteError::Fatal {
                        table: self.spec.table.clone(),
                        reason: last_error,
                    }));
                }
            }
        }
        Ok(())
    }

    /// Dead letters go to `<dead_letter>/<write_id>/<writer>.ndjson`, one
    /// object per writer, so that a retried task replaces its own file.
    async fn write_dead_letters(&mut self, context: &TaskContext) -> Result<()> {
        if self.dead.is_empty() {
            return Ok(());
        }
        let Some(dir) = &self.spec.options.dead_letter else {
            return Ok(());
        };
        let base = url::Url::parse(dir)
            .or_else(|_| url::Url::from_directory_path(dir))
            .map_err(|_| external(WriteError::DeadLetterLocation(dir.clone())))?;
        let store = context
            .runtime_env()
            .object_store_registry
            .get_store(&base)?;
        let name = self.report.writer.replace(['/', ':'], "_");
        let prefix = base.path().trim_matches('/');
        let key = object_store::path::Path::from(format!(
            "{prefix}/{}/{name}.ndjson",
            self.spec.write_id
        ));
        let mut body = Vec::new();
        for record in &self.dead {
            serde_json::to_writer(&mut body, record)
                .map_err(|e| external(WriteError::Encode(e)))?;
            body.push(b'\n');
        }
        const DEAD_LETTER_TIMEOUT: Duration = Duration::from_secs(60);
        tokio::time::timeout(DEAD_LETTER_TIMEOUT, store.put(&key, body.into()))
            .await
            .map_err(|_| {
                external(WriteError::DeadLetterTimeout {
                    dir: dir.clone(),
                    secs: DEAD_LETTER_TIMEOUT.as_secs(),
                })
            })?
            .map_err(|source| {
                external(WriteError::DeadLetterWrite {
                    dir: dir.clone(),
                    source,
                })
            })?;
        let mut full = base.clone();
        full.set_path(&format!("/{key}"));
        self.report.dead_letter_file = Some(full.to_string());
        Ok(())
    }
}

#[derive(Debug)]
pub struct DynamoCommitExec {
    input: Arc<dyn ExecutionPlan>,
    spec: DynamoSpec,
    properties: Arc<PlanProperties>,
}

impl DynamoCommitExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, spec: DynamoSpec) -> Self {
        Self {
            input,
            spec,
            properties: plan_properties(dynamo_result_schema(), 1),
        }
    }

    pub fn spec(&self) -> &DynamoSpec {
        &self.spec
    }
}

impl DisplayAs for DynamoCommitExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SluiceDynamoCommitExec: table={}", self.spec.table)
    }
}

impl ExecutionPlan for DynamoCommitExec {
    crate::exec::single_input_plan!("SluiceDynamoCommitExec");

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        crate::exec::only_partition_zero("SluiceDynamoCommitExec", partition)?;
        let input = self.input.execute(0, context)?;
        let spec = self.spec.clone();
        let fut = async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            let mut total = WriterReport::default();
            for r in WriterReport::from_batches(&batches)? {
                total.add(&r);
            }
            let tolerance = spec.options.failure_tolerance();
            if total.dead_lettered > tolerance {
                let place = match &spec.options.dead_letter {
                    Some(d) => format!("; dead letters under {d}"),
                    None => format!(
                        "; set OPTIONS ('{}' '<dir or s3:// URL>') to keep them",
                        super::spec::DEAD_LETTER_OPTION
                    ),
                };
                return Err(external(WriteError::TooManyFailures {
                    count: total.dead_lettered,
                    table: spec.table.clone(),
                    tolerated: tolerance,
                    first: total.first_failure.unwrap_or_else(|| "unknown".into()),
                    place,
                }));
            }
            let dead_letter = spec
                .options
                .dead_letter
                .as_ref()
                .filter(|_| total.dead_lettered > 0);
            DynamoCommitReport::to_batch(&[DynamoCommitReport {
                items: total.items,
                retried: total.retried,
                dead_lettered: total.dead_lettered,
                throttles: total.throttles,
                calls: total.calls,
                consumed_wcu: total.consumed_wcu.round() as u64,
                build_ms: total.build_ms,
                call_ms: total.call_ms,
                response_ms: total.response_ms,
                wait_ms: total.wait_ms,
                elapsed_ms: total.elapsed_ms,
                table: spec.table.clone(),
                write_id: spec.write_id.clone(),
                dead_letter: dead_letter.cloned(),
            }])
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            dynamo_result_schema(),
            futures::stream::once(fut).boxed(),
        )))
    }
}
