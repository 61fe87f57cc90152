//! `sluice-bench scan`: a DynamoDB backfill (`SELECT` from a `STORED AS
//! DYNAMODB` table into Parquet) on a scheduler and two executor processes,
//! through the proxy that meters read capacity as the service does. Reports
//! the RCU/s used against the budget and items/s, at `read.percent` 0.5 and
//! 1.0 in one run (their items/s ratio shows the budget, not the machine,
//! bounds the read). Run beside `scripts/test-servers.sh`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sluice_core::client::{self, JobRunner, NoProgress};
use sluice_test_support::Cluster;
use sluice_test_support::dynamo::{ThrottlingDynamo, create_table_with, load_items};

const JOB: &str =
    "CREATE EXTERNAL TABLE src (pk VARCHAR NOT NULL, sk BIGINT NOT NULL, n DOUBLE, body VARCHAR)
  STORED AS DYNAMODB LOCATION 'dynamodb://${table}'
  OPTIONS ('read.percent' '${percent}', 'read.segments' '${segments}',
    'read.consistent' '${consistent}');
CREATE EXTERNAL TABLE out (pk VARCHAR, sk BIGINT, n DOUBLE, body VARCHAR)
  STORED AS PARQUET LOCATION '${output}/';
INSERT INTO out SELECT * FROM src;
";

/// The table a scan bench reads.
pub(crate) struct Shape {
    pub items: u64,
    pub rcu: u64,
    pub segments: u32,
    pub keys: u64,
    pub item_bytes: usize,
    /// Strongly consistent reads: twice the RCU per byte, so a budget the
    /// machine cannot serve with eventually consistent reads fits in half
    /// the bytes.
    pub consistent: bool,
    /// Task slots of each of the 2 executors.
    pub vcores: u32,
}

pub(crate) async fn scan_bench(shape: &Shape, dir: &Path) -> Result<Value> {
    let &Shape {
        items,
        rcu,
        segments,
        keys,
        item_bytes,
        consistent,
        vcores,
    } = shape;
    let endpoint = std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
        .context("AWS_ENDPOINT_URL_DYNAMODB: run beside scripts/test-servers.sh")?;
    let t0 = Instant::now();
    let table = tokio::task::spawn_blocking(move || -> Result<String> {
        let table = create_table_with("bench-scan", rcu as i64, 1000)?;
        load_items(&table, items, keys, item_bytes)?;
        Ok(table)
    })
    .await??;
    let load_secs = t0.elapsed().as_secs_f64();
    let proxy =
        Arc::new(tokio::task::spawn_blocking(move || ThrottlingDynamo::start(&endpoint)).await??);
    proxy.set_read_capacity(&table, rcu as f64);
    let env = [(
        "AWS_ENDPOINT_URL_DYNAMODB".to_string(),
        proxy.endpoint.clone(),
    )];
    let cluster = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Cluster::start_with_env(2, vcores as usize, &env)
    })
    .await??;
    let measured = measure(&proxy, &cluster, &table, shape, dir).await;
    // The proxy owns a runtime: dropped off the async threads, error or not.
    tokio::task::spawn_blocking(move || {
        drop(cluster);
        drop(proxy);
    })
    .await?;
    let runs = measured?;
    let ratio = match (
        runs[0]["items_per_sec"].as_f64(),
        runs[1]["items_per_sec"].as_f64(),
    ) {
        (Some(a), Some(b)) if a > 0.0 => Some(((b / a) * 1000.0).round() / 1000.0),
        _ => None,
    };
    Ok(json!({
        "bench": "dynamodb_scan",
        "items": items,
        "payload_bytes": item_bytes,
        "consistent_reads": consistent,
        "partition_keys": keys,
        "table_rcu": rcu,
        "segments": segments,
        "executors": 2,
        "vcores_per_executor": vcores,
        "load_seconds": (load_secs * 1000.0).round() / 1000.0,
        "runs": runs,
        "ratios": { "items_per_sec_at_1_0_over_0_5": ratio },
    }))
}

/// The two timed runs.
async fn measure(
    proxy: &ThrottlingDynamo,
    cluster: &Cluster,
    table: &str,
    shape: &Shape,
    dir: &Path,
) -> Result<Vec<Value>> {
    let &Shape {
        items,
        rcu,
        segments,
        consistent,
        ..
    } = shape;
    let mut runs = vec![];
    for percent in [0.5f64, 1.0] {
        // A session per run: each defines its own tables.
        let ctx = client::connect(&cluster.endpoint, None, Duration::from_secs(10)).await?;
        let runner = JobRunner::new(ctx, &cluster.endpoint, Arc::new(NoProgress))?
            .with_coordinator(Some(cluster.coordinator.clone()));
        proxy.reset_stats();
        let out = dir.join(format!("scan-{percent}"));
        let vars = HashMap::from([
            ("table".to_string(), table.to_string()),
            ("percent".to_string(), percent.to_string()),
            ("segments".to_string(), segments.to_string()),
            ("consistent".to_string(), consistent.to_string()),
            ("output".to_string(), out.display().to_string()),
        ]);
        let t = Instant::now();
        let report = runner.run("scan.sql", JOB, &vars).await?;
        let secs = t.elapsed().as_secs_f64();
        let written = report.rows_written;
        anyhow::ensure!(written == items, "wrote {written} rows of {items} items");
        let (consumed, throttles, calls, first, last, timeline) = proxy.stats(|s| {
            (
                s.accepted_rcu,
                s.read_throttles,
                s.scan_requests,
                s.read_timeline.first().map_or(0.0, |t| t.0),
                s.read_timeline.last().map_or(0.0, |t| t.0),
                s.read_timeline.clone(),
            )
        });
        // RCU/s per tenth of the read, over the budget: where a shortfall
        // is (the start, the steady middle, the tail of the last parts).
        let tenth = ((last - first) / 10.0).max(1e-3);
        let mut tenths = [0.0f64; 10];
        for (t, rcu) in &timeline {
            let i = (((t - first) / tenth) as usize).min(9);
            tenths[i] += rcu;
        }
        let budget = rcu as f64 * percent.min(0.97);
        let reading = (last - first).max(1e-3);
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        runs.push(json!({
            "read_percent": percent,
            "budget_rcu_per_sec": budget,
            "consumed_rcu": r(consumed),
            "reading_seconds": r(reading),
            "job_seconds": r(secs),
            "rcu_per_sec": r(consumed / reading),
            "rcu_per_sec_over_budget": r(consumed / reading / budget),
            "items_per_sec": r(items as f64 / reading),
            "over_budget_by_tenth": tenths
                .iter()
                .map(|rcu| r(rcu / tenth / budget))
                .collect::<Vec<f64>>(),
            "scan_calls": calls,
            "throttled_calls": throttles,
        }));
        std::fs::remove_dir_all(&out).ok();
    }
    Ok(runs)
}
