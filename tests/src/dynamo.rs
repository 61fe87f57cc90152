//! A loopback proxy in front of DynamoDB Local that enforces provisioned
//! write capacity the way the service does, because DynamoDB Local never
//! throttles. Per table, a token bucket refills at the table's WCU (from
//! `CreateTable`, `UpdateTable`, or [`ThrottlingDynamo::set_capacity`]) and
//! holds one second of it. A `BatchWriteItem` whose items only partly fit is
//! forwarded with the items that fit, and the rest come back as
//! `UnprocessedItems`; when none fit the answer is HTTP 400
//! `ProvisionedThroughputExceededException`. Rewritten bodies get a fresh
//! `x-amz-crc32`.
//!
//! Reads are metered the way the service meters them: a `Scan` or `Query`
//! on a table whose read bucket (RCU from `CreateTable`, or
//! [`ThrottlingDynamo::set_read_capacity`]) is empty is refused with
//! `ProvisionedThroughputExceededException`; one that is let through is
//! charged afterwards what it consumed (the answer's `ConsumedCapacity`,
//! else its items' size in 4 KB units, halved for eventually consistent
//! reads), which may take the bucket below zero. Everything else is
//! forwarded unchanged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

const THROTTLE_TYPE: &str =
    "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException";

struct Bucket {
    wcu: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.wcu).min(self.wcu);
    }
}

/// What the proxy saw; shared with the test.
#[derive(Default)]
pub struct Stats {
    pub batch_requests: u64,
    /// Requests refused whole (HTTP 400) or answered with unprocessed items.
    pub throttled_requests: u64,
    pub refused_requests: u64,
    pub accepted_items: u64,
    pub accepted_wcu: f64,
    /// (seconds since start, WCU accepted) per forwarded batch.
    pub timeline: Vec<(f64, f64)>,
    /// (seconds since start, items asked, items admitted, tokens before) per batch.
    pub admissions: Vec<(f64, usize, usize, f64)>,
    /// Seconds since start of each throttled answer.
    pub throttle_times: Vec<f64>,
    /// (seconds since start, table, new WCU) per capacity change.
    pub capacity_changes: Vec<(f64, String, f64)>,
    pub scan_requests: u64,
    pub query_requests: u64,
    /// Reads refused for lack of read capacity.
    pub read_throttles: u64,
    pub accepted_rcu: f64,
    /// (seconds since start, RCU charged) per answered read.
    pub read_timeline: Vec<(f64, f64)>,
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    http: reqwest::Client,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
    read_buckets: Arc<Mutex<HashMap<String, Bucket>>>,
    stats: Arc<Mutex<Stats>>,
    started: Instant,
}

/// A running proxy; stops with its runtime when dropped.
pub struct ThrottlingDynamo {
    pub endpoint: String,
    shared: Shared,
    _runtime: tokio::runtime::Runtime,
}

impl ThrottlingDynamo {
    /// Proxies to `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let shared = Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            buckets: Arc::default(),
            read_buckets: Arc::default(),
            stats: Arc::default(),
            started: Instant::now(),
        };
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            endpoint,
            shared,
            _runtime: runtime,
        })
    }

    /// Sets a table's capacity, as `UpdateTable` through the proxy would.
    pub fn set_capacity(&self, table: &str, wcu: f64) {
        self.shared.set_capacity(table, wcu);
    }

    /// Sets a table's read capacity, as `UpdateTable` through the proxy would.
    pub fn set_read_capacity(&self, table: &str, rcu: f64) {
        self.shared.set_read_capacity(table, rcu);
    }

    /// Runs `f` on the statistics.
    pub fn stats<T>(&self, f: impl FnOnce(&Stats) -> T) -> T {
        let guard = match self.shared.stats.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&guard)
    }

    /// Seconds since the proxy started (the timeline's clock).
    pub fn now(&self) -> f64 {
        self.shared.started.elapsed().as_secs_f64()
    }

    pub fn reset_stats(&self) {
        if let Ok(mut s) = self.shared.stats.lock() {
            *s = Stats::default();
        }
    }
}

impl Shared {
    fn set_capacity(&self, table: &str, wcu: f64) {
        let now = Instant::now();
        if let Ok(mut b) = self.buckets.lock() {
            // A new table starts with a full bucket (one second of credit),
            // as the service starts a table with burst credit; an empty one
            // throttles the first requests of a job submitted right after
            // the table was created.
            let bucket = b.entry(table.to_string()).or_insert(Bucket {
                wcu,
                tokens: wcu,
                last: now,
            });
            bucket.refill(now);
            bucket.wcu = wcu;
            bucket.tokens = bucket.tokens.min(wcu);
        }
        if let Ok(mut s) = self.stats.lock() {
            s.capacity_changes
                .push((self.started.elapsed().as_secs_f64(), table.to_string(), wcu));
        }
    }

    fn set_read_capacity(&self, table: &str, rcu: f64) {
        let now = Instant::now();
        if let Ok(mut b) = self.read_buckets.lock() {
            let bucket = b.entry(table.to_string()).or_insert(Bucket {
                wcu: rcu,
                tokens: rcu,
                last: now,
            });
            bucket.refill(now);
            bucket.wcu = rcu;
            bucket.tokens = bucket.tokens.min(rcu);
        }
    }

    /// Whether a read of `table` may go ahead (its bucket is not empty).
    fn may_read(&self, table: &str) -> bool {
        let Ok(mut buckets) = self.read_buckets.lock() else {
            return true;
        };
        let Some(bucket) = buckets.get_mut(table) else {
            return true;
        };
        bucket.refill(Instant::now());
        bucket.tokens > 0.0
    }

    fn charge_read(&self, table: &str, rcu: f64) {
        if let Ok(mut buckets) = self.read_buckets.lock()
            && let Some(bucket) = buckets.get_mut(table)
        {
            bucket.refill(Instant::now());
            bucket.tokens -= rcu;
        }
    }

    fn stats(&self, f: impl FnOnce(&mut Stats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    /// Takes tokens for the leading items that fit; returns how many fit
    /// and their WCU. Tables with no known capacity take everything.
    fn admit(&self, table: &str, costs: &[f64]) -> (usize, f64) {
        let Ok(mut buckets) = self.buckets.lock() else {
            return (costs.len(), costs.iter().sum());
        };
        let Some(bucket) = buckets.get_mut(table) else {
            return (costs.len(), costs.iter().sum());
        };
        bucket.refill(Instant::now());
        let before = bucket.tokens;
        let mut fit = 0;
        let mut taken = 0.0;
        for c in costs {
            if bucket.tokens < *c {
                break;
            }
            bucket.tokens -= c;
            taken += c;
            fit += 1;
        }
        let t = self.started.elapsed().as_secs_f64();
        drop(buckets);
        self.stats(|s| s.admissions.push((t, costs.len(), fit, before)));
        (fit, taken)
    }

    async fn forward(
        &self,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes)> {
        let mut req = self.http.post(format!("{}/", self.upstream)).body(body);
        for (name, value) in headers {
            if name != "host" && name != "content-length" {
                req = req.header(name, value);
            }
        }
        let resp = req.send().await?;
        let status = StatusCode::from_u16(resp.status().as_u16())?;
        let mut out = HeaderMap::new();
        for (name, value) in resp.headers() {
            if name != "content-length" && name != "transfer-encoding" && name != "connection" {
                out.insert(name.clone(), value.clone());
            }
        }
        Ok((status, out, resp.bytes().await?))
    }
}

fn respond(status: StatusCode, mut headers: HeaderMap, body: Bytes, rewritten: bool) -> Response {
    if rewritten {
        headers.remove("x-amz-crc32");
        if let Ok(v) = HeaderValue::from_str(&crc32fast::hash(&body).to_string()) {
            headers.insert("x-amz-crc32", v);
        }
    }
    (status, headers, body).into_response()
}

async fn handle(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    match route(&s, &headers, body).await {
        Ok(r) => r,
        Err(e) => (StatusCode::BAD_GATEWAY, format!("proxy: {e}")).into_response(),
    }
}

async fn route(s: &Shared, headers: &HeaderMap, body: Bytes) -> Result<Response> {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let op = target.rsplit('.').next().unwrap_or_default();
    match op {
        "BatchWriteItem" => batch_write(s, headers, body).await,
        "Scan" | "Query" => read(s, op, headers, body).await,
        "CreateTable" | "UpdateTable" => {
            let request: Value = serde_json::from_slice(&body).unwrap_or_default();
            let (status, h, b) = s.forward(headers, body).await?;
            let throughput = &request["ProvisionedThroughput"];
            if status.is_success()
                && let Some(table) = request["TableName"].as_str()
            {
                if let Some(wcu) = throughput["WriteCapacityUnits"].as_f64() {
                    s.set_capacity(table, wcu);
                }
                if let Some(rcu) = throughput["ReadCapacityUnits"].as_f64() {
                    s.set_read_capacity(table, rcu);
                }
            }
            Ok(respond(status, h, b, false))
        }
        _ => {
            let (status, h, b) = s.forward(headers, body).await?;
            Ok(respond(status, h, b, false))
        }
    }
}

fn throttled() -> Response {
    let body = Bytes::from(
        json!({
            "__type": THROTTLE_TYPE,
            "message": "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API."
        })
        .to_string(),
    );
    let mut h = HeaderMap::new();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    respond(StatusCode::BAD_REQUEST, h, body, true)
}

async fn read(s: &Shared, op: &str, headers: &HeaderMap, body: Bytes) -> Result<Response> {
    let request: Value = serde_json::from_slice(&body)?;
    let table = request["TableName"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    s.stats(|st| match op {
        "Scan" => st.scan_requests += 1,
        _ => st.query_requests += 1,
    });
    if !s.may_read(&table) {
        s.stats(|st| st.read_throttles += 1);
        return Ok(throttled());
    }
    let (status, h, b) = s.forward(headers, body).await?;
    if status.is_success() {
        let answer: Value = serde_json::from_slice(&b)?;
        let rcu = answer["ConsumedCapacity"]["CapacityUnits"]
            .as_f64()
            .unwrap_or_else(|| {
                let bytes: usize = answer["Items"]
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(Value::as_object)
                            .map(|item| {
                                item.iter()
                                    .map(|(k, v)| k.len() + value_size(v))
                                    .sum::<usize>()
                            })
                            .sum()
                    })
                    .unwrap_or(0);
                let units = bytes.div_ceil(4096).max(1) as f64;
                if request["ConsistentRead"].as_bool() == Some(true) {
                    units
                } else {
                    units / 2.0
                }
            });
        s.charge_read(&table, rcu);
        let t = s.started.elapsed().as_secs_f64();
        s.stats(|st| {
            st.accepted_rcu += rcu;
            st.read_timeline.push((t, rcu));
        });
    }
    Ok(respond(status, h, b, false))
}

async fn batch_write(s: &Shared, headers: &HeaderMap, body: Bytes) -> Result<Response> {
    let mut request: Value = serde_json::from_slice(&body)?;
    let Some(tables) = request["RequestItems"].as_object().cloned() else {
        let (status, h, b) = s.forward(headers, body).await?;
        return Ok(respond(status, h, b, false));
    };
    let mut kept = serde_json::Map::new();
    let mut unprocessed = serde_json::Map::new();
    let mut accepted_items = 0u64;
    let mut accepted_wcu = 0.0;
    for (table, writes) in &tables {
        let writes = writes.as_array().cloned().unwrap_or_default();
        let costs: Vec<f64> = writes.iter().map(write_cost).collect();
        let (fit, wcu) = s.admit(table, &costs);
        accepted_items += fit as u64;
        accepted_wcu += wcu;
        if fit > 0 {
            kept.insert(table.clone(), Value::Array(writes[..fit].to_vec()));
        }
        if fit < writes.len() {
            unprocessed.insert(table.clone(), Value::Array(writes[fit..].to_vec()));
        }
    }
    let t = s.started.elapsed().as_secs_f64();
    if kept.is_empty() {
        s.stats(|st| {
            st.batch_requests += 1;
            st.throttled_requests += 1;
            st.refused_requests += 1;
            st.throttle_times.push(t);
        });
        return Ok(throttled());
    }
    let partial = !unprocessed.is_empty();
    let forwarded = if partial {
        request["RequestItems"] = Value::Object(kept);
        Bytes::from(serde_json::to_vec(&request)?)
    } else {
        body
    };
    let (status, h, b) = s.forward(headers, forwarded).await?;
    if !status.is_success() {
        s.stats(|st| st.batch_requests += 1);
        return Ok(respond(status, h, b, false));
    }
    s.stats(|st| {
        st.batch_requests += 1;
        st.throttled_requests += u64::from(partial);
        if partial {
            st.throttle_times.push(t);
        }
        st.accepted_items += accepted_items;
        st.accepted_wcu += accepted_wcu;
        st.timeline.push((t, accepted_wcu));
    });
    if !partial {
        return Ok(respond(status, h, b, false));
    }
    let mut answer: Value = serde_json::from_slice(&b)?;
    let merged = answer["UnprocessedItems"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut all = merged;
    for (table, items) in unprocessed {
        let entry = all.entry(table).or_insert_with(|| Value::Array(vec![]));
        if let (Some(list), Some(more)) = (entry.as_array_mut(), items.as_array()) {
            list.extend(more.iter().cloned());
        }
    }
    answer["UnprocessedItems"] = Value::Object(all);
    Ok(respond(
        status,
        h,
        Bytes::from(serde_json::to_vec(&answer)?),
        true,
    ))
}

/// WCU of one write request: ceil(item size / 1 KB), sizes by DynamoDB's rules.
fn write_cost(write: &Value) -> f64 {
    let size = write["PutRequest"]["Item"]
        .as_object()
        .map(|item| {
            item.iter()
                .map(|(k, v)| k.len() + value_size(v))
                .sum::<usize>()
        })
        .unwrap_or(1);
    size.div_ceil(1024).max(1) as f64
}

fn value_size(v: &Value) -> usize {
    let Some((ty, inner)) = v.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    let text = |x: &Value| x.as_str().map_or(0, str::len);
    let number = |x: &Value| {
        let digits: String = x
            .as_str()
            .unwrap_or_default()
            .chars()
            .take_while(|c| *c != 'e' && *c != 'E')
            .filter(char::is_ascii_digit)
            .collect();
        digits
            .trim_start_matches('0')
            .trim_end_matches('0')
            .len()
            .div_ceil(2)
            + 1
    };
    let binary = |x: &Value| text(x) * 3 / 4;
    let list = |x: &Value| x.as_array().cloned().unwrap_or_default();
    match ty.as_str() {
        "S" => text(inner),
        "N" => number(inner),
        "B" => binary(inner),
        "BOOL" | "NULL" => 1,
        "SS" => list(inner).iter().map(text).sum(),
        "NS" => list(inner).iter().map(number).sum(),
        "BS" => list(inner).iter().map(binary).sum(),
        "L" => 3 + list(inner).iter().map(|e| 1 + value_size(e)).sum::<usize>(),
        "M" => {
            3 + inner.as_object().map_or(0, |m| {
                m.iter().map(|(k, e)| 1 + k.len() + value_size(e)).sum()
            })
        }
        _ => 0,
    }
}

/// Every item of `table` in the DynamoDB of `AWS_ENDPOINT_URL_DYNAMODB`,
/// read with a strongly consistent Scan, page by page.
pub fn scan_items(
    table: &str,
) -> Result<Vec<HashMap<String, aws_sdk_dynamodb::types::AttributeValue>>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = sluice_core::storage::dynamodb::client().await;
        let (mut out, mut start) = (Vec::new(), None);
        loop {
            let page = client
                .scan()
                .table_name(table)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await?;
            out.extend(page.items().iter().cloned());
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(out);
            }
        }
    })
}

/// A fresh table in the DynamoDB of `AWS_ENDPOINT_URL_DYNAMODB` (`pk` S, `sk`
/// N) with `wcu` provisioned write capacity; returns its name.
pub fn create_table(hint: &str, wcu: i64) -> Result<String> {
    create_table_with(hint, 100, wcu)
}

/// [`create_table`] with `rcu` provisioned read capacity as well.
pub fn create_table_with(hint: &str, rcu: i64, wcu: i64) -> Result<String> {
    create_billed(hint, Some((rcu, wcu)))
}

/// A fresh on-demand (`PAY_PER_REQUEST`) table, keyed as [`create_table`].
pub fn create_on_demand_table(hint: &str) -> Result<String> {
    create_billed(hint, None)
}

/// A table with `(rcu, wcu)` provisioned, or on demand.
fn create_billed(hint: &str, throughput: Option<(i64, i64)>) -> Result<String> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ProvisionedThroughput,
        ScalarAttributeType,
    };
    let name = format!("{hint}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = sluice_core::storage::dynamodb::client().await;
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
        };
        let attribute = |name: &str, kind: ScalarAttributeType| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(kind)
                .build()
        };
        let create = client.create_table().table_name(&name);
        let create = match throughput {
            Some((rcu, wcu)) => create
                .billing_mode(BillingMode::Provisioned)
                .provisioned_throughput(
                    ProvisionedThroughput::builder()
                        .read_capacity_units(rcu)
                        .write_capacity_units(wcu)
                        .build()?,
                ),
            None => create.billing_mode(BillingMode::PayPerRequest),
        };
        create
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .attribute_definitions(attribute("pk", ScalarAttributeType::S)?)
            .attribute_definitions(attribute("sk", ScalarAttributeType::N)?)
            .send()
            .await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(name)
}

/// Puts `count` items into `table` (`pk` S, `sk` N) straight into DynamoDB
/// (not through a proxy), 25 per `BatchWriteItem`, 4 requests at a time:
/// item `i` has `pk` = `k{i % keys}`, `sk` = `i`, `n` = `i` and `body` =
/// `body_bytes` bytes of text.
pub fn load_items(table: &str, count: u64, keys: u64, body_bytes: usize) -> Result<()> {
    use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = sluice_core::storage::dynamodb::client().await;
        let ids: Vec<u64> = (0..count).collect();
        let chunks: Vec<Vec<u64>> = ids.chunks(25).map(<[u64]>::to_vec).collect();
        let body = "x".repeat(body_bytes);
        let work = futures::stream::iter(chunks.into_iter().map(|chunk| {
            let client = client.clone();
            let body = body.clone();
            let table = table.to_string();
            async move {
                let mut requests: Vec<WriteRequest> = chunk
                    .iter()
                    .map(|i| {
                        let item = [
                            ("pk", AttributeValue::S(format!("k{}", i % keys.max(1)))),
                            ("sk", AttributeValue::N(i.to_string())),
                            ("n", AttributeValue::N(i.to_string())),
                            ("body", AttributeValue::S(body.clone())),
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
                        .request_items(&table, requests.clone())
                        .send()
                        .await?;
                    requests = out
                        .unprocessed_items()
                        .and_then(|u| u.get(&table).cloned())
                        .unwrap_or_default();
                    if requests.is_empty() {
                        break;
                    }
                }
                anyhow::ensure!(requests.is_empty(), "items stayed unprocessed");
                Ok::<_, anyhow::Error>(())
            }
        }));
        let mut tasks = futures::StreamExt::buffer_unordered(work, 4);
        while let Some(done) = futures::StreamExt::next(&mut tasks).await {
            done?;
        }
        Ok(())
    })
}
