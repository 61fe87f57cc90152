//! Kafka topics as tables: `CREATE EXTERNAL TABLE t [(declared columns)]
//! STORED AS KAFKA LOCATION 'kafka://host:port[,host:port]/topic'
//! [OPTIONS (...)]`.
//!
//! Columns: `key`, `value` (bytes), `partition`, `offset`, `timestamp`,
//! `headers` (a JSON object of the headers as text), then the declared
//! columns parsed from each value as a JSON object (typed as declared;
//! `NOT NULL` ones required), and `_error`: why a value did not parse (its
//! declared columns are then null), so a job routes bad records to a
//! dead-letter write with SQL. More than `max_bad_records` bad records in one
//! range fail the batch, naming the partition and offset.
//!
//! The table reads the ranges a stream's batch planned for it
//! ([`BatchKafka`] on the session): one scan partition per range, each a
//! row of a memory source that [`KafkaScanExec`] expands by fetching from the
//! broker on the executor running it. Outside a stream the table reads
//! nothing. Every broker call has a timeout.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Int32Array, Int64Array, RecordBatch, StringBuilder,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::stats::Precision;
use datafusion::common::{DataFusionError, Result, Statistics, plan_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::CreateExternalTable;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, StatisticsArgs,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// The `STORED AS` name.
pub const KAFKA: &str = "KAFKA";
/// Kafka's default `message.max.bytes`: what one record may take, as far
/// as a plan's size estimate knows.
const RECORD_BYTES_BOUND: usize = 1 << 20;
/// How long one broker call may take, unless `request_timeout_ms` says.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The bounds of `request_timeout_ms`.
const TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=600_000;
/// Bytes one fetch asks for.
const FETCH_BYTES: i32 = 4 * 1024 * 1024;
/// How long the broker may hold a fetch for more bytes: a range's records
/// are below the high watermark already, so waiting buys nothing (and
/// some brokers wait the whole time on a small answer).
const FETCH_WAIT_MS: i32 = 10;
/// Rows per output batch.
const BATCH_ROWS: usize = 8192;
/// The column that says why a value did not parse.
pub const ERROR_COLUMN: &str = "_error";

/// Where a topic is: `kafka://host:port[,host:port]/topic`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaLocation {
    pub brokers: Vec<String>,
    pub topic: String,
}

impl KafkaLocation {
    pub fn parse(raw: &str) -> Result<Self> {
        let bad = |why: &str| {
            DataFusionError::Plan(format!(
                "Kafka location '{raw}': {why} (expected kafka://host:port[,host:port]/topic)"
            ))
        };
        let rest = raw
            .strip_prefix("kafka://")
            .ok_or_else(|| bad("not a kafka:// URL"))?;
        let (hosts, topic) = rest.split_once('/').ok_or_else(|| bad("no topic"))?;
        let topic = topic.trim_end_matches('/');
        if topic.is_empty() || topic.contains('/') {
            return Err(bad("the topic must be one path segment"));
        }
        if hosts.contains('@') {
            return Err(bad("credentials do not belong in the URL"));
        }
        let brokers: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(String::from)
            .collect();
        if brokers.is_empty() || brokers.iter().any(|b| !b.contains(':')) {
            return Err(bad("every broker needs host:port"));
        }
        Ok(Self {
            brokers,
            topic: topic.to_string(),
        })
    }

    pub fn url(&self) -> String {
        format!("kafka://{}/{}", self.brokers.join(","), self.topic)
    }
}

/// Where a stream starts reading a partition it has no position for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartingOffsets {
    Earliest,
    Latest,
    /// The first record at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// The table's options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaOptions {
    pub starting_offsets: StartingOffsets,
    /// Records a batch takes from the whole topic at most.
    pub max_records_per_batch: u64,
    /// Bad records one range may hold before the batch fails.
    pub max_bad_records: u64,
    /// Records of a batch that may be neither written nor dead-lettered
    /// (`stream::info::unaccounted`); `None`: not checked.
    #[serde(default)]
    pub max_filtered_records: Option<u64>,
    /// How long one broker call (connect, metadata, offsets, a fetch) may
    /// take before the batch fails.
    #[serde(default = "default_timeout_ms")]
    pub request_timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    CALL_TIMEOUT.as_millis() as u64
}

impl Default for KafkaOptions {
    fn default() -> Self {
        Self {
            starting_offsets: StartingOffsets::Earliest,
            max_records_per_batch: 100_000,
            max_bad_records: 0,
            max_filtered_records: None,
            request_timeout_ms: default_timeout_ms(),
        }
    }
}

impl KafkaOptions {
    /// How long one broker call may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// From `OPTIONS (...)`: `starting_offsets` (`earliest`, `latest` or a
    /// time like `2026-11-25T10:00:00Z`), `max_records_per_batch`,
    /// `max_bad_records`, `request_timeout_ms`. Unknown keys are refused.
    pub fn parse(options: &HashMap<String, String>) -> Result<Self> {
        let mut out = Self::default();
        for (raw_key, value) in options {
            let key = raw_key
                .trim_start_matches("format.")
                .to_ascii_lowercase()
                .replace('.', "_");
            let number = |v: &str| {
                v.trim().parse::<u64>().map_err(|_| {
                    DataFusionError::Plan(format!(
                        "Kafka option {raw_key} must be a number, got '{v}'"
                    ))
                })
            };
            match key.as_str() {
                "starting_offsets" => {
                    out.starting_offsets = match value.trim().to_ascii_lowercase().as_str() {
                        "earliest" => StartingOffsets::Earliest,
                        "latest" => StartingOffsets::Latest,
                        other => match chrono::DateTime::parse_from_rfc3339(other) {
                            Ok(t) => StartingOffsets::Timestamp(t.timestamp_millis()),
                            Err(_) => {
                                return plan_err!(
                                    "Kafka option starting_offsets must be earliest, latest or an RFC 3339 time, got '{value}'"
                                );
                            }
                        },
                    }
                }
                "max_records_per_batch" => {
                    out.max_records_per_batch = number(value)?;
                    if out.max_records_per_batch == 0 {
                        return plan_err!("Kafka option max_records_per_batch must be at least 1");
                    }
                }
                "max_bad_records" => out.max_bad_records = number(value)?,
                "max_filtered_records" => out.max_filtered_records = Some(number(value)?),
                "request_timeout_ms" => {
                    out.request_timeout_ms = number(value)?;
                    if !TIMEOUT_MS.contains(&out.request_timeout_ms) {
                        return plan_err!(
                            "Kafka option request_timeout_ms must be between {} and {}, got {value}",
                            TIMEOUT_MS.start(),
                            TIMEOUT_MS.end()
                        );
                    }
                }
                _ => {
                    return plan_err!(
                        "unknown Kafka option {raw_key} (known: starting_offsets, max_records_per_batch, max_bad_records, max_filtered_records, request_timeout_ms)"
                    );
                }
            }
        }
        Ok(out)
    }
}

/// Records `start..end` of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaRange {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// The ranges each Kafka table reads in one micro-batch, by location URL
/// (set on the client's session by `stream`).
#[derive(Debug, Default, Clone)]
pub struct BatchKafka {
    pub by_location: HashMap<String, Vec<KafkaRange>>,
}

/// The columns every Kafka table has, before the declared ones.
pub fn fixed_fields() -> Vec<Field> {
    vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("headers", DataType::Utf8, false),
    ]
}

/// A declared column, as it travels in a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declared {
    pub name: String,
    pub data_type: String,
    pub nullable: bool,
}

impl Declared {
    /// The columns `cmd` declares, parsed from each record as JSON; one
    /// that is a `fixed` column of the `what` table (or `_error`) is refused.
    pub fn from_command(
        cmd: &CreateExternalTable,
        fixed: &[Field],
        what: &str,
    ) -> Result<Vec<Self>> {
        let fixed: Vec<&String> = fixed.iter().map(|f| f.name()).collect();
        let mut declared = Vec::new();
        for f in cmd.schema.fields() {
            if fixed.contains(&f.name()) || f.name() == ERROR_COLUMN {
                return plan_err!(
                    "{}: column {} is one of the {what} table's own columns ({}, {ERROR_COLUMN}); declare only the fields parsed from the records",
                    cmd.name,
                    f.name(),
                    fixed
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            declared.push(Self {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                nullable: f.is_nullable(),
            });
        }
        Ok(declared)
    }

    /// The declared columns as a schema, as declared.
    pub fn schema(declared: &[Self]) -> Result<SchemaRef> {
        let fields = declared
            .iter()
            .map(|d| {
                DataType::from_str(&d.data_type)
                    .map(|t| Field::new(&d.name, t, d.nullable))
                    .map_err(DataFusionError::from)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }

    /// A source table's schema: its `fixed` columns, the declared ones
    /// (nullable: a bad record's are null, its `_error` says why; required
    /// ones are checked when parsing), then `_error`.
    pub fn table_schema(mut fixed: Vec<Field>, declared: &[Self]) -> Result<SchemaRef> {
        fixed.extend(
            Self::schema(declared)?
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true)),
        );
        fixed.push(Field::new(ERROR_COLUMN, DataType::Utf8, true));
        Ok(Arc::new(Schema::new(fixed)))
    }
}

/// What a Kafka table is: enough to rebuild it on the scheduler and to
/// scan it on an executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaSpec {
    pub location: KafkaLocation,
    pub options: KafkaOptions,
    pub declared: Vec<Declared>,
    pub ranges: Vec<KafkaRange>,
}

impl KafkaSpec {
    fn declared_schema(&self) -> Result<SchemaRef> {
        Declared::schema(&self.declared)
    }

    pub fn schema(&self) -> Result<SchemaRef> {
        Declared::table_schema(fixed_fields(), &self.declared)
    }
}

/// A Kafka topic's table for one batch (or, outside a stream, no rows).
pub type KafkaTable = super::SourceTable<KafkaSpec>;

#[async_trait]
impl super::SourceSpec for KafkaSpec {
    fn table_schema(&self) -> Result<SchemaRef> {
        self.schema()
    }

    async fn plan_scan(&self, _state: &dyn Session) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(KafkaScanExec::of(self.clone())?))
    }
}

/// Builds Kafka tables from `CREATE EXTERNAL TABLE ... STORED AS KAFKA`.
#[derive(Debug, Default)]
pub struct KafkaTableFactory;

#[async_trait]
impl TableProviderFactory for KafkaTableFactory {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let [location] = cmd.locations.as_slice() else {
            return plan_err!("{}: a Kafka table has one LOCATION", cmd.name);
        };
        let location = KafkaLocation::parse(location)?;
        let options = KafkaOptions::parse(&cmd.options)?;
        let declared = Declared::from_command(cmd, &fixed_fields(), "Kafka")?;
        let ranges = state
            .config()
            .get_extension::<BatchKafka>()
            .and_then(|b| b.by_location.get(&location.url()).cloned())
            .unwrap_or_default();
        Ok(Arc::new(KafkaTable::try_new(KafkaSpec {
            location,
            options,
            declared,
            ranges,
        })?))
    }
}

fn range_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::Int32, false),
        Field::new("start", DataType::Int64, false),
        Field::new("end", DataType::Int64, false),
    ]))
}

/// One in-memory partition per range (a row `(partition, start, end)`): as
/// `range`'s slices, so Ballista narrows a task to its own ranges.
fn range_source(ranges: &[KafkaRange]) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = range_schema();
    let mut partitions = ranges
        .iter()
        .map(|r| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int32Array::from(vec![r.partition])),
                    Arc::new(Int64Array::from(vec![r.start])),
                    Arc::new(Int64Array::from(vec![r.end])),
                ],
            )
            .map(|b| vec![b])
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if partitions.is_empty() {
        partitions.push(vec![]);
    }
    let exec: Arc<dyn ExecutionPlan> = MemorySourceConfig::try_new_exec(&partitions, schema, None)?;
    Ok(exec)
}

/// Fetches each range row of its input from the broker.
#[derive(Debug)]
pub struct KafkaScanExec {
    spec: KafkaSpec,
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl KafkaScanExec {
    /// The scan of `spec`'s ranges, one partition each.
    pub fn of(spec: KafkaSpec) -> Result<Self> {
        let input = range_source(&spec.ranges)?;
        Self::try_new(spec, input)
    }

    pub fn try_new(spec: KafkaSpec, input: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let schema = spec.schema()?;
        Ok(Self::with_schema(spec, schema, input))
    }

    fn with_schema(spec: KafkaSpec, schema: SchemaRef, input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = crate::exec::part_properties(&schema, &input);
        Self {
            spec,
            input,
            schema,
            properties,
        }
    }

    /// The same scan over another range source.
    fn with_input(&self, input: Arc<dyn ExecutionPlan>) -> Self {
        Self::with_schema(self.spec.clone(), Arc::clone(&self.schema), input)
    }

    pub fn spec(&self) -> &KafkaSpec {
        &self.spec
    }
}

impl DisplayAs for KafkaScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "KafkaScanExec: {} ranges of {}",
            self.spec.ranges.len(),
            self.spec.location.url()
        )
    }
}

impl ExecutionPlan for KafkaScanExec {
    crate::exec::single_input_plan!("KafkaScanExec", with_input);

    // Splitting the range source would read a range twice.
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    /// Offsets bound a batch's records (compaction and transaction
    /// markers leave gaps), so the planner can size a skew-aware write's
    /// reduce tasks to the batch.
    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let span = |r: &KafkaRange| usize::try_from(r.end.saturating_sub(r.start)).unwrap_or(0);
        let rows = match args.partition() {
            None => Some(self.spec.ranges.iter().map(span).sum()),
            Some(p) => self.spec.ranges.get(p).map(span),
        };
        let Some(rows) = rows else {
            return Ok(Arc::new(Statistics::new_unknown(&self.schema)));
        };
        // Bytes bounded by the broker's default record limit, so a join
        // never takes a batch of few but large records for a small build
        // side (it would judge by rows without a byte size).
        Ok(Arc::new(
            Statistics::new_unknown(&self.schema)
                .with_num_rows(Precision::Inexact(rows))
                .with_total_byte_size(Precision::Inexact(rows.saturating_mul(RECORD_BYTES_BOUND))),
        ))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let rows = self.input.execute(partition, context)?;
        let spec = self.spec.clone();
        let schema = Arc::clone(&self.schema);
        let out_schema = Arc::clone(&schema);
        let batches = rows
            .map(move |descr| {
                let spec = spec.clone();
                let schema = Arc::clone(&schema);
                async move {
                    let descr = descr?;
                    let parts = descr.column(0).as_primitive::<Int32Type>().clone();
                    let starts = descr.column(1).as_primitive::<Int64Type>().clone();
                    let ends = descr.column(2).as_primitive::<Int64Type>().clone();
                    let mut out = Vec::new();
                    for i in 0..descr.num_rows() {
                        let range = KafkaRange {
                            partition: parts.value(i),
                            start: starts.value(i),
                            end: ends.value(i),
                        };
                        out.extend(read_range(&spec, &schema, range).await?);
                    }
                    Ok::<_, DataFusionError>(futures::stream::iter(out.into_iter().map(Ok)))
                }
            })
            .buffered(1)
            .map(|r| match r {
                Ok(s) => s.boxed(),
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            })
            .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, batches)))
    }
}

fn kafka_err(what: String) -> DataFusionError {
    DataFusionError::Execution(what)
}

/// A client for `location`'s brokers, retrying a failed call for at most
/// `timeout`.
pub async fn connect(
    location: &KafkaLocation,
    timeout: Duration,
) -> Result<rskafka::client::Client> {
    let backoff = rskafka::BackoffConfig {
        deadline: Some(timeout),
        ..Default::default()
    };
    let build = rskafka::client::ClientBuilder::new(location.brokers.clone())
        .client_id("sluice")
        .backoff_config(backoff)
        .build();
    tokio::time::timeout(timeout, build)
        .await
        .map_err(|_| {
            kafka_err(format!(
                "Kafka brokers {} did not answer within {timeout:?}",
                location.brokers.join(",")
            ))
        })?
        .map_err(|e| {
            kafka_err(format!(
                "cannot reach Kafka brokers {}: {e}",
                location.brokers.join(",")
            ))
        })
}

/// A client for one partition of the topic.
pub async fn partition_client(
    client: &rskafka::client::Client,
    location: &KafkaLocation,
    partition: i32,
    timeout: Duration,
) -> Result<rskafka::client::partition::PartitionClient> {
    let call = client.partition_client(
        location.topic.clone(),
        partition,
        rskafka::client::partition::UnknownTopicHandling::Error,
    );
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| {
            kafka_err(format!(
                "{}: partition {partition}: no answer within {timeout:?}",
                location.url()
            ))
        })?
        .map_err(|e| kafka_err(format!("{}: partition {partition}: {e}", location.url())))
}

/// Reads one range whole into batches of the table's schema.
async fn read_range(
    spec: &KafkaSpec,
    schema: &SchemaRef,
    range: KafkaRange,
) -> Result<Vec<RecordBatch>> {
    use tracing::Instrument;
    if range.end <= range.start {
        return Ok(vec![]);
    }
    let span = tracing::info_span!("kafka.read_range", topic = %spec.location.topic, partition = range.partition, start = range.start, end = range.end);
    read_range_in(spec, schema, range).instrument(span).await
}

async fn read_range_in(
    spec: &KafkaSpec,
    schema: &SchemaRef,
    range: KafkaRange,
) -> Result<Vec<RecordBatch>> {
    let timeout = spec.options.timeout();
    let client = connect(&spec.location, timeout).await?;
    let pc = partition_client(&client, &spec.location, range.partition, timeout).await?;
    let mut records: Vec<rskafka::record::RecordAndOffset> = Vec::new();
    let mut next = range.start;
    let mut fetches = 0u64;
    while next < range.end {
        fetches += 1;
        let fetch = pc.fetch_records(next, 1..FETCH_BYTES, FETCH_WAIT_MS);
        let (got, high) = tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| {
                kafka_err(format!(
                    "{}: partition {} fetch at offset {next}: no answer within {timeout:?}",
                    spec.location.url(),
                    range.partition
                ))
            })?
            .map_err(|e| {
                kafka_err(format!(
                    "{}: partition {} fetch at offset {next}: {e}",
                    spec.location.url(),
                    range.partition
                ))
            })?;
        let before = next;
        for r in got {
            if r.offset < next || r.offset >= range.end {
                continue;
            }
            // Every offset of the range is a record: a gap (a compacted or
            // transactional topic, or a broker that skips) would be lost
            // rows, so it fails the batch instead.
            if r.offset != next {
                return Err(kafka_err(format!(
                    "{}: partition {}: the broker returned offset {} where {next} was due: offsets {next}..{} are missing (compacted and transactional topics are not supported)",
                    spec.location.url(),
                    range.partition,
                    r.offset,
                    r.offset
                )));
            }
            next += 1;
            records.push(r);
        }
        if next == before {
            return Err(kafka_err(format!(
                "{}: partition {} returned no record at offset {next} (high watermark {high}, range end {})",
                spec.location.url(),
                range.partition,
                range.end
            )));
        }
    }
    metrics::counter!("sluice_kafka_fetches_total").increment(fetches);
    metrics::counter!("sluice_kafka_records_read_total").increment(records.len() as u64);
    tracing::debug!(fetches, records = records.len(), "fetched the range");
    let declared = spec.declared_schema()?;
    let mut bad = 0u64;
    let mut out = Vec::new();
    for chunk in records.chunks(BATCH_ROWS) {
        let (batch, chunk_bad) = to_batch(schema, &declared, range.partition, chunk)?;
        bad += chunk_bad.len() as u64;
        if bad > spec.options.max_bad_records {
            let (offset, why) = chunk_bad.last().cloned().unwrap_or_default();
            return Err(kafka_err(format!(
                "{}: partition {} offset {offset}: {bad} bad records in this batch's range {}..{}, over max_bad_records {}; the last: {why}",
                spec.location.url(),
                range.partition,
                range.start,
                range.end,
                spec.options.max_bad_records
            )));
        }
        out.push(batch);
    }
    Ok(out)
}

/// The records as a batch; the declared columns parsed from each value.
/// Returns the bad records' offsets and reasons too.
fn to_batch(
    schema: &SchemaRef,
    declared: &SchemaRef,
    partition: i32,
    records: &[rskafka::record::RecordAndOffset],
) -> Result<(RecordBatch, Vec<(i64, String)>)> {
    let mut keys = BinaryBuilder::new();
    let mut values = BinaryBuilder::new();
    let mut headers = StringBuilder::new();
    for r in records {
        keys.append_option(r.record.key.as_deref());
        values.append_option(r.record.value.as_deref());
        let h: BTreeMap<&str, String> = r
            .record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        headers.append_value(serde_json::to_string(&h).unwrap_or_default());
    }
    let n = records.len();
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(keys.finish()),
        Arc::new(values.finish()),
        Arc::new(Int32Array::from(vec![partition; n])),
        Arc::new(Int64Array::from_iter_values(
            records.iter().map(|r| r.offset),
        )),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(
                records
                    .iter()
                    .map(|r| r.record.timestamp.timestamp_millis()),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(headers.finish()),
    ];
    let mut errors = StringBuilder::new();
    let mut bad = Vec::new();
    if declared.fields().is_empty() {
        for _ in records {
            errors.append_null();
        }
    } else {
        let texts: Vec<Option<&[u8]>> = records.iter().map(|r| r.record.value.as_deref()).collect();
        let parsed =
            parse_values(declared, &texts).map_err(|e| DataFusionError::External(e.into()))?;
        for (r, why) in records.iter().zip(&parsed.errors) {
            match why {
                Some(why) => {
                    errors.append_value(why);
                    bad.push((r.offset, why.clone()));
                }
                None => errors.append_null(),
            }
        }
        let rows = arrow::array::UInt32Array::from(parsed.row_of);
        for column in parsed.decoded.columns() {
            // A bad record has no row: `take` gives it nulls.
            columns.push(arrow::compute::take(column.as_ref(), &rows, None)?);
        }
    }
    columns.push(Arc::new(errors.finish()));
    // Declared NOT NULL columns are null in bad records: the table's
    // schema says nullable there (only `_error` rows hold such nulls).
    let batch = RecordBatch::try_new(Arc::clone(schema), columns)?;
    Ok((batch, bad))
}

/// Values parsed into the declared columns: `decoded` holds the good ones'
/// rows, `row_of` each value's row in it (`None` for a bad one) and
/// `errors` why each bad one is bad.
pub(crate) struct Parsed {
    pub(crate) decoded: RecordBatch,
    pub(crate) row_of: Vec<Option<u32>>,
    pub(crate) errors: Vec<Option<String>>,
}

/// Parses every value that is a JSON object in one decoder pass; when that
/// pass fails (a wrong type, a missing required field), parses them one by
/// one to find which are bad and why.
pub(crate) fn parse_values(
    declared: &SchemaRef,
    values: &[Option<&[u8]>],
) -> std::result::Result<Parsed, arrow::error::ArrowError> {
    // Nulls are let through by the decoder and required fields checked
    // afterwards, to name the field that is missing.
    let lenient = Arc::new(Schema::new(
        declared
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let mut errors: Vec<Option<String>> = Vec::with_capacity(values.len());
    let mut good: Vec<(usize, &str)> = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match json_object(*v) {
            Ok(text) => {
                good.push((i, text));
                errors.push(None);
            }
            Err(why) => errors.push(Some(why)),
        }
    }
    let mut row_of: Vec<Option<u32>> = vec![None; values.len()];
    if let Ok(batch) = decode(&lenient, good.iter().map(|(_, t)| *t), good.len())
        && batch.num_rows() == good.len()
        && required_missing(declared, &batch).is_none()
    {
        for (row, (i, _)) in good.iter().enumerate() {
            row_of[*i] = Some(row as u32);
        }
        return Ok(Parsed {
            decoded: batch,
            row_of,
            errors,
        });
    }
    let mut parts = Vec::new();
    for (i, text) in good {
        let one = decode(&lenient, std::iter::once(text), 1)
            .map_err(|e| clean_arrow(&e.to_string()))
            .and_then(|b| match b.num_rows() {
                1 => match required_missing(declared, &b) {
                    Some(field) => Err(format!("required field {field} is missing or null")),
                    None => Ok(b),
                },
                _ => Err("the value is not one JSON object".to_string()),
            });
        match one {
            Ok(b) => {
                row_of[i] = Some(parts.len() as u32);
                parts.push(b);
            }
            Err(why) => errors[i] = Some(why),
        }
    }
    let decoded = arrow::compute::concat_batches(&lenient, &parts)?;
    Ok(Parsed {
        decoded,
        row_of,
        errors,
    })
}

/// The value as text, when it is one JSON object.
fn json_object(value: Option<&[u8]>) -> std::result::Result<&str, String> {
    let Some(value) = value else {
        return Err("the record has no value".into());
    };
    let text = std::str::from_utf8(value).map_err(|_| "the value is not UTF-8 text".to_string())?;
    match serde_json::from_str::<serde::de::IgnoredAny>(text) {
        Ok(_) if text.trim_start().starts_with('{') => Ok(text),
        Ok(_) => Err("the value is JSON but not an object".into()),
        Err(e) => Err(format!("the value is not JSON: {e}")),
    }
}

/// `texts` (JSON objects) decoded into `schema`, in one batch.
fn decode<'a>(
    schema: &SchemaRef,
    texts: impl Iterator<Item = &'a str>,
    rows: usize,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(rows.max(1))
        .build_decoder()?;
    for text in texts {
        decoder.decode(text.as_bytes())?;
        decoder.decode(b"\n")?;
    }
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(schema))))
}

/// The first declared `NOT NULL` column with a null in `batch`.
fn required_missing<'a>(declared: &'a SchemaRef, batch: &RecordBatch) -> Option<&'a str> {
    declared
        .fields()
        .iter()
        .enumerate()
        .find(|(i, f)| !f.is_nullable() && batch.column(*i).null_count() > 0)
        .map(|(_, f)| f.name().as_str())
}

fn clean_arrow(text: &str) -> String {
    text.trim_start_matches("Json error: ")
        .trim_start_matches("Parser error: ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch's offsets bound its rows: an estimate the planner sizes a
    /// skew-aware write's reduce tasks by.
    #[test]
    fn a_batch_estimates_its_rows_from_its_offsets() -> Result<()> {
        use datafusion::physical_plan::StatisticsContext;
        let ranges = vec![
            KafkaRange {
                partition: 0,
                start: 0,
                end: 20_000,
            },
            KafkaRange {
                partition: 1,
                start: 500,
                end: 5_500,
            },
        ];
        let scan = KafkaScanExec::of(KafkaSpec {
            location: KafkaLocation::parse("kafka://127.0.0.1:9092/t")?,
            options: KafkaOptions::parse(&HashMap::new())?,
            declared: vec![],
            ranges,
        })?;
        let rows = |partition: Option<usize>| -> Result<Precision<usize>> {
            let args = StatisticsArgs::new().with_partition(partition);
            Ok(StatisticsContext::new().compute(&scan, &args)?.num_rows)
        };
        assert_eq!(rows(None)?, Precision::Inexact(25_000));
        assert_eq!(rows(Some(1))?, Precision::Inexact(5_000));
        // Never small enough in bytes to be broadcast as a join's build side.
        let bytes = StatisticsContext::new()
            .compute(&scan, &StatisticsArgs::new())?
            .total_byte_size;
        assert_eq!(bytes, Precision::Inexact(25_000 << 20));
        Ok(())
    }

    #[test]
    fn locations_and_options_parse_and_bad_ones_say_why() -> Result<()> {
        let l = KafkaLocation::parse("kafka://a:9092,b:9093/events/")?;
        assert_eq!(l.brokers, ["a:9092", "b:9093"]);
        assert_eq!(l.topic, "events");
        assert_eq!(l.url(), "kafka://a:9092,b:9093/events");
        for (bad, why) in [
            ("s3://x/y", "not a kafka:// URL"),
            ("kafka://a:1", "no topic"),
            ("kafka://a:1/x/y", "one path segment"),
            ("kafka://a/x", "host:port"),
            ("kafka://u:p@a:1/x", "credentials"),
        ] {
            let err = KafkaLocation::parse(bad).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(why)),
                "{bad}: {err:?}"
            );
        }
        let o = KafkaOptions::parse(&HashMap::from([
            ("format.starting_offsets".to_string(), "latest".to_string()),
            ("max_records_per_batch".to_string(), "10".to_string()),
        ]))?;
        assert_eq!(o.starting_offsets, StartingOffsets::Latest);
        assert_eq!(o.max_records_per_batch, 10);
        let t = KafkaOptions::parse(&HashMap::from([(
            "starting_offsets".to_string(),
            "2026-11-25T10:00:00Z".to_string(),
        )]))?;
        assert_eq!(
            t.starting_offsets,
            StartingOffsets::Timestamp(1_795_600_800_000)
        );
        for (k, v, why) in [
            ("max_records_per_batch", "0", "at least 1"),
            ("max_records_per_batch", "many", "must be a number"),
            (
                "starting_offsets",
                "soon",
                "earliest, latest or an RFC 3339 time",
            ),
            ("group_id", "g", "unknown Kafka option group_id"),
            ("request_timeout_ms", "5", "between 100 and 600000, got 5"),
            ("request_timeout_ms", "soon", "must be a number"),
        ] {
            let err = KafkaOptions::parse(&HashMap::from([(k.to_string(), v.to_string())]))
                .err()
                .map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(why)),
                "{k}: {err:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn values_parse_into_declared_columns_or_say_why_not() -> Result<()> {
        let declared = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let ok = parse_values(&declared, &[Some(br#"{"id": 7, "name": "a", "extra": 1}"#)])?;
        assert_eq!(ok.decoded.num_rows(), 1);
        assert_eq!(ok.errors, [None]);
        let cases: [(Option<&[u8]>, &str); 6] = [
            (Some(b"nope"), "not JSON"),
            (Some(b"[1]"), "not an object"),
            (Some(br#"{"name": "a"}"#), "required field id"),
            (Some(br#"{"id": "x"}"#), "id"),
            (Some(b"\xff"), "not UTF-8"),
            (None, "no value"),
        ];
        for (value, why) in cases {
            let one = parse_values(&declared, &[value])?;
            let err = one.errors[0].clone().unwrap_or_default();
            assert!(err.contains(why), "{value:?}: {err}");
        }
        // Good and bad mixed: the good rows keep their values, in order,
        // and each bad one is named.
        let values: Vec<Option<&[u8]>> = vec![
            Some(br#"{"id": 1}"#),
            Some(br#"{"id": "x"}"#),
            Some(br#"{"id": 3, "name": "c"}"#),
            Some(b"{"),
            Some(br#"{"id": 5}"#),
        ];
        let mixed = parse_values(&declared, &values)?;
        assert_eq!(mixed.row_of, [Some(0), None, Some(1), None, Some(2)]);
        let ids = mixed.decoded.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), [1, 3, 5]);
        assert!(mixed.errors[1].is_some() && mixed.errors[3].is_some());
        assert_eq!(mixed.errors.iter().flatten().count(), 2);
        Ok(())
    }
}
