//! `range`: the seed's `range_to_parquet` on the embedded cluster, on a
//! scheduler and two executor processes (the test-support cluster), in
//! single-process DataFusion and in Spark.

use std::path::Path;

use crate::common::*;
use crate::spark::*;
use anyhow::Result;
use serde_json::{Value, json};
use sluice_cli::embedded::EmbeddedCluster;
use sluice_test_support::Cluster;

/// The job on a scheduler and two executor processes (the tests' cluster).
pub(crate) async fn processes_run(rows: u64, partitions: u64, out: &Path) -> Result<f64> {
    let slots = sluice_core::config::default_slots();
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(2, slots)).await??;
    sluice_run(&cluster.endpoint, rows, partitions, out).await
}

pub(crate) async fn range_bench(
    rows: u64,
    partitions: u64,
    dir: &Path,
    spark_python: Option<&str>,
) -> Result<Value> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut runs = vec![];

    let out = dir.join("embedded");
    let cluster = EmbeddedCluster::start(2, sluice_core::config::default_slots()).await?;
    let embedded = sluice_run(&cluster.endpoint, rows, partitions, &out).await?;
    runs.push(figures(
        "sluice_embedded",
        rows,
        embedded,
        count_parquet(&out),
    ));
    std::fs::remove_dir_all(&out)?;

    let out = dir.join("processes");
    let processes = processes_run(rows, partitions, &out).await?;
    runs.push(figures(
        "sluice_processes",
        rows,
        processes,
        count_parquet(&out),
    ));
    std::fs::remove_dir_all(&out)?;

    let out = dir.join("datafusion");
    let df = datafusion_copy(rows, partitions, &out).await?;
    runs.push(figures("datafusion_copy", rows, df, count_parquet(&out)));
    std::fs::remove_dir_all(&out)?;

    let spark = if let Some(python) = spark_python {
        let out = dir.join("spark");
        let s = spark_run(python, rows, partitions, &out)?;
        if let Some(secs) = s {
            runs.push(figures("spark_local2", rows, secs, count_parquet(&out)));
        }
        s
    } else {
        None
    };
    let r = |a: f64, b: f64| ((a / b) * 1000.0).round() / 1000.0;
    Ok(json!({
        "bench": "range_to_parquet",
        "parquet_compression": sluice_core::plan::session::PARQUET_COMPRESSION,
        "rows": rows,
        "partitions": partitions,
        "cores": cores,
        "runs": runs,
        "ratios": {
            "embedded_time_over_datafusion": r(embedded, df),
            "processes_time_over_datafusion": r(processes, df),
            "embedded_speedup_over_spark": spark.map(|s| r(s, embedded)),
            "processes_speedup_over_spark": spark.map(|s| r(s, processes)),
            "datafusion_speedup_over_spark": spark.map(|s| r(s, df)),
        },
        "spark": if spark.is_some() { "pyspark local[2]" } else { "skipped: pyspark not importable (or --no-spark)" },
    }))
}
