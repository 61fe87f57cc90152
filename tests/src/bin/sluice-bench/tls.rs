//! `tls`: what mutual TLS costs. Three jobs on a scheduler and two executor
//! processes, with TLS off and on, side by side in rounds whose order
//! alternates (times are medians): the range job (Parquet to local files, no
//! shuffle), a skewed write `PARTITIONED BY (id)` (every row crosses the
//! executors' Flight ports, placement through the coordinator), and a
//! DynamoDB write (leases through the coordinator).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use anyhow::Result;
use serde_json::{Value, json};
use sluice_core::client::{self, JobRunner, NoProgress};
use sluice_test_support::Cluster;
use sluice_test_support::tls::TestCerts;

/// What one round runs.
struct Jobs<'a> {
    rows: u64,
    skewed_rows: u64,
    items: u64,
    table: Option<&'a str>,
}

/// One run of the jobs on a fresh cluster: seconds per job.
async fn run(
    certs: Option<&TestCerts>,
    jobs: &Jobs<'_>,
    out: &Path,
) -> Result<Vec<(&'static str, f64)>> {
    let slots = sluice_core::config::default_slots();
    let cluster = match certs {
        Some(c) => {
            let c = c.clone();
            tokio::task::spawn_blocking(move || Cluster::start_tls(2, slots, &c, &[])).await??
        }
        None => tokio::task::spawn_blocking(move || Cluster::start(2, slots)).await??,
    };
    let ctx = client::connect(
        &cluster.endpoint,
        cluster.tls.as_ref(),
        Duration::from_secs(10),
    )
    .await?;
    let runner = JobRunner::new(ctx, &cluster.endpoint, Arc::new(NoProgress))?
        .with_coordinator(Some(cluster.coordinator.clone()));
    let mut times = vec![];
    let vars = HashMap::from([
        ("rows".to_string(), jobs.rows.to_string()),
        ("partitions".to_string(), "24".to_string()),
        (
            "output".to_string(),
            out.join("range").display().to_string(),
        ),
    ]);
    let (_, secs) = timed_write(&runner, "range_to_parquet.sql", JOB, &vars, jobs.rows).await?;
    times.push(("range_to_parquet", secs));
    let skewed = format!(
        "COPY (SELECT seq, ts, payload, id FROM skewed_events({}, 7, 8)) TO '{}' \
         STORED AS PARQUET PARTITIONED BY (id) OPTIONS ('write.target_file_rows' '240000');\n",
        jobs.skewed_rows,
        out.join("skewed").display()
    );
    let (_, secs) = timed_write(
        &runner,
        "skewed.sql",
        &skewed,
        &HashMap::new(),
        jobs.skewed_rows,
    )
    .await?;
    times.push(("skewed_partitioned", secs));
    std::fs::remove_dir_all(out)?;
    if let Some(table) = jobs.table {
        let sql = format!(
            "CREATE EXTERNAL TABLE t (pk VARCHAR, sk BIGINT) STORED AS DYNAMODB \
             LOCATION 'dynamodb://{table}';\n\
             INSERT INTO t SELECT concat('k-', CAST(id % 97 AS VARCHAR)) AS pk, id AS sk \
             FROM range(0, {}, 1, 8);\n",
            jobs.items
        );
        let (_, secs) =
            timed_write(&runner, "dynamodb.sql", &sql, &HashMap::new(), jobs.items).await?;
        times.push(("dynamodb", secs));
    }
    Ok(times)
}

pub(crate) async fn tls_bench(
    rows: u64,
    skewed_rows: u64,
    items: u64,
    rounds: usize,
    dir: &Path,
) -> Result<Value> {
    let certs = TestCerts::new()?;
    // One table for every run (DynamoDB Local caps capacity per account):
    // each run puts the same items again.
    let table = if items > 0 && std::env::var_os("AWS_ENDPOINT_URL_DYNAMODB").is_some() {
        Some(
            tokio::task::spawn_blocking(|| {
                sluice_test_support::dynamo::create_table("bench-tls", 10_000)
            })
            .await??,
        )
    } else {
        None
    };
    let jobs = Jobs {
        rows,
        skewed_rows,
        items,
        table: table.as_deref(),
    };
    // job -> (plain runs, TLS runs)
    let mut times: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for on in order {
            let out = dir.join(format!("round-{round}-{on}"));
            for (job, secs) in run(on.then_some(&certs), &jobs, &out).await? {
                let entry = times.entry(job).or_default();
                if on {
                    entry.1.push(secs)
                } else {
                    entry.0.push(secs)
                }
            }
        }
    }
    let r = |a: f64, b: f64| ((a / b) * 1000.0).round() / 1000.0;
    let figures: serde_json::Map<String, Value> = times
        .into_iter()
        .map(|(job, (plain, tls))| {
            let (p, t) = (median(plain.clone()), median(tls.clone()));
            let v = json!({
                "plain_secs": p,
                "tls_secs": t,
                "tls_time_over_plain": r(t, p),
                "plain_runs": plain,
                "tls_runs": tls,
            });
            (job.to_string(), v)
        })
        .collect();
    Ok(json!({
        "bench": "tls",
        "cluster": "scheduler + 2 executor processes on loopback",
        "rounds": rounds,
        "rows": { "range_to_parquet": rows, "skewed_partitioned": skewed_rows, "dynamodb": table.as_ref().map(|_| items) },
        "jobs": figures,
        "dynamodb": if table.is_some() { "DynamoDB Local" } else { "skipped: AWS_ENDPOINT_URL_DYNAMODB unset or --items 0" },
    }))
}
