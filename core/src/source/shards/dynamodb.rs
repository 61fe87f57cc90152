//! DynamoDB Streams as a [`ShardApi`]: the table's stream ARN from
//! `DescribeTable`, shards from `DescribeStream` (paged, at most 10 calls a
//! second as the service allows), records with images turned into plain
//! JSON. Clients from `aws_config` defaults, so
//! `AWS_ENDPOINT_URL_DYNAMODB_STREAMS` points them at DynamoDB Local.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodbstreams::types::{AttributeValue, OperationType, ShardIteratorType};
use tokio::sync::{Mutex, OnceCell};
use tracing::Instrument;

use super::api::{
    ApiError, At, Body, Change, Failure, Page, Retry, ShardApi, ShardInfo, ShardRecord, call,
};

static CLIENT: OnceCell<aws_sdk_dynamodbstreams::Client> = OnceCell::const_new();

/// `DescribeStream` allows 10 calls a second per account and region.
const DESCRIBE_EVERY: Duration = Duration::from_millis(100);
static LAST_DESCRIBE: Mutex<Option<tokio::time::Instant>> = Mutex::const_new(None);

async fn client() -> aws_sdk_dynamodbstreams::Client {
    CLIENT
        .get_or_init(|| async {
            aws_sdk_dynamodbstreams::Client::new(crate::storage::aws::sdk_config().await)
        })
        .await
        .clone()
}

/// How a DynamoDB (Streams) or Kinesis error is treated: as the sink
/// classifies DynamoDB's (missing credentials are final, not retried),
/// plus the two codes only streams have.
pub(super) fn classify<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Failure {
    use crate::storage::dynamodb::Failure as Sink;
    match err.code() {
        Some("ExpiredIteratorException") => return Failure::ExpiredIterator,
        Some("TrimmedDataAccessException") => return Failure::Trimmed,
        Some("ResourceNotFoundException") => return Failure::Gone,
        Some("KMSThrottlingException") => return Failure::Throttled,
        _ => {}
    }
    match crate::storage::dynamodb::classify(err) {
        Sink::Throttled => Failure::Throttled,
        Sink::Transient => Failure::Transient,
        Sink::Invalid | Sink::Fatal => Failure::Fatal,
    }
}

pub(super) fn api_error<E, R>(call: &'static str, err: &SdkError<E, R>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    ApiError {
        call,
        failure: classify(err),
        message: crate::storage::dynamodb::describe_error(err),
    }
}

/// A table's stream as `DescribeTable` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStream {
    pub arn: String,
    /// `KEYS_ONLY`, `NEW_IMAGE`, `OLD_IMAGE` or `NEW_AND_OLD_IMAGES`.
    pub view_type: Option<String>,
    /// The table's key attributes.
    pub keys: Vec<String>,
}

impl TableStream {
    /// Why `declared` columns cannot be read from this stream: with
    /// `KEYS_ONLY` every column but the keys would be null in every row,
    /// a loss nothing else would show.
    pub fn refuses(&self, table: &str, declared: &[String]) -> Option<String> {
        if self.view_type.as_deref() != Some("KEYS_ONLY") {
            return None;
        }
        let missing: Vec<&str> = declared
            .iter()
            .filter(|c| !self.keys.contains(c))
            .map(String::as_str)
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "table {table}'s stream carries only its keys (StreamViewType KEYS_ONLY): the declared column(s) {} would be null in every row; give the table a stream with NEW_AND_OLD_IMAGES (or NEW_IMAGE), or declare only its keys ({})",
                missing.join(", "),
                self.keys.join(", ")
            )
        })
    }

    /// A caution for a view that leaves some events' columns null.
    pub fn caution(&self) -> Option<&'static str> {
        match self.view_type.as_deref() {
            Some("OLD_IMAGE") => Some(
                "the stream carries old images only (StreamViewType OLD_IMAGE): an INSERT's declared columns other than the keys are null, and a MODIFY's hold the values from before it",
            ),
            Some("NEW_IMAGE") => Some(
                "the stream carries new images only (StreamViewType NEW_IMAGE): a REMOVE's declared columns other than the keys are null",
            ),
            _ => None,
        }
    }
}

/// The stream of `table`: its ARN, view and keys, or why there is none.
pub async fn stream_arn(table: &str, retry: Retry) -> Result<TableStream, ApiError> {
    let ddb = crate::storage::dynamodb::client().await;
    let described = call("DescribeTable", retry, || async {
        ddb.describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| api_error("DescribeTable", &e))
    })
    .await?;
    let t = described.table();
    let spec = t.and_then(|t| t.stream_specification());
    let enabled = spec.map(|s| s.stream_enabled()).unwrap_or(false);
    match t.and_then(|t| t.latest_stream_arn()) {
        Some(arn) if enabled => Ok(TableStream {
            arn: arn.to_string(),
            view_type: spec
                .and_then(|s| s.stream_view_type())
                .map(|v| v.as_str().to_string()),
            keys: t
                .map(|t| {
                    t.key_schema()
                        .iter()
                        .map(|k| k.attribute_name().to_string())
                        .collect()
                })
                .unwrap_or_default(),
        }),
        _ => Err(ApiError {
            call: "DescribeTable",
            failure: Failure::Gone,
            message: format!(
                "table {table} has no stream enabled: turn it on with StreamSpecification (StreamEnabled, StreamViewType NEW_AND_OLD_IMAGES)"
            ),
        }),
    }
}

/// Waits until `every` after the last call `last` let through (callers
/// queue on the lock), and records this one.
async fn pace(last: &Mutex<Option<tokio::time::Instant>>, every: Duration) {
    let mut last = last.lock().await;
    if let Some(at) = *last {
        tokio::time::sleep_until(at + every).await;
    }
    *last = Some(tokio::time::Instant::now());
}

/// One table's stream.
pub struct StreamsApi {
    client: aws_sdk_dynamodbstreams::Client,
    arn: String,
    retry: Retry,
}

impl StreamsApi {
    pub async fn new(arn: &str, retry: Retry) -> Self {
        Self {
            client: client().await,
            arn: arn.to_string(),
            retry,
        }
    }
}

#[async_trait]
impl ShardApi for StreamsApi {
    async fn shards(&self) -> Result<Vec<ShardInfo>, ApiError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = call("DescribeStream", self.retry, || async {
                // Paced per call, retries included: DescribeStream allows
                // 10 calls a second per account.
                pace(&LAST_DESCRIBE, DESCRIBE_EVERY).await;
                self.client
                    .describe_stream()
                    .stream_arn(&self.arn)
                    .set_exclusive_start_shard_id(after.clone())
                    .send()
                    .instrument(tracing::debug_span!("dynamodbstreams.describe_stream"))
                    .await
                    .map_err(|e| api_error("DescribeStream", &e))
            })
            .await?;
            let Some(d) = page.stream_description() else {
                break;
            };
            for s in d.shards() {
                let Some(id) = s.shard_id() else { continue };
                out.push(ShardInfo {
                    id: id.to_string(),
                    parents: s.parent_shard_id().map(String::from).into_iter().collect(),
                    closed: s
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .is_some(),
                });
            }
            match d.last_evaluated_shard_id() {
                Some(last) => after = Some(last.to_string()),
                None => break,
            }
        }
        Ok(out)
    }

    async fn iterator(&self, shard: &str, at: &At) -> Result<Option<String>, ApiError> {
        let (kind, sequence) = match at {
            At::TrimHorizon => (ShardIteratorType::TrimHorizon, None),
            At::Latest => (ShardIteratorType::Latest, None),
            At::Sequence(s) => (ShardIteratorType::AtSequenceNumber, Some(s.clone())),
            At::After(s) => (ShardIteratorType::AfterSequenceNumber, Some(s.clone())),
            // DynamoDB Streams has no iterator by time: the reader starts at
            // the trim horizon and skips what was created earlier (see
            // `stream::shards`).
            At::Timestamp(_) => (ShardIteratorType::TrimHorizon, None),
        };
        let out = call("GetShardIterator", self.retry, || async {
            self.client
                .get_shard_iterator()
                .stream_arn(&self.arn)
                .shard_id(shard)
                .shard_iterator_type(kind.clone())
                .set_sequence_number(sequence.clone())
                .send()
                .instrument(tracing::debug_span!(
                    "dynamodbstreams.get_shard_iterator",
                    shard
                ))
                .await
                .map_err(|e| api_error("GetShardIterator", &e))
        })
        .await?;
        Ok(out.shard_iterator().map(String::from))
    }

    async fn records(&self, iterator: &str, limit: i32) -> Result<Page, ApiError> {
        let out = call("GetRecords", self.retry, || async {
            self.client
                .get_records()
                .shard_iterator(iterator)
                .limit(limit.clamp(1, 1000))
                .send()
                .instrument(tracing::debug_span!("dynamodbstreams.get_records"))
                .await
                .map_err(|e| api_error("GetRecords", &e))
        })
        .await?;
        let mut records = Vec::with_capacity(out.records().len());
        for r in out.records() {
            let Some(d) = r.dynamodb() else { continue };
            let Some(sequence) = d.sequence_number() else {
                continue;
            };
            let event_name = match r.event_name() {
                Some(OperationType::Insert) => "INSERT",
                Some(OperationType::Modify) => "MODIFY",
                Some(OperationType::Remove) => "REMOVE",
                _ => "UNKNOWN",
            };
            records.push(ShardRecord {
                sequence: sequence.to_string(),
                time_ms: d
                    .approximate_creation_date_time()
                    .and_then(|t| t.to_millis().ok())
                    .unwrap_or(0),
                body: Body::Change(Change {
                    event_name: event_name.to_string(),
                    keys: d.keys().map(image_json).unwrap_or_else(|| "{}".into()),
                    new_image: d.new_image().map(image_json),
                    old_image: d.old_image().map(image_json),
                }),
            });
        }
        Ok(Page {
            records,
            next: out.next_shard_iterator().map(String::from),
            behind_ms: None,
        })
    }
}

/// An image as a plain JSON object: numbers as JSON numbers (their text
/// kept, so no precision is lost), binary as base64, sets as arrays.
pub fn image_json(image: &HashMap<String, AttributeValue>) -> String {
    let mut out = String::new();
    write_map(image, &mut out);
    out
}

fn write_map(map: &HashMap<String, AttributeValue>, out: &mut String) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    out.push('{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::String(k.clone()).to_string());
        out.push(':');
        if let Some(v) = map.get(k) {
            write_value(v, out);
        }
    }
    out.push('}');
}

fn write_value(v: &AttributeValue, out: &mut String) {
    let string = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let base64 = |b: &aws_smithy_types::Blob| string(&aws_smithy_types::base64::encode(b.as_ref()));
    match v {
        AttributeValue::S(s) => out.push_str(&string(s)),
        AttributeValue::N(n) => out.push_str(&super::number_json(n)),
        AttributeValue::B(b) => out.push_str(&base64(b)),
        AttributeValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        AttributeValue::Null(_) => out.push_str("null"),
        AttributeValue::M(m) => write_map(m, out),
        AttributeValue::L(l) => {
            out.push('[');
            for (i, v) in l.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(v, out);
            }
            out.push(']');
        }
        AttributeValue::Ss(s) => {
            out.push_str(&serde_json::Value::from(s.clone()).to_string());
        }
        AttributeValue::Ns(n) => {
            out.push('[');
            out.push_str(
                &n.iter()
                    .map(|n| super::number_json(n))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            out.push(']');
        }
        AttributeValue::Bs(b) => {
            out.push('[');
            out.push_str(&b.iter().map(base64).collect::<Vec<_>>().join(","));
            out.push(']');
        }
        _ => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(view: &str) -> TableStream {
        TableStream {
            arn: "arn".into(),
            view_type: Some(view.into()),
            keys: vec!["LivestreamID".into(), "UID".into()],
        }
    }

    #[tokio::test]
    async fn describe_calls_are_paced_even_when_they_queue_at_once() {
        let last = Mutex::const_new(None);
        let start = tokio::time::Instant::now();
        // Five callers at once, as several sources planning together.
        futures::future::join_all((0..5).map(|_| pace(&last, DESCRIBE_EVERY))).await;
        // The first goes at once, each other 100 ms after the one before.
        let took = start.elapsed();
        assert!(took >= DESCRIBE_EVERY * 4, "{took:?}");
    }

    #[test]
    fn a_keys_only_stream_refuses_columns_beyond_the_keys() {
        let declared = vec!["LivestreamID".to_string(), "message".to_string()];
        let why = stream("KEYS_ONLY").refuses("chat", &declared).unwrap();
        assert!(
            why.contains("table chat's stream carries only its keys"),
            "{why}"
        );
        assert!(why.contains("column(s) message would be null"), "{why}");
        assert!(why.contains("(LivestreamID, UID)"), "{why}");
        let keys = vec!["UID".to_string()];
        assert_eq!(stream("KEYS_ONLY").refuses("chat", &keys), None);
        assert_eq!(
            stream("NEW_AND_OLD_IMAGES").refuses("chat", &declared),
            None
        );
        assert_eq!(stream("NEW_IMAGE").refuses("chat", &declared), None);
        assert!(stream("OLD_IMAGE").caution().unwrap().contains("INSERT"));
        assert_eq!(stream("NEW_AND_OLD_IMAGES").caution(), None);
    }

    #[test]
    fn images_become_plain_json() -> Result<(), serde_json::Error> {
        let image = HashMap::from([
            (
                "LivestreamID".to_string(),
                AttributeValue::S("live-1".into()),
            ),
            ("UID".to_string(), AttributeValue::N("12".into())),
            (
                "big".to_string(),
                AttributeValue::N("123456789012345678901234567890".into()),
            ),
            (
                "tags".to_string(),
                AttributeValue::Ss(vec!["a".into(), "b\"".into()]),
            ),
            (
                "m".to_string(),
                AttributeValue::M(HashMap::from([(
                    "x".to_string(),
                    AttributeValue::L(vec![AttributeValue::Bool(true), AttributeValue::Null(true)]),
                )])),
            ),
        ]);
        let text = image_json(&image);
        assert!(
            text.contains(r#""big":123456789012345678901234567890"#),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text)?;
        assert_eq!(v["LivestreamID"], "live-1");
        assert_eq!(v["UID"], 12);
        assert_eq!(v["tags"][1], "b\"");
        assert_eq!(v["m"]["x"][0], true);
        assert!(v["m"]["x"][1].is_null());
        Ok(())
    }
}
