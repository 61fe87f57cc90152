//! Kinesis Data Streams as a [`ShardApi`]: shards (with both parents of a
//! merge) from `ListShards`, records' data as bytes with their partition
//! key and arrival time. The client from `aws_config` defaults, so
//! `AWS_ENDPOINT_URL_KINESIS` points it at a local server.

use async_trait::async_trait;
use aws_sdk_kinesis::types::ShardIteratorType;
use tokio::sync::OnceCell;
use tracing::Instrument;

use super::api::{ApiError, At, Body, Page, Retry, ShardApi, ShardInfo, ShardRecord, call};
use super::dynamodb::api_error;

static CLIENT: OnceCell<aws_sdk_kinesis::Client> = OnceCell::const_new();

async fn client() -> aws_sdk_kinesis::Client {
    CLIENT
        .get_or_init(|| async {
            aws_sdk_kinesis::Client::new(crate::storage::aws::sdk_config().await)
        })
        .await
        .clone()
}

/// One Kinesis stream.
pub struct KinesisApi {
    client: aws_sdk_kinesis::Client,
    stream: String,
    retry: Retry,
}

impl KinesisApi {
    pub async fn new(stream: &str, retry: Retry) -> Self {
        Self {
            client: client().await,
            stream: stream.to_string(),
            retry,
        }
    }
}

#[async_trait]
impl ShardApi for KinesisApi {
    async fn shards(&self) -> Result<Vec<ShardInfo>, ApiError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = call("ListShards", self.retry, || async {
                // With a token, the stream name must not be given again.
                let req = match &token {
                    Some(t) => self.client.list_shards().next_token(t),
                    None => self.client.list_shards().stream_name(&self.stream),
                };
                req.send()
                    .instrument(tracing::debug_span!("kinesis.list_shards"))
                    .await
                    .map_err(|e| api_error("ListShards", &e))
            })
            .await?;
            for s in page.shards() {
                out.push(ShardInfo {
                    id: s.shard_id().to_string(),
                    parents: s
                        .parent_shard_id()
                        .into_iter()
                        .chain(s.adjacent_parent_shard_id())
                        .map(String::from)
                        .collect(),
                    closed: s
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .is_some(),
                });
            }
            match page.next_token() {
                Some(t) if !page.shards().is_empty() => token = Some(t.to_string()),
                _ => break,
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
            At::Timestamp(_) => (ShardIteratorType::AtTimestamp, None),
        };
        let timestamp = match at {
            At::Timestamp(ms) => Some(aws_sdk_kinesis::primitives::DateTime::from_millis(*ms)),
            _ => None,
        };
        let out = call("GetShardIterator", self.retry, || async {
            self.client
                .get_shard_iterator()
                .stream_name(&self.stream)
                .shard_id(shard)
                .shard_iterator_type(kind.clone())
                .set_starting_sequence_number(sequence.clone())
                .set_timestamp(timestamp)
                .send()
                .instrument(tracing::debug_span!("kinesis.get_shard_iterator", shard))
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
                .limit(limit.clamp(1, 10_000))
                .send()
                .instrument(tracing::debug_span!("kinesis.get_records"))
                .await
                .map_err(|e| api_error("GetRecords", &e))
        })
        .await?;
        let records = out
            .records()
            .iter()
            .map(|r| ShardRecord {
                sequence: r.sequence_number().to_string(),
                time_ms: r
                    .approximate_arrival_timestamp()
                    .and_then(|t| t.to_millis().ok())
                    .unwrap_or(0),
                body: Body::Data {
                    data: r.data().as_ref().to_vec(),
                    partition_key: r.partition_key().to_string(),
                },
            })
            .collect();
        Ok(Page {
            records,
            next: out.next_shard_iterator().map(String::from),
            behind_ms: out.millis_behind_latest(),
        })
    }
}
