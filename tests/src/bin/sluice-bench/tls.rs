//! `tls`: what mutual TLS costs. The range job (Parquet to local files,
//! shuffle-free) and a DynamoDB write (leases through the coordinator) on a
//! scheduler and two executor processes, with TLS off and on, side by side
//! in rounds whose order alternates; times are medians.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use anyhow::Result;
use serde_json::{Value, json};
use sluice_core::client::{self, JobRunner, NoProgress};
use sluice_test_support::Cluster;
use sluice_test_support::tls::TestCerts;

/// One run of both jobs on a fresh cluster: (range secs, DynamoDB secs).
async fn run(
    certs: Option<&TestCerts>,
    rows: u64,
    items: u64,
    out: &Path,
) -> Result<(f64, Option<f64>)> {
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
    let vars = HashMap::from([
        ("rows".to_string(), rows.to_string()),
        ("partitions".to_string(), "24".to_string()),
        ("output".to_string(), out.display().to_string()),
    ]);
    let (_, range) = timed_write(&runner, "range_to_parquet.sql", JOB, &vars, rows).await?;
    std::fs::remove_dir_all(out)?;
    if items == 0 || std::env::var_os("AWS_ENDPOINT_URL_DYNAMODB").is_none() {
        return Ok((range, None));
    }
    let table = tokio::task::spawn_blocking(|| {
        sluice_test_support::dynamo::create_table("bench-tls", 100_000)
    })
    .await??;
    let sql = format!(
        "CREATE EXTERNAL TABLE t (pk VARCHAR, sk BIGINT) STORED AS DYNAMODB \
         LOCATION 'dynamodb://{table}';\n\
         INSERT INTO t SELECT concat('k-', CAST(id % 97 AS VARCHAR)) AS pk, id AS sk \
         FROM range(0, {items}, 1, 8);\n"
    );
    let (_, dynamo) = timed_write(&runner, "dynamodb.sql", &sql, &HashMap::new(), items).await?;
    Ok((range, Some(dynamo)))
}

pub(crate) async fn tls_bench(rows: u64, items: u64, rounds: usize, dir: &Path) -> Result<Value> {
    let certs = TestCerts::new()?;
    let (mut plain, mut tls) = ((vec![], vec![]), (vec![], vec![]));
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for on in order {
            let out = dir.join(format!("range-{round}-{on}"));
            let (range, dynamo) = run(on.then_some(&certs), rows, items, &out).await?;
            let into = if on { &mut tls } else { &mut plain };
            into.0.push(range);
            into.1.extend(dynamo);
        }
    }
    let r = |a: f64, b: f64| ((a / b) * 1000.0).round() / 1000.0;
    let dynamo = (!plain.1.is_empty()).then(|| {
        let (p, t) = (median(plain.1.clone()), median(tls.1.clone()));
        json!({
            "items": items,
            "plain_secs": p,
            "tls_secs": t,
            "tls_time_over_plain": r(t, p),
        })
    });
    let (p, t) = (median(plain.0.clone()), median(tls.0.clone()));
    Ok(json!({
        "bench": "tls",
        "cluster": "scheduler + 2 executor processes on loopback",
        "rounds": rounds,
        "range_to_parquet": {
            "rows": rows,
            "plain_secs": p,
            "tls_secs": t,
            "tls_time_over_plain": r(t, p),
            "plain_runs": plain.0,
            "tls_runs": tls.0,
        },
        "dynamodb": dynamo.unwrap_or_else(|| json!("skipped: AWS_ENDPOINT_URL_DYNAMODB unset or --items 0")),
    }))
}
