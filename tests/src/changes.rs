//! Change streams for tests: a chat table with a DynamoDB stream and a
//! loader that writes it as the seed's pipeline did (`BatchWriteItem`, 25
//! items a request, 10 LivestreamIDs), then modifies and removes some
//! items; Kinesis streams on kinesalite, with records put and shards split. Real
//! SDK calls against the servers `scripts/test-servers.sh` starts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ScalarAttributeType, StreamSpecification, StreamViewType, WriteRequest,
};

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A fresh on-demand chat table (`LivestreamID` S, `UID` N), its stream
/// on with `view` (`NEW_AND_OLD_IMAGES`, `KEYS_ONLY`...) or off (`None`).
pub fn create_chat_table(hint: &str, view: Option<StreamViewType>) -> Result<String> {
    let name = format!("{hint}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    runtime()?.block_on(async {
        let client = dynamodb().await;
        let mut create = client
            .create_table()
            .table_name(&name)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("LivestreamID")
                    .key_type(KeyType::Hash)
                    .build()?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("UID")
                    .key_type(KeyType::Range)
                    .build()?,
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("LivestreamID")
                    .attribute_type(ScalarAttributeType::S)
                    .build()?,
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("UID")
                    .attribute_type(ScalarAttributeType::N)
                    .build()?,
            );
        if let Some(view) = view {
            create = create.stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(view)
                    .build()?,
            );
        }
        create.send().await.context("CreateTable")?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(name)
}

/// The LivestreamID of chat item `uid`: 10 ids, `live-0`..`live-9`.
pub fn livestream_of(uid: u64) -> String {
    format!("live-{}", uid % 10)
}

/// Writes chat items `from..to` (`UID` = the number) at about `per_sec`
/// items a second, 25 to a `BatchWriteItem`, retrying unprocessed items.
pub fn load_chat(table: &str, from: u64, to: u64, per_sec: u64) -> Result<()> {
    runtime()?.block_on(async {
        let client = dynamodb().await;
        let start = Instant::now();
        let uids: Vec<u64> = (from..to).collect();
        for (n, chunk) in uids.chunks(25).enumerate() {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|uid| {
                    let item = [
                        ("LivestreamID", AttributeValue::S(livestream_of(*uid))),
                        ("UID", AttributeValue::N(uid.to_string())),
                        ("message", AttributeValue::S(format!("hello {uid}"))),
                        // When the loader wrote it (ms), for the bench's lag.
                        ("sent_at", AttributeValue::N(now_ms().to_string())),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                    PutRequest::builder()
                        .set_item(Some(item))
                        .build()
                        .map(|p| WriteRequest::builder().put_request(p).build())
                })
                .collect::<Result<_, _>>()?;
            for _ in 0..20 {
                let out = client
                    .batch_write_item()
                    .request_items(table, requests.clone())
                    .send()
                    .await
                    .context("BatchWriteItem")?;
                requests = out
                    .unprocessed_items()
                    .and_then(|u| u.get(table).cloned())
                    .unwrap_or_default();
                if requests.is_empty() {
                    break;
                }
            }
            anyhow::ensure!(requests.is_empty(), "items stayed unprocessed");
            let due = Duration::from_secs_f64(((n + 1) * 25) as f64 / per_sec.max(1) as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        Ok(())
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Changes `message` of each item in `uids` (a MODIFY each).
pub fn modify_chat(table: &str, uids: impl IntoIterator<Item = u64>) -> Result<()> {
    runtime()?.block_on(async {
        let client = dynamodb().await;
        for uid in uids {
            client
                .update_item()
                .table_name(table)
                .key("LivestreamID", AttributeValue::S(livestream_of(uid)))
                .key("UID", AttributeValue::N(uid.to_string()))
                .update_expression("SET message = :m")
                .expression_attribute_values(":m", AttributeValue::S(format!("edited {uid}")))
                .send()
                .await
                .context("UpdateItem")?;
        }
        Ok(())
    })
}

/// Every chat item's `message` by `UID`, read with a strongly consistent
/// Scan (the table as it is now, for comparing with what a stream wrote).
pub fn chat_messages(table: &str) -> Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for item in crate::dynamo::scan_items(table)? {
        let uid = match item.get("UID") {
            Some(AttributeValue::N(n)) => n.parse::<u64>()?,
            other => anyhow::bail!("an item without a numeric UID: {other:?}"),
        };
        let message = match item.get("message") {
            Some(AttributeValue::S(m)) => m.clone(),
            _ => String::new(),
        };
        out.insert(uid, message);
    }
    Ok(out)
}

/// Deletes each item in `uids` (a REMOVE each).
pub fn remove_chat(table: &str, uids: impl IntoIterator<Item = u64>) -> Result<()> {
    runtime()?.block_on(async {
        let client = dynamodb().await;
        for uid in uids {
            client
                .delete_item()
                .table_name(table)
                .key("LivestreamID", AttributeValue::S(livestream_of(uid)))
                .key("UID", AttributeValue::N(uid.to_string()))
                .send()
                .await
                .context("DeleteItem")?;
        }
        Ok(())
    })
}

// Clients of their own per call: each helper runs its own runtime, and a
// pooled connection dies with the runtime that opened it.
async fn kinesis() -> aws_sdk_kinesis::Client {
    aws_sdk_kinesis::Client::new(&sluice_core::storage::aws::new_sdk_config().await)
}

pub async fn dynamodb() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sluice_core::storage::aws::new_sdk_config().await)
}

/// A fresh Kinesis stream of `shards` shards; returns its name.
pub fn create_stream(hint: &str, shards: i32) -> Result<String> {
    let name = format!("{hint}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    runtime()?.block_on(async {
        let k = kinesis().await;
        k.create_stream()
            .stream_name(&name)
            .shard_count(shards)
            .send()
            .await
            .context("CreateStream")?;
        active(&k, &name).await
    })?;
    Ok(name)
}

/// Waits until the stream is ACTIVE (after a create or a split).
async fn active(k: &aws_sdk_kinesis::Client, name: &str) -> Result<()> {
    for _ in 0..100 {
        let d = k
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .context("DescribeStreamSummary")?;
        if d.stream_description_summary()
            .is_some_and(|s| s.stream_status() == &aws_sdk_kinesis::types::StreamStatus::Active)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("stream {name} did not become ACTIVE")
}

/// Puts each `(partition key, data)` record, in order.
pub fn put_records(stream: &str, records: &[(String, Vec<u8>)]) -> Result<()> {
    runtime()?.block_on(async {
        let k = kinesis().await;
        for (key, data) in records {
            k.put_record()
                .stream_name(stream)
                .partition_key(key)
                .data(aws_sdk_kinesis::primitives::Blob::new(data.clone()))
                .send()
                .await
                .context("PutRecord")?;
        }
        Ok(())
    })
}

/// Puts records `{"n": i, "sent_at": <ms>}` for `i` in `from..from+count`,
/// 500 to a `PutRecords`, retrying failed entries.
pub fn put_many(stream: &str, from: u64, count: u64) -> Result<()> {
    put_each(stream, from, count, |n| {
        let data = format!("{{\"n\": {n}, \"sent_at\": {}}}", now_ms());
        (format!("key-{n}"), data.into_bytes())
    })
}

/// Puts chat changes `from..from+count` as DynamoDB's Kinesis streaming
/// destination writes them (an INSERT each: `LivestreamID` `live-<i % 10>`,
/// `UID` i, a message, `sent_at` now), keyed by `LivestreamID`, 500 to a
/// `PutRecords`.
pub fn put_chat_changes(stream: &str, from: u64, count: u64) -> Result<()> {
    put_each(stream, from, count, |n| {
        let (id, at) = (format!("live-{}", n % 10), now_ms());
        let data = format!(
            r#"{{"awsRegion":"us-east-1","eventID":"e{n}","eventName":"INSERT","tableName":"chat","recordFormat":"application/json","dynamodb":{{"ApproximateCreationDateTime":{at},"Keys":{{"LivestreamID":{{"S":"{id}"}},"UID":{{"N":"{n}"}}}},"NewImage":{{"LivestreamID":{{"S":"{id}"}},"UID":{{"N":"{n}"}},"message":{{"S":"message {n}"}},"sent_at":{{"N":"{at}"}}}},"SizeBytes":80}},"eventSource":"aws:dynamodb"}}"#
        );
        (id, data.into_bytes())
    })
}

/// Puts record `make(i)` (partition key, data) for `i` in
/// `from..from+count`, 500 to a `PutRecords`, retrying failed entries.
fn put_each(
    stream: &str,
    from: u64,
    count: u64,
    make: impl Fn(u64) -> (String, Vec<u8>),
) -> Result<()> {
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    runtime()?.block_on(async {
        let k = kinesis().await;
        let all: Vec<u64> = (from..from + count).collect();
        for chunk in all.chunks(500) {
            let mut entries: Vec<PutRecordsRequestEntry> = chunk
                .iter()
                .map(|n| {
                    let (key, data) = make(*n);
                    PutRecordsRequestEntry::builder()
                        .partition_key(key)
                        .data(aws_sdk_kinesis::primitives::Blob::new(data))
                        .build()
                })
                .collect::<Result<_, _>>()?;
            for _ in 0..20 {
                let out = k
                    .put_records()
                    .stream_name(stream)
                    .set_records(Some(entries.clone()))
                    .send()
                    .await
                    .context("PutRecords")?;
                entries = entries
                    .into_iter()
                    .zip(out.records())
                    .filter(|(_, r)| r.error_code().is_some())
                    .map(|(e, _)| e)
                    .collect();
                if entries.is_empty() {
                    break;
                }
            }
            anyhow::ensure!(entries.is_empty(), "records stayed unput");
        }
        Ok(())
    })
}

/// Splits the stream's first open shard in two at the middle of its hash
/// range; returns the shard split.
pub fn split_first_shard(stream: &str) -> Result<String> {
    runtime()?.block_on(async {
        let k = kinesis().await;
        let shards = open_shards(&k, stream).await?;
        let open = shards.first().context("no open shard")?;
        let range = open.hash_key_range().context("no hash range")?;
        let lo: u128 = range.starting_hash_key().parse()?;
        let hi: u128 = range.ending_hash_key().parse()?;
        let middle = lo + (hi - lo) / 2 + 1;
        k.split_shard()
            .stream_name(stream)
            .shard_to_split(open.shard_id())
            .new_starting_hash_key(middle.to_string())
            .send()
            .await
            .context("SplitShard")?;
        active(&k, stream).await?;
        Ok(open.shard_id().to_string())
    })
}

/// The stream's shards that are still open (no ending sequence number).
async fn open_shards(
    k: &aws_sdk_kinesis::Client,
    stream: &str,
) -> Result<Vec<aws_sdk_kinesis::types::Shard>> {
    let listed = k
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .context("ListShards")?;
    Ok(listed
        .shards()
        .iter()
        .filter(|s| {
            s.sequence_number_range()
                .is_some_and(|r| r.ending_sequence_number().is_none())
        })
        .cloned()
        .collect())
}

/// Merges the stream's two open shards (a two-shard stream's are
/// adjacent); returns the parents' ids.
pub fn merge_open_shards(stream: &str) -> Result<(String, String)> {
    runtime()?.block_on(async {
        let k = kinesis().await;
        let mut open: Vec<(u128, String)> = open_shards(&k, stream)
            .await?
            .iter()
            .map(|s| {
                let start = s
                    .hash_key_range()
                    .map(|r| r.starting_hash_key().parse::<u128>())
                    .context("no hash range")??;
                Ok((start, s.shard_id().to_string()))
            })
            .collect::<Result<_>>()?;
        open.sort();
        let [(_, a), (_, b)] = open.as_slice() else {
            anyhow::bail!("{} open shards, not 2", open.len());
        };
        k.merge_shards()
            .stream_name(stream)
            .shard_to_merge(a)
            .adjacent_shard_to_merge(b)
            .send()
            .await
            .context("MergeShards")?;
        active(&k, stream).await?;
        Ok((a.clone(), b.clone()))
    })
}

/// Lines per value of `field` in the visible NDJSON files under `dir`,
/// read with DuckDB's JSON reader (not sluice's); a row without the field
/// takes it from its `field=value` directory. `__duplicates__`
/// counts `(shard_id, sequence_number)` pairs seen more than once.
pub fn ndjson_counts(dir: &std::path::Path, field: &str) -> Result<BTreeMap<String, u64>> {
    // DuckDB's JSON reader, not sluice's: `k=v` directories are columns
    // (Hive partitioning), and files under `_` or `.` directories (staging,
    // the lock) are not data.
    let script = r#"
import duckdb, json, os, sys
root, field = sys.argv[1], sys.argv[2]
files = []
for d, dirs, names in os.walk(root):
    dirs[:] = [x for x in dirs if not x.startswith(('_', '.'))]
    files += [os.path.join(d, f) for f in names if f.endswith('.json')]
counts = {'__duplicates__': 0}
if files:
    quote = lambda s: "'" + s.replace("'", "''") + "'"
    source = ("read_json([" + ",".join(quote(f) for f in sorted(files)) + "], "
              "format='newline_delimited', hive_partitioning=true, union_by_name=true)")
    con = duckdb.connect()
    columns = [c[0] for c in con.execute("DESCRIBE SELECT * FROM " + source).fetchall()]
    col = lambda c: ('"' + c.replace('"', '""') + '"') if c in columns else 'NULL'
    for key, n in con.execute(
            "SELECT CAST(" + col(field) + " AS VARCHAR), count(*) FROM " + source + " GROUP BY 1").fetchall():
        counts['None' if key is None else key] = n
    counts['__duplicates__'] = con.execute(
        "SELECT count(*) FROM (SELECT 1 FROM " + source + " GROUP BY "
        + col('shard_id') + ", " + col('sequence_number') + " HAVING count(*) > 1)").fetchone()[0]
print(json.dumps(counts))
"#;
    let python = std::env::var("SLUICE_TEST_PYTHON").context(
        "SLUICE_TEST_PYTHON (the test venv's python, with duckdb) is not set: run the tests through scripts/test.sh",
    )?;
    let mut cmd = std::process::Command::new(&python);
    cmd.args(["-c", script]).arg(dir).arg(field);
    let out = crate::run_with_timeout(&mut cmd, Duration::from_secs(60))
        .with_context(|| python.clone())?;
    anyhow::ensure!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}
