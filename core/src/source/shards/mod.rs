//! Sharded change streams as tables: a DynamoDB table's stream
//! (`STORED AS DYNAMODB_STREAM LOCATION 'dynamodb://<table>'`) and Kinesis
//! Data Streams (`STORED AS KINESIS LOCATION 'kinesis://<stream>'`).
//!
//! Columns of a change stream (DynamoDB Streams, or Kinesis with
//! `format 'dynamodb'`, DynamoDB's Kinesis streaming destination):
//! `event_name` (INSERT, MODIFY, REMOVE), `keys`, `new_image`, `old_image`
//! (plain JSON text), `approximate_creation_time`, `sequence_number`,
//! `shard_id`, `data_text` (a Kinesis record that is not a change, as it
//! came; else null). Of a raw Kinesis stream: `data` (bytes), `data_text`, `partition_key`,
//! `sequence_number`, `arrival_time`, `shard_id`. Then the declared columns,
//! parsed as JSON from the new image (the old one for a REMOVE) or from a
//! raw record's data, and `_error`, why that failed.
//!
//! A stream's batch reads ranges `(shard, first, last, count)` that the
//! client found when it planned the batch (`stream::shards`): one scan
//! partition per range, read on the executor from an iterator at `first`
//! up to `last`, and checked to hold exactly `count` records. Iterators
//! never outlive a read; only sequence numbers are kept.

pub mod api;
mod binary;
pub mod dynamodb;
pub mod kinesis;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, BinaryBuilder, RecordBatch, StringBuilder, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::{DataFusionError, Result, plan_err};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::CreateExternalTable;
use datafusion::physical_plan::ExecutionPlan;
use serde::{Deserialize, Serialize};

use self::api::{ApiError, At, Body, Change, Failure, Retry, ShardApi, ShardRecord};
use crate::source::kafka::{Declared, parse_values};

/// The `STORED AS` names.
pub const DYNAMODB_STREAM: &str = "DYNAMODB_STREAM";
pub const KINESIS: &str = "KINESIS";
/// Rows per output batch.
const BATCH_ROWS: usize = 8192;
/// The bounds of `request_timeout_ms`.
const TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=600_000;
/// Empty pages a range read waits through (200 ms apart) before it fails:
/// a shard can answer empty while records are further on.
const MAX_EMPTY_PAGES: u32 = 50;
/// Expired iterators a read renews at most in a row (without a page read
/// in between); each renewal waits longer (100 ms doubling).
pub(crate) const MAX_RENEWALS: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    DynamodbStream,
    Kinesis,
}

impl Kind {
    pub fn from_stored_as(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            DYNAMODB_STREAM => Some(Self::DynamodbStream),
            KINESIS => Some(Self::Kinesis),
            _ => None,
        }
    }

    fn scheme(self) -> &'static str {
        match self {
            Self::DynamodbStream => "dynamodb",
            Self::Kinesis => "kinesis",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::DynamodbStream => "DynamoDB stream",
            Self::Kinesis => "Kinesis stream",
        }
    }
}

/// `dynamodb://<table>` or `kinesis://<stream>`: the name.
pub fn parse_location(kind: Kind, raw: &str) -> Result<String> {
    let scheme = kind.scheme();
    let bad = |why: &str| {
        DataFusionError::Plan(format!(
            "{} location '{raw}': {why} (expected {scheme}://<name>)",
            kind.what()
        ))
    };
    let name = raw
        .strip_prefix(&format!("{scheme}://"))
        .ok_or_else(|| bad(&format!("not a {scheme}:// URL")))?
        .trim_end_matches('/');
    if name.contains('@') {
        return Err(bad("credentials do not belong in the URL"));
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || "_-.".contains(c);
    if name.is_empty() || name.len() > 255 || !name.chars().all(valid) {
        return Err(bad(
            "the name must be 1 to 255 letters, digits, '_', '-' or '.'",
        ));
    }
    Ok(name.to_string())
}

/// Where a stream with no position starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartingPosition {
    TrimHorizon,
    Latest,
}

/// What a Kinesis record's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordFormat {
    /// Bytes, and declared columns parsed from them as JSON.
    Raw,
    /// DynamoDB change records (the Kinesis streaming destination's JSON).
    Dynamodb,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardOptions {
    pub starting_position: StartingPosition,
    pub max_records_per_batch: u64,
    pub max_bad_records: u64,
    /// Records of a batch the job's SQL fails on alone that may be read as
    /// bad records (`stream::isolate`); past it (by default, 0) the run ends
    /// naming them.
    #[serde(default)]
    pub max_failing_records: u64,
    /// Records of a batch that may be neither written nor dead-lettered
    /// (`stream::info::unaccounted`); `None`: not checked.
    #[serde(default)]
    pub max_filtered_records: Option<u64>,
    /// One call's timeout; a call and its retries end within three.
    pub request_timeout_ms: u64,
    pub format: RecordFormat,
    /// DynamoDB Streams: the first batch is a scan of the table, and the
    /// stream's records from just before the scan follow.
    #[serde(default)]
    pub snapshot: bool,
    /// Parallel segments of that scan.
    #[serde(default = "default_snapshot_segments")]
    pub snapshot_segments: u32,
    /// What a position the stream no longer keeps does.
    #[serde(default)]
    pub on_trimmed: OnTrimmed,
    /// The snapshot scan's `read.*` options (`read.percent`,
    /// `read.max_units`, `read.call_timeout_ms`, `read.max_retry_secs`), as
    /// a `STORED AS DYNAMODB` table takes them; always strongly consistent.
    #[serde(default)]
    pub snapshot_read: crate::source::dynamodb::ScanOptions,
}

/// What a change stream does when records it had not read were trimmed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnTrimmed {
    /// The batch fails, saying how much was lost.
    #[default]
    Fail,
    /// The next batch scans the table again (a snapshot), and the stream
    /// goes on from its newest records.
    Snapshot,
}

fn default_snapshot_segments() -> u32 {
    4
}

impl Default for ShardOptions {
    fn default() -> Self {
        Self {
            starting_position: StartingPosition::TrimHorizon,
            max_records_per_batch: 100_000,
            max_bad_records: 0,
            max_failing_records: 0,
            max_filtered_records: None,
            request_timeout_ms: 30_000,
            format: RecordFormat::Raw,
            snapshot: false,
            snapshot_segments: default_snapshot_segments(),
            on_trimmed: OnTrimmed::Fail,
            snapshot_read: crate::source::dynamodb::ScanOptions {
                consistent: true,
                ..Default::default()
            },
        }
    }
}

impl ShardOptions {
    /// From `OPTIONS (...)`: `starting_position` (`trim_horizon`,
    /// `latest`), `max_records_per_batch`, `max_bad_records`,
    /// `max_failing_records`, `request_timeout_ms`, and for Kinesis
    /// `format` (`raw`, `dynamodb`).
    pub fn parse(kind: Kind, options: &HashMap<String, String>) -> Result<Self> {
        let mut out = Self {
            format: match kind {
                Kind::DynamodbStream => RecordFormat::Dynamodb,
                Kind::Kinesis => RecordFormat::Raw,
            },
            ..Self::default()
        };
        let what = kind.what();
        let mut read: HashMap<String, String> = HashMap::new();
        for (raw_key, value) in options {
            if kind == Kind::DynamodbStream
                && crate::source::dynamodb::ScanOptions::is_read_option(raw_key)
            {
                read.insert(raw_key.to_ascii_lowercase(), value.clone());
                continue;
            }
            let key = raw_key
                .trim_start_matches("format.")
                .to_ascii_lowercase()
                .replace('.', "_");
            let number = |v: &str| {
                v.trim().parse::<u64>().map_err(|_| {
                    DataFusionError::Plan(format!(
                        "{what} option {raw_key} must be a number, got '{v}'"
                    ))
                })
            };
            match key.as_str() {
                "starting_position" => {
                    out.starting_position = match value.trim().to_ascii_lowercase().as_str() {
                        "trim_horizon" | "earliest" => StartingPosition::TrimHorizon,
                        "latest" => StartingPosition::Latest,
                        _ => {
                            return plan_err!(
                                "{what} option starting_position must be trim_horizon or latest, got '{value}'"
                            );
                        }
                    }
                }
                "max_records_per_batch" => {
                    out.max_records_per_batch = number(value)?;
                    if out.max_records_per_batch == 0 {
                        return plan_err!("{what} option max_records_per_batch must be at least 1");
                    }
                }
                "max_bad_records" => out.max_bad_records = number(value)?,
                "max_failing_records" => out.max_failing_records = number(value)?,
                "max_filtered_records" => out.max_filtered_records = Some(number(value)?),
                "request_timeout_ms" => {
                    out.request_timeout_ms = number(value)?;
                    if !TIMEOUT_MS.contains(&out.request_timeout_ms) {
                        return plan_err!(
                            "{what} option request_timeout_ms must be between {} and {}, got {value}",
                            TIMEOUT_MS.start(),
                            TIMEOUT_MS.end()
                        );
                    }
                }
                "snapshot" if kind == Kind::DynamodbStream => {
                    out.snapshot = match value.trim().to_ascii_lowercase().as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return plan_err!(
                                "{what} option snapshot must be true or false, got '{value}'"
                            );
                        }
                    }
                }
                "snapshot_segments" if kind == Kind::DynamodbStream => {
                    let n = number(value)?;
                    if !(1..=u64::from(crate::source::dynamodb::MAX_SEGMENTS)).contains(&n) {
                        return plan_err!(
                            "{what} option snapshot_segments must be from 1 to {}, got {value}",
                            crate::source::dynamodb::MAX_SEGMENTS
                        );
                    }
                    out.snapshot_segments = n as u32;
                }
                "on_trimmed" if kind == Kind::DynamodbStream => {
                    out.on_trimmed = match value.trim().to_ascii_lowercase().as_str() {
                        "fail" => OnTrimmed::Fail,
                        "snapshot" => OnTrimmed::Snapshot,
                        _ => {
                            return plan_err!(
                                "{what} option on_trimmed must be fail or snapshot, got '{value}'"
                            );
                        }
                    }
                }
                "format" if kind == Kind::Kinesis => {
                    out.format = match value.trim().to_ascii_lowercase().as_str() {
                        "raw" => RecordFormat::Raw,
                        "dynamodb" => RecordFormat::Dynamodb,
                        _ => {
                            return plan_err!(
                                "{what} option format must be raw or dynamodb, got '{value}'"
                            );
                        }
                    }
                }
                _ => {
                    return plan_err!(
                        "unknown {what} option {raw_key} (known: starting_position, max_records_per_batch, max_bad_records, max_failing_records, max_filtered_records, request_timeout_ms{})",
                        if kind == Kind::Kinesis {
                            ", format"
                        } else {
                            ", snapshot, snapshot_segments, on_trimmed"
                        }
                    );
                }
            }
        }
        if read
            .keys()
            .any(|k| k.ends_with(crate::source::dynamodb::SEGMENTS_OPTION))
        {
            return plan_err!(
                "{what} option read.segments: a snapshot's segments are snapshot_segments"
            );
        }
        if read.iter().any(|(k, v)| {
            k.ends_with(crate::source::dynamodb::CONSISTENT_OPTION) && v.trim() != "true"
        }) {
            return plan_err!(
                "{what} option read.consistent: a snapshot reads strongly consistent (every stream record it skips must be in what it read)"
            );
        }
        out.snapshot_read = crate::source::dynamodb::ScanOptions::parse("(the snapshot)", &read)
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        out.snapshot_read.consistent = true;
        if out.snapshot && out.starting_position == StartingPosition::Latest {
            return plan_err!(
                "{what} options snapshot and starting_position latest exclude each other: a snapshot reads the stream from just before its scan"
            );
        }
        Ok(out)
    }

    pub fn retry(&self) -> Retry {
        let attempt = Duration::from_millis(self.request_timeout_ms);
        Retry {
            deadline: attempt * 3,
            attempt,
        }
    }
}

/// Records `first..=last` of one shard, `count` of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRange {
    pub shard: String,
    pub first: String,
    pub last: String,
    pub count: u64,
}

/// What each shard table reads in one micro-batch, by location URL: the
/// stream (a DynamoDB stream's ARN, a Kinesis stream's name) and ranges.
#[derive(Debug, Default, Clone)]
pub struct BatchShards {
    pub by_location: HashMap<String, (String, Vec<ShardRange>)>,
    /// Locations whose batch includes the table's snapshot, and its segments.
    pub snapshots: HashMap<String, u32>,
    /// While the runner looks for the records a job fails on: per location,
    /// the only records read (see [`ShardSpec::window`]).
    pub windows: Option<HashMap<String, Window>>,
    /// Per location, records the job failed on, read as bad records.
    pub rejected: HashMap<String, Vec<Rejected>>,
    /// The batch's due time (ms), as its plan recorded it: a snapshot's
    /// rows' time.
    pub due_ms: Option<i64>,
}

/// Per shard, the records of its range read (by place in the range,
/// `from..to`); a shard not named reads nothing, nor does a snapshot.
pub type Window = HashMap<String, (u64, u64)>;

/// A record of a range (by its place in it) that the job's SQL failed on:
/// it comes out with `_error` set and its declared columns null, like a
/// record that did not decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub shard: String,
    pub index: u64,
    pub why: String,
}

/// What a shard table is: enough to rebuild it on the scheduler and to
/// scan it on an executor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardSpec {
    pub kind: Kind,
    /// The table's LOCATION.
    pub location: String,
    /// The DynamoDB stream's ARN or the Kinesis stream's name.
    pub stream: String,
    pub options: ShardOptions,
    pub declared: Vec<Declared>,
    pub ranges: Vec<ShardRange>,
    /// Segments of the table's snapshot this batch reads (0: none).
    #[serde(default)]
    pub snapshot_segments: u32,
    /// The snapshot's scan, once planned (on the scheduler).
    #[serde(default)]
    pub snapshot: Option<crate::source::dynamodb::ScanSpec>,
    /// Only these records are read (`None`: all of them).
    #[serde(default)]
    pub window: Option<Window>,
    #[serde(default)]
    pub rejected: Vec<Rejected>,
    /// A snapshot's rows' `approximate_creation_time` (ms): the batch's
    /// due time, recorded with its plan, so a re-run lays them out alike.
    #[serde(default)]
    pub snapshot_time_ms: Option<i64>,
}

/// The columns before the declared ones.
pub fn fixed_fields(format: RecordFormat) -> Vec<Field> {
    let time = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    match format {
        RecordFormat::Dynamodb => vec![
            Field::new("event_name", DataType::Utf8, true),
            Field::new("keys", DataType::Utf8, true),
            Field::new("new_image", DataType::Utf8, true),
            Field::new("old_image", DataType::Utf8, true),
            Field::new("approximate_creation_time", time, true),
            Field::new("sequence_number", DataType::Utf8, false),
            Field::new("shard_id", DataType::Utf8, false),
            // A Kinesis record that is not a change: its data (text, or
            // base64 where it is not UTF-8), kept for the error output.
            Field::new("data_text", DataType::Utf8, true),
        ],
        RecordFormat::Raw => vec![
            Field::new("data", DataType::Binary, false),
            // The same bytes as text; null where they are not UTF-8.
            Field::new("data_text", DataType::Utf8, true),
            Field::new("partition_key", DataType::Utf8, false),
            Field::new("sequence_number", DataType::Utf8, false),
            Field::new("arrival_time", time, false),
            Field::new("shard_id", DataType::Utf8, false),
        ],
    }
}

impl ShardSpec {
    fn declared_schema(&self) -> Result<SchemaRef> {
        Declared::schema(&self.declared)
    }

    pub fn schema(&self) -> Result<SchemaRef> {
        Declared::table_schema(fixed_fields(self.options.format), &self.declared)
    }

    pub async fn api(&self) -> Box<dyn ShardApi> {
        api(self.kind, &self.stream, self.options.retry()).await
    }
}

/// The service's client for one stream.
pub async fn api(kind: Kind, stream: &str, retry: Retry) -> Box<dyn ShardApi> {
    match kind {
        Kind::DynamodbStream => Box::new(dynamodb::StreamsApi::new(stream, retry).await),
        Kind::Kinesis => Box::new(kinesis::KinesisApi::new(stream, retry).await),
    }
}

/// A shard table for one batch (or, outside a stream, no rows).
pub type ShardTable = crate::source::SourceTable<ShardSpec>;

#[async_trait]
impl crate::source::SourceSpec for ShardSpec {
    fn table_schema(&self) -> Result<SchemaRef> {
        self.schema()
    }

    /// A snapshot's segments are planned here, on the scheduler, once.
    async fn plan_scan(&self, state: &dyn Session) -> Result<Arc<dyn ExecutionPlan>> {
        let mut spec = self.clone();
        if spec.snapshot_segments > 0 && spec.snapshot.is_none() {
            let table = parse_location(spec.kind, &spec.location)?;
            spec.snapshot = Some(
                crate::source::dynamodb::plan_snapshot(
                    state,
                    &table,
                    spec.snapshot_segments,
                    spec.options.snapshot_read.clone(),
                )
                .await?,
            );
        }
        Ok(Arc::new(ShardScanExec::try_new(spec)?))
    }
}

/// Builds shard tables from `CREATE EXTERNAL TABLE ... STORED AS
/// DYNAMODB_STREAM | KINESIS`.
#[derive(Debug)]
pub struct ShardTableFactory(pub Kind);

#[async_trait]
impl TableProviderFactory for ShardTableFactory {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let kind = self.0;
        let [location] = cmd.locations.as_slice() else {
            return plan_err!("{}: a {} table has one LOCATION", cmd.name, kind.what());
        };
        parse_location(kind, location)?;
        let options = ShardOptions::parse(kind, &cmd.options)?;
        let declared = Declared::from_command(cmd, &fixed_fields(options.format), kind.what())?;
        let batch = state.config().get_extension::<BatchShards>();
        let (stream, ranges) = batch
            .as_ref()
            .and_then(|b| b.by_location.get(location.as_str()).cloned())
            .unwrap_or_default();
        let snapshot_segments = batch
            .as_ref()
            .and_then(|b| b.snapshots.get(location.as_str()).copied())
            .unwrap_or(0);
        let window = batch.as_ref().and_then(|b| {
            let windows = b.windows.as_ref()?;
            Some(windows.get(location.as_str()).cloned().unwrap_or_default())
        });
        let rejected = batch
            .as_ref()
            .and_then(|b| b.rejected.get(location.as_str()).cloned())
            .unwrap_or_default();
        Ok(Arc::new(ShardTable::try_new(ShardSpec {
            kind,
            location: location.clone(),
            stream,
            options,
            declared,
            ranges,
            snapshot_segments,
            snapshot: None,
            window,
            rejected,
            snapshot_time_ms: batch.as_ref().and_then(|b| b.due_ms),
        })?))
    }
}

/// Reads the ranges its input names, part by part, and a snapshot's
/// segments (the parts after the ranges) page by page.
pub type ShardScanExec = crate::exec::PartScanExec<ShardSpec>;

impl crate::exec::PartRead for ShardSpec {
    const NAME: &'static str = "ShardScanExec";

    fn schema(&self) -> Result<SchemaRef> {
        ShardSpec::schema(self)
    }

    fn parts(&self) -> usize {
        self.ranges.len() + self.snapshot.as_ref().map_or(0, |s| s.parts.len())
    }

    fn describe(&self) -> String {
        format!("{} ranges of {}", self.ranges.len(), self.location)
    }

    fn read_part(
        self: Arc<Self>,
        schema: SchemaRef,
        i: usize,
        context: Arc<TaskContext>,
    ) -> futures::stream::BoxStream<'static, Result<RecordBatch>> {
        let coordinator = crate::coordinator::CoordinatorHandle::of(context.session_config());
        part_stream(&self, &schema, &coordinator, i)
    }
}

/// The batches of part `i`: a range, or a segment of the snapshot.
fn part_stream(
    spec: &Arc<ShardSpec>,
    schema: &SchemaRef,
    coordinator: &Arc<crate::coordinator::CoordinatorHandle>,
    i: usize,
) -> futures::stream::BoxStream<'static, Result<RecordBatch>> {
    use futures::StreamExt;
    let batches = |r: Result<Vec<RecordBatch>>| match r {
        Ok(batches) => futures::stream::iter(batches.into_iter().map(Ok)).boxed(),
        Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
    };
    let (spec, schema) = (Arc::clone(spec), Arc::clone(schema));
    let nothing = || futures::stream::empty().boxed();
    if let Some(range) = spec.ranges.get(i).cloned() {
        if spec.window.as_ref().is_some_and(|w| {
            w.get(&range.shard)
                .is_none_or(|(from, to)| from >= to || *from >= range.count)
        }) {
            return nothing();
        }
        let read = async move {
            let span = tracing::info_span!("shards.read_range", location = %spec.location, shard = %range.shard, records = range.count);
            tracing::Instrument::instrument(read_batches(&spec, &schema, &range), span).await
        };
        return futures::stream::once(read).map(batches).flatten().boxed();
    }
    if spec.window.is_some() {
        return nothing();
    }
    let segment = i - spec.ranges.len();
    let part = spec
        .snapshot
        .as_ref()
        .and_then(|scan| scan.parts.get(segment).cloned().map(|p| (scan.clone(), p)));
    let Some((scan, part)) = part else {
        let e = DataFusionError::Internal(format!(
            "ShardScanExec: part {i} of {} ranges and no snapshot segment {segment}",
            spec.ranges.len()
        ));
        return futures::stream::once(async move { Err(e) }).boxed();
    };
    let reader = crate::source::dynamodb::read::Reader::new(
        scan.clone(),
        part,
        segment,
        Arc::clone(coordinator),
    );
    let now = spec
        .snapshot_time_ms
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    // Bad records count over the whole segment, not page by page.
    futures::stream::try_unfold(
        (reader, 0usize, 0u64),
        move |(mut reader, seen, mut bad)| {
            let (spec, schema, scan) = (Arc::clone(&spec), Arc::clone(&schema), scan.clone());
            async move {
                let Some(page) = reader.next_page().await? else {
                    return Ok(None);
                };
                let records = snapshot_records(&scan, segment, seen, now, &page.items);
                let out = records_to_batches(&spec, &schema, "snapshot", &records, 0, &mut bad)?;
                Ok(Some((out, (reader, seen + records.len(), bad))))
            }
        },
    )
    .map(batches)
    .flatten()
    .boxed()
}

/// A page of a snapshot's items as change records: `event_name`
/// `SNAPSHOT`, the item's keys and image, the batch's due time.
fn snapshot_records(
    scan: &crate::source::dynamodb::ScanSpec,
    segment: usize,
    seen: usize,
    time_ms: i64,
    items: &[HashMap<String, aws_sdk_dynamodb::types::AttributeValue>],
) -> Vec<ShardRecord> {
    use crate::source::dynamodb::read::{Binary, item_json, keys_json};
    items
        .iter()
        .enumerate()
        .map(|(n, item)| ShardRecord {
            sequence: format!("snapshot-{segment}-{}", seen + n),
            time_ms,
            body: Body::Change(api::Change {
                event_name: SNAPSHOT_EVENT.to_string(),
                keys: keys_json(item, &scan.keys),
                new_image: Some(item_json(item, Binary::Base64)),
                old_image: None,
            }),
        })
        .collect()
}

fn shard_err(spec: &ShardSpec, shard: &str, what: impl fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!("{} shard {shard}: {what}", spec.location))
}

/// What a failed read says: a trimmed position says records were lost.
pub fn describe(e: &ApiError) -> String {
    match e.failure {
        Failure::Trimmed => format!(
            "{e}: the position is older than the stream keeps (24 hours for DynamoDB Streams, the retention period for Kinesis); the records between were lost"
        ),
        _ => e.to_string(),
    }
}

/// The `event_name` of a snapshot's rows.
pub const SNAPSHOT_EVENT: &str = "SNAPSHOT";

async fn read_batches(
    spec: &ShardSpec,
    schema: &SchemaRef,
    range: &ShardRange,
) -> Result<Vec<RecordBatch>> {
    let api = spec.api().await;
    let records = read_range(api.as_ref(), range)
        .await
        .map_err(|e| shard_err(spec, &range.shard, e))?;
    metrics::counter!("sluice_shard_records_read_total", "kind" => spec.kind.scheme())
        .increment(records.len() as u64);
    let (from, to) = match &spec.window {
        Some(w) => w.get(&range.shard).copied().unwrap_or_default(),
        None => (0, range.count),
    };
    let from = (from as usize).min(records.len());
    let to = (to as usize).clamp(from, records.len());
    records_to_batches(
        spec,
        schema,
        &range.shard,
        &records[from..to],
        from as u64,
        &mut 0,
    )
}

/// Records as rows, parsing the declared columns; fails past
/// `max_bad_records`. `offset` is the first record's place in its range.
fn records_to_batches(
    spec: &ShardSpec,
    schema: &SchemaRef,
    shard: &str,
    records: &[ShardRecord],
    offset: u64,
    bad: &mut u64,
) -> Result<Vec<RecordBatch>> {
    let declared = spec.declared_schema()?;
    let rejected: HashMap<u64, &str> = spec
        .rejected
        .iter()
        .filter(|r| r.shard == shard)
        .map(|r| (r.index, r.why.as_str()))
        .collect();
    let mut out = Vec::new();
    for (n, chunk) in records.chunks(BATCH_ROWS).enumerate() {
        let start = offset + (n * BATCH_ROWS) as u64;
        // Nothing to look up on the usual read.
        let marks: Vec<(usize, &str)> = match rejected.is_empty() {
            true => vec![],
            false => (0..chunk.len())
                .filter_map(|i| Some((i, *rejected.get(&(start + i as u64))?)))
                .collect(),
        };
        let (batch, chunk_bad) = to_batch(spec, schema, &declared, shard, chunk, &marks)?;
        // Rejected records have their own limit, `max_failing_records`,
        // counted by the runner over the batch when it picked them.
        *bad += chunk_bad.len().saturating_sub(marks.len()) as u64;
        if *bad > spec.options.max_bad_records {
            let (sequence, why) = chunk_bad.last().cloned().unwrap_or_default();
            return Err(shard_err(
                spec,
                shard,
                format!(
                    "sequence number {sequence}: {bad} bad records in this batch's range, over max_bad_records {}; the last: {why}",
                    spec.options.max_bad_records
                ),
            ));
        }
        out.push(batch);
    }
    Ok(out)
}

/// The range's records: from an iterator at `first` to `last`, exactly
/// `count` of them, renewing an iterator that expires meanwhile.
pub async fn read_range(
    api: &dyn ShardApi,
    range: &ShardRange,
) -> Result<Vec<ShardRecord>, String> {
    let mut out: Vec<ShardRecord> = Vec::with_capacity(range.count.min(100_000) as usize);
    let at = |out: &Vec<ShardRecord>| match out.last() {
        Some(r) => At::After(r.sequence.clone()),
        None => At::Sequence(range.first.clone()),
    };
    let mut iterator = api
        .iterator(&range.shard, &at(&out))
        .await
        .map_err(|e| describe(&e))?;
    let mut empty = 0u32;
    let mut renewals = 0u32;
    loop {
        let Some(it) = iterator.take() else {
            return Err(format!(
                "the shard ended after {} of the {} records planned ({}..={})",
                out.len(),
                range.count,
                range.first,
                range.last
            ));
        };
        let want = range.count.saturating_sub(out.len() as u64).clamp(1, 1000) as i32;
        let page = match api.records(&it, want).await {
            Ok(p) => {
                renewals = 0;
                p
            }
            Err(e) if e.failure == Failure::ExpiredIterator => {
                if renewals >= MAX_RENEWALS {
                    return Err(format!(
                        "{}; renewed {MAX_RENEWALS} times in a row without reading a page, after {} of the {} records planned",
                        describe(&e),
                        out.len(),
                        range.count
                    ));
                }
                // The first at once, then 100 ms doubling.
                if renewals > 0 {
                    tokio::time::sleep(Duration::from_millis(100 << (renewals - 1))).await;
                }
                renewals += 1;
                iterator = api
                    .iterator(&range.shard, &at(&out))
                    .await
                    .map_err(|e| describe(&e))?;
                continue;
            }
            Err(e) => return Err(describe(&e)),
        };
        if page.records.is_empty() {
            empty += 1;
            if empty > MAX_EMPTY_PAGES {
                return Err(format!(
                    "read {} of the {} records planned ({}..={}), then {MAX_EMPTY_PAGES} empty pages",
                    out.len(),
                    range.count,
                    range.first,
                    range.last
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        } else {
            empty = 0;
        }
        let mut past_last = false;
        for r in page.records {
            if api::compare(&r.sequence, &range.last) == std::cmp::Ordering::Greater {
                past_last = true;
                break;
            }
            out.push(r);
        }
        // Past the range's last record (or at it): done; the count check
        // below says whether anything in between went missing.
        if past_last
            || out
                .last()
                .is_some_and(|r| api::compare(&r.sequence, &range.last) != std::cmp::Ordering::Less)
        {
            break;
        }
        iterator = page.next;
    }
    if out.len() as u64 != range.count {
        return Err(format!(
            "read {} records from {} to {} where the plan counted {}",
            out.len(),
            range.first,
            range.last,
            range.count
        ));
    }
    Ok(out)
}

/// A DynamoDB number as JSON: its own text when that is a JSON number (no
/// precision lost), else through `f64`, else as a string.
pub(crate) fn number_json(n: &str) -> String {
    let t = n.trim();
    let json_number = t.starts_with(|c: char| c == '-' || c.is_ascii_digit())
        && serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok();
    if json_number {
        return t.to_string();
    }
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() => v.to_string(),
        _ => serde_json::Value::String(t.to_string()).to_string(),
    }
}

/// DynamoDB's typed JSON (`{"id": {"N": "7"}}`) as plain JSON text.
pub fn plain_json(typed: &serde_json::Value) -> Result<String, String> {
    let mut out = String::new();
    write_typed_map(typed, &mut out)?;
    Ok(out)
}

fn write_typed_map(v: &serde_json::Value, out: &mut String) -> Result<(), String> {
    let map = v.as_object().ok_or("an image is not a JSON object")?;
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    out.push('{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::String(k.clone()).to_string());
        out.push(':');
        write_typed(&map[k], out).map_err(|e| format!("attribute {k}: {e}"))?;
    }
    out.push('}');
    Ok(())
}

fn write_typed(v: &serde_json::Value, out: &mut String) -> Result<(), String> {
    let obj = v
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or("not a DynamoDB attribute value (one of S, N, B, BOOL, NULL, M, L, SS, NS, BS)")?;
    let Some((tag, inner)) = obj.iter().next() else {
        return Err("an empty attribute value".into());
    };
    let text = |v: &serde_json::Value| {
        v.as_str()
            .map(String::from)
            .ok_or(format!("{tag} is not text"))
    };
    let list = |v: &serde_json::Value| v.as_array().cloned().ok_or(format!("{tag} is not a list"));
    match tag.as_str() {
        "S" | "B" => out.push_str(&serde_json::Value::String(text(inner)?).to_string()),
        "N" => out.push_str(&number_json(&text(inner)?)),
        "BOOL" => out.push_str(if inner.as_bool().ok_or("BOOL is not true or false")? {
            "true"
        } else {
            "false"
        }),
        "NULL" => out.push_str("null"),
        "M" => write_typed_map(inner, out)?,
        "L" | "SS" | "NS" | "BS" => {
            out.push('[');
            for (i, item) in list(inner)?.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match tag.as_str() {
                    "L" => write_typed(item, out)?,
                    "NS" => out.push_str(&number_json(&text(item)?)),
                    _ => out.push_str(&serde_json::Value::String(text(item)?).to_string()),
                }
            }
            out.push(']');
        }
        other => return Err(format!("unknown attribute type {other}")),
    }
    Ok(())
}

/// A record of DynamoDB's Kinesis streaming destination: the change and
/// its approximate creation time (ms).
fn change_of(data: &[u8]) -> Result<(Change, Option<i64>), String> {
    let v: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| format!("the data is not JSON: {e}"))?;
    let event_name = v
        .get("eventName")
        .and_then(|n| n.as_str())
        .ok_or("no eventName: not a DynamoDB change record")?
        .to_string();
    let d = v
        .get("dynamodb")
        .ok_or("no dynamodb field: not a DynamoDB change record")?;
    let image = |name: &str| match d.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(i) => plain_json(i).map(Some).map_err(|e| format!("{name}: {e}")),
    };
    let time = d
        .get("ApproximateCreationDateTime")
        .and_then(|t| t.as_f64())
        .map(|t| {
            // The destination writes milliseconds (or microseconds when the
            // table asks for that precision).
            if t > 1e14 {
                (t / 1000.0) as i64
            } else {
                t as i64
            }
        });
    Ok((
        Change {
            event_name,
            keys: image("Keys")?.unwrap_or_else(|| "{}".into()),
            new_image: image("NewImage")?,
            old_image: image("OldImage")?,
        },
        time,
    ))
}

/// The image a change's declared columns come from: the new one, the old
/// one for a REMOVE, the keys with `KEYS_ONLY`.
fn image_of(c: &Change) -> &str {
    c.new_image
        .as_deref()
        .or(c.old_image.as_deref())
        .unwrap_or(&c.keys)
}

/// The records as a batch of the table's schema; the bad ones' sequence
/// numbers and reasons too. `rejected` (place in `records`, why) are bad
/// whatever they hold.
fn to_batch(
    spec: &ShardSpec,
    schema: &SchemaRef,
    declared: &SchemaRef,
    shard: &str,
    records: &[ShardRecord],
    rejected: &[(usize, &str)],
) -> Result<(RecordBatch, Vec<(String, String)>)> {
    let n = records.len();
    let mut sequences = StringBuilder::new();
    let mut shards = StringBuilder::new();
    // What the declared columns are parsed from, borrowed where it can be.
    let mut texts: Vec<Option<Cow<'_, [u8]>>> = Vec::with_capacity(n);
    let mut decode_errors: Vec<Option<String>> = vec![None; n];
    let mut columns: Vec<ArrayRef> = Vec::new();
    for r in records {
        sequences.append_value(&r.sequence);
        shards.append_value(shard);
    }
    // Images show binary as base64; declared binary columns read hex.
    let binary = binary::has_binary(declared.fields());
    match spec.options.format {
        RecordFormat::Dynamodb => {
            let mut names = StringBuilder::new();
            let mut keys = StringBuilder::new();
            let mut news = StringBuilder::new();
            let mut olds = StringBuilder::new();
            let mut times = Vec::with_capacity(n);
            let mut undecoded = StringBuilder::new();
            for (i, r) in records.iter().enumerate() {
                let decoded = match &r.body {
                    Body::Change(c) => Ok((Cow::Borrowed(c), Some(r.time_ms))),
                    Body::Data { data, .. } => change_of(data).map(|(c, t)| (Cow::Owned(c), t)),
                };
                match &r.body {
                    Body::Data { data, .. } if decoded.is_err() => {
                        match std::str::from_utf8(data) {
                            Ok(text) => undecoded.append_value(text),
                            Err(_) => {
                                undecoded.append_value(aws_smithy_types::base64::encode(data))
                            }
                        }
                    }
                    _ => undecoded.append_null(),
                }
                match decoded {
                    Ok((c, time)) => {
                        names.append_value(&c.event_name);
                        keys.append_value(&c.keys);
                        news.append_option(c.new_image.as_deref());
                        olds.append_option(c.old_image.as_deref());
                        // A change without its creation time: when it
                        // reached the stream is the nearest known.
                        times.push(time.or(Some(r.time_ms)));
                        if binary {
                            match binary::hex_binary(declared.fields(), image_of(&c)) {
                                Ok(text) => texts.push(Some(Cow::Owned(text.into_bytes()))),
                                Err(why) => {
                                    texts.push(None);
                                    decode_errors[i] = Some(why);
                                }
                            }
                        } else {
                            texts.push(Some(match c {
                                Cow::Borrowed(c) => Cow::Borrowed(image_of(c).as_bytes()),
                                Cow::Owned(c) => Cow::Owned(image_of(&c).as_bytes().to_vec()),
                            }));
                        }
                    }
                    Err(why) => {
                        names.append_null();
                        keys.append_null();
                        news.append_null();
                        olds.append_null();
                        times.push(Some(r.time_ms));
                        texts.push(None);
                        decode_errors[i] = Some(why);
                    }
                }
            }
            columns.push(Arc::new(names.finish()));
            columns.push(Arc::new(keys.finish()));
            columns.push(Arc::new(news.finish()));
            columns.push(Arc::new(olds.finish()));
            columns.push(Arc::new(
                TimestampMillisecondArray::from(times).with_timezone("UTC"),
            ));
            columns.push(Arc::new(sequences.finish()));
            columns.push(Arc::new(shards.finish()));
            columns.push(Arc::new(undecoded.finish()));
        }
        RecordFormat::Raw => {
            let mut data = BinaryBuilder::new();
            let mut keys = StringBuilder::new();
            for (i, r) in records.iter().enumerate() {
                match &r.body {
                    Body::Data {
                        data: d,
                        partition_key,
                    } => {
                        data.append_value(d);
                        keys.append_value(partition_key);
                        texts.push(Some(Cow::Borrowed(d.as_slice())));
                    }
                    Body::Change(c) => {
                        let text = image_of(c);
                        data.append_value(text.as_bytes());
                        keys.append_value(&c.keys);
                        if binary {
                            match binary::hex_binary(declared.fields(), text) {
                                Ok(hex) => texts.push(Some(Cow::Owned(hex.into_bytes()))),
                                Err(why) => {
                                    texts.push(None);
                                    decode_errors[i] = Some(why);
                                }
                            }
                        } else {
                            texts.push(Some(Cow::Borrowed(text.as_bytes())));
                        }
                    }
                }
            }
            let data: ArrayRef = Arc::new(data.finish());
            // The same buffers when every record is UTF-8 (no copy); null
            // where one is not.
            let texts = arrow::compute::cast(&data, &DataType::Utf8)?;
            columns.push(data);
            columns.push(texts);
            columns.push(Arc::new(keys.finish()));
            columns.push(Arc::new(sequences.finish()));
            columns.push(Arc::new(
                TimestampMillisecondArray::from_iter_values(records.iter().map(|r| r.time_ms))
                    .with_timezone("UTC"),
            ));
            columns.push(Arc::new(shards.finish()));
        }
    }
    for (i, why) in rejected {
        if let (Some(text), Some(error)) = (texts.get_mut(*i), decode_errors.get_mut(*i)) {
            *text = None;
            *error = Some((*why).to_string());
        }
    }
    let mut errors = StringBuilder::new();
    let mut bad = Vec::new();
    if declared.fields().is_empty() {
        for (r, why) in records.iter().zip(&decode_errors) {
            errors.append_option(why.as_deref());
            if let Some(why) = why {
                bad.push((r.sequence.clone(), why.clone()));
            }
        }
    } else {
        let values: Vec<Option<&[u8]>> = texts.iter().map(|t| t.as_deref()).collect();
        let parsed =
            parse_values(declared, &values).map_err(|e| DataFusionError::External(e.into()))?;
        for (i, r) in records.iter().enumerate() {
            let why = decode_errors[i]
                .clone()
                .or_else(|| parsed.errors[i].clone());
            match why {
                Some(why) => {
                    errors.append_value(&why);
                    bad.push((r.sequence.clone(), why));
                }
                None => errors.append_null(),
            }
        }
        let rows = arrow::array::UInt32Array::from(parsed.row_of);
        for column in parsed.decoded.columns() {
            columns.push(arrow::compute::take(column.as_ref(), &rows, None)?);
        }
    }
    columns.push(Arc::new(errors.finish()));
    Ok((RecordBatch::try_new(Arc::clone(schema), columns)?, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_and_options_parse_and_bad_ones_say_why() -> Result<()> {
        assert_eq!(
            parse_location(Kind::DynamodbStream, "dynamodb://chat/")?,
            "chat"
        );
        assert_eq!(parse_location(Kind::Kinesis, "kinesis://events")?, "events");
        for (kind, bad, why) in [
            (Kind::DynamodbStream, "kinesis://x", "not a dynamodb:// URL"),
            (Kind::Kinesis, "kinesis://", "1 to 255"),
            (Kind::Kinesis, "kinesis://a/b", "1 to 255"),
            (Kind::Kinesis, "kinesis://u:p@x", "credentials"),
        ] {
            let err = parse_location(kind, bad).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(why)),
                "{bad}: {err:?}"
            );
        }
        let both = ShardOptions::parse(
            Kind::DynamodbStream,
            &HashMap::from([
                ("snapshot".to_string(), "true".to_string()),
                ("starting_position".to_string(), "latest".to_string()),
            ]),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            both.contains("snapshot and starting_position latest exclude each other"),
            "{both}"
        );
        let o = ShardOptions::parse(
            Kind::Kinesis,
            &HashMap::from([
                ("format".to_string(), "dynamodb".to_string()),
                ("starting_position".to_string(), "latest".to_string()),
            ]),
        )?;
        assert_eq!(o.format, RecordFormat::Dynamodb);
        assert_eq!(o.starting_position, StartingPosition::Latest);
        assert_eq!(o.max_failing_records, 0);
        // A snapshot's scan takes the table's read options.
        let o = ShardOptions::parse(
            Kind::DynamodbStream,
            &HashMap::from([
                ("read.percent".to_string(), "0.25".to_string()),
                ("read.max_units".to_string(), "400".to_string()),
            ]),
        )?;
        assert_eq!(o.snapshot_read.percent, 0.25);
        assert_eq!(o.snapshot_read.max_units, Some(400.0));
        assert!(o.snapshot_read.consistent);
        for (kind, k, v, why) in [
            (
                Kind::DynamodbStream,
                "format",
                "raw",
                "unknown DynamoDB stream option format",
            ),
            (
                Kind::Kinesis,
                "starting_position",
                "soon",
                "trim_horizon or latest",
            ),
            (
                Kind::Kinesis,
                "max_failing_records",
                "some",
                "option max_failing_records must be a number, got 'some'",
            ),
            (
                Kind::DynamodbStream,
                "max_filtered_records",
                "none",
                "option max_filtered_records must be a number, got 'none'",
            ),
            (Kind::Kinesis, "max_records_per_batch", "0", "at least 1"),
            (
                Kind::DynamodbStream,
                "snapshot",
                "maybe",
                "snapshot must be true or false",
            ),
            (
                Kind::DynamodbStream,
                "snapshot_segments",
                "0",
                "must be from 1 to 10000",
            ),
            (
                Kind::DynamodbStream,
                "on_trimmed",
                "ignore",
                "must be fail or snapshot",
            ),
            (
                Kind::Kinesis,
                "snapshot",
                "true",
                "unknown Kinesis stream option snapshot",
            ),
            (
                Kind::Kinesis,
                "request_timeout_ms",
                "1",
                "between 100 and 600000",
            ),
            (
                Kind::DynamodbStream,
                "read.percent",
                "0",
                "must be in (0, 1]",
            ),
            (
                Kind::DynamodbStream,
                "read.segments",
                "8",
                "a snapshot's segments are snapshot_segments",
            ),
            (
                Kind::DynamodbStream,
                "read.consistent",
                "false",
                "a snapshot reads strongly consistent",
            ),
            (
                Kind::Kinesis,
                "read.percent",
                "0.5",
                "unknown Kinesis stream option read.percent",
            ),
        ] {
            let err = ShardOptions::parse(kind, &HashMap::from([(k.to_string(), v.to_string())]))
                .err()
                .map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(why)),
                "{k}: {err:?}"
            );
        }
        Ok(())
    }

    /// A raw Kinesis table of one declared BIGINT `n`, `max_bad_records` 1.
    fn raw_spec(rejected: Vec<Rejected>) -> ShardSpec {
        ShardSpec {
            kind: Kind::Kinesis,
            location: "kinesis://k".into(),
            stream: "k".into(),
            options: ShardOptions {
                max_bad_records: 1,
                ..Default::default()
            },
            declared: vec![Declared {
                name: "n".into(),
                data_type: DataType::Int64.to_string(),
                nullable: true,
            }],
            ranges: vec![],
            snapshot_segments: 0,
            snapshot: None,
            window: None,
            rejected,
            snapshot_time_ms: None,
        }
    }

    /// Raw Kinesis rows: the data as bytes and as text (null where it is
    /// not UTF-8), and bad records counted across the calls of one part
    /// (a snapshot segment's pages) against `max_bad_records`.
    #[test]
    fn raw_rows_carry_their_text_and_bad_records_add_up() -> Result<()> {
        use arrow::array::{Array, AsArray};
        let spec = raw_spec(vec![]);
        let schema = spec.schema()?;
        let record = |n: u8, data: &[u8]| ShardRecord {
            sequence: n.to_string(),
            time_ms: 0,
            body: Body::Data {
                data: data.to_vec(),
                partition_key: "p".into(),
            },
        };
        let mut bad = 0;
        let batches = records_to_batches(
            &spec,
            &schema,
            "s",
            &[record(1, br#"{"n": 1}"#), record(2, &[0xff, 0xfe])],
            0,
            &mut bad,
        )?;
        let texts = batches[0]
            .column_by_name("data_text")
            .map(|c| c.as_string::<i32>().clone());
        let texts = texts.ok_or_else(|| DataFusionError::Internal("no data_text".into()))?;
        assert_eq!(texts.value(0), r#"{"n": 1}"#);
        assert!(texts.is_null(1));
        // The bytes that are not JSON were one bad record; a second, in the
        // part's next page, goes over the limit of one.
        assert_eq!(bad, 1);
        let err = records_to_batches(&spec, &schema, "s", &[record(3, b"nope")], 0, &mut bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("2 bad records in this batch's range, over max_bad_records 1"),
            "{err}"
        );
        Ok(())
    }

    /// A record the job failed on (by its place in its range) reads as a
    /// bad record: `_error` says why, its declared columns are null, its
    /// data stays; it counts against `max_failing_records` (the runner's),
    /// not `max_bad_records`.
    #[test]
    fn rejected_records_read_as_bad_records_by_their_place() -> Result<()> {
        use arrow::array::{Array, AsArray};
        let spec = raw_spec(vec![
            Rejected {
                shard: "s".into(),
                index: 11,
                why: "line 4: Cast error".into(),
            },
            Rejected {
                shard: "other".into(),
                index: 10,
                why: "not this shard".into(),
            },
        ]);
        let schema = spec.schema()?;
        let records: Vec<ShardRecord> = (10..13u8)
            .map(|n| ShardRecord {
                sequence: n.to_string(),
                time_ms: 0,
                body: Body::Data {
                    data: format!(r#"{{"n": {n}}}"#).into_bytes(),
                    partition_key: "p".into(),
                },
            })
            .collect();
        // Records 10..13 of the range.
        let mut bad = 0;
        let batches = records_to_batches(&spec, &schema, "s", &records, 10, &mut bad)?;
        let batch = &batches[0];
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| DataFusionError::Internal(format!("no {name}")))
        };
        let n = column("n")?;
        let n = n.as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!((n.value(0), n.is_null(1), n.value(2)), (10, true, 12));
        let errors = column("_error")?;
        let errors = errors.as_string::<i32>();
        assert!(errors.is_null(0) && errors.is_null(2));
        assert_eq!(errors.value(1), "line 4: Cast error");
        assert_eq!(
            column("data_text")?.as_string::<i32>().value(1),
            r#"{"n": 11}"#
        );
        assert_eq!(bad, 0);
        Ok(())
    }

    #[test]
    fn destination_records_decode_to_the_change_columns() -> Result<(), String> {
        let data = br#"{"awsRegion":"us-east-1","eventID":"e1","eventName":"MODIFY","tableName":"chat","dynamodb":{"ApproximateCreationDateTime":1764100000000,"Keys":{"LivestreamID":{"S":"live-1"},"UID":{"N":"3"}},"NewImage":{"LivestreamID":{"S":"live-1"},"UID":{"N":"3"},"tags":{"SS":["a"]},"n":{"NULL":true}},"OldImage":{"LivestreamID":{"S":"live-1"},"UID":{"N":"3"}},"SizeBytes":40},"eventSource":"aws:dynamodb"}"#;
        let (c, time) = change_of(data)?;
        assert_eq!(c.event_name, "MODIFY");
        assert_eq!(c.keys, r#"{"LivestreamID":"live-1","UID":3}"#);
        assert_eq!(
            c.new_image.as_deref(),
            Some(r#"{"LivestreamID":"live-1","UID":3,"n":null,"tags":["a"]}"#)
        );
        assert_eq!(time, Some(1_764_100_000_000));
        for (bad, why) in [
            (&b"nope"[..], "not JSON"),
            (br#"{"eventName":"INSERT"}"#, "no dynamodb field"),
            (
                br#"{"eventName":"INSERT","dynamodb":{"NewImage":{"a":{"X":1}}}}"#,
                "NewImage: attribute a: unknown attribute type X",
            ),
        ] {
            let err = change_of(bad).err().unwrap_or_default();
            assert!(err.contains(why), "{err}");
        }
        assert_eq!(number_json("1.50"), "1.50");
        assert_eq!(number_json(".5"), "0.5");
        Ok(())
    }
}
