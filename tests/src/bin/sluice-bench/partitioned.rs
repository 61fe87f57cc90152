//! `partitioned`: the field notes' skewed stream written `PARTITIONED BY
//! (id)` with a row target, files per id against the ideal, for each
//! distribution, beside Spark's `REBALANCE(id)`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::spark::*;
use anyhow::{Result, bail};
use serde_json::{Value, json};
use sluice_cli::embedded::EmbeddedCluster;
use sluice_core::client::{self, JobRunner, NoProgress};

pub(crate) const PARTITIONED_MODES: [&str; 3] = ["skew", "hash", "none"];

pub(crate) async fn partitioned_bench(
    shape: PartitionedShape,
    dir: &Path,
    spark_python: Option<&str>,
) -> Result<Value> {
    let PartitionedShape {
        rows,
        target,
        partitions,
        rounds,
        modes,
        processes,
        slots,
        settings,
    } = shape;
    let modes: Vec<&'static str> = PARTITIONED_MODES
        .into_iter()
        .filter(|m| modes.iter().any(|x| x == m))
        .collect();
    if modes.is_empty() && processes == 0 {
        bail!("--modes: none of skew, hash, none, and no --processes");
    }
    let seed = 1u64;
    let mut per_id: HashMap<i64, u64> = HashMap::new();
    for r in 0..rows {
        *per_id
            .entry(sluice_udfs::skewed::id_of(seed, r))
            .or_insert(0) += 1;
    }
    let ideal: u64 = per_id.values().map(|n| n.div_ceil(target)).sum();
    let cluster = EmbeddedCluster::start(1, sluice_core::config::default_slots()).await?;
    let ctx = client::connect(&cluster.endpoint, None, Duration::from_secs(10)).await?;
    let runner = JobRunner::new(ctx, &cluster.endpoint, Arc::new(NoProgress))?;
    // Both engines read the same Parquet input (written once, untimed), so
    // the timed jobs are the same: read, one shuffle, partitioned write.
    let input = dir.join("input");
    timed_write(
        &runner,
        "partitioned-input.sql",
        &format!(
            "COPY (SELECT seq, ts, payload, id FROM skewed_events({rows}, {seed}, {partitions})) \
             TO '{}' STORED AS PARQUET;",
            input.display()
        ),
        &HashMap::new(),
        rows,
    )
    .await?;
    // Modes interleaved round by round, so a noisy minute hits them alike.
    let mut times: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut last_files: HashMap<&str, FileRows> = HashMap::new();
    for _ in 0..rounds {
        for mode in modes.iter().copied() {
            let out = dir.join(mode);
            let (secs, files) =
                partitioned_write(&runner, &input, &out, (target, mode), rows, &settings).await?;
            times.entry(mode).or_default().push(secs);
            last_files.insert(mode, files);
        }
    }
    // This process (the embedded cluster, and the input's generation).
    let embedded_peak_rss = peak_rss(std::process::id());
    let on_processes = if processes > 0 {
        Some(
            skew_on_processes(
                &input,
                dir,
                (rows, target),
                (processes, slots),
                ideal,
                &settings,
            )
            .await?,
        )
    } else {
        None
    };
    let mut runs = vec![];
    let mut seconds = HashMap::new();
    for mode in modes.iter().copied() {
        let all = times.remove(mode).unwrap_or_default();
        let secs = median(all.clone());
        let files = last_files.remove(mode).unwrap_or_default();
        let mut figures = file_figures(&format!("sluice_{mode}"), secs, &files, ideal, target);
        figures["seconds_each_round"] = json!(all);
        figures["max_files_per_id_over_ideal"] = json!(per_id_excess(&files, &per_id, target));
        runs.push(figures);
        seconds.insert(mode, secs);
    }
    // A failed Spark run is reported, not fatal: sluice's figures stand.
    let (spark, spark_error) = match spark_python {
        Some(python) => match spark_rebalance(python, &input, target, dir) {
            Ok(s) => (s, None),
            Err(e) => (None, Some(e.to_string())),
        },
        None => (None, None),
    };
    if let Some((secs, files)) = &spark {
        runs.push(file_figures(
            "spark_rebalance_id",
            *secs,
            files,
            ideal,
            target,
        ));
    }
    let r = |a: f64, b: f64| ((a / b) * 1000.0).round() / 1000.0;
    let ratio = |a: &str, b: &str| match (seconds.get(a), seconds.get(b)) {
        (Some(x), Some(y)) => Some(r(*x, *y)),
        _ => None,
    };
    Ok(json!({
        "embedded_process_peak_rss_bytes": embedded_peak_rss,
        "skew_on_processes": on_processes,
        "bench": "skewed_events PARTITIONED BY (id)",
        "rows": rows,
        "target_file_rows": target,
        "settings": settings,
        "input_partitions": partitions,
        "rounds": rounds,
        "ideal_files": ideal,
        "ids": per_id.len(),
        "runs": runs,
        "ratios": {
            "skew_time_over_hash": ratio("skew", "hash"),
            "skew_time_over_none": ratio("skew", "none"),
            "hash_time_over_none": ratio("hash", "none"),
            "skew_time_over_spark": spark.as_ref().and_then(|(s, _)| seconds.get("skew").map(|k| r(*k, *s))),
            "hash_time_over_spark": spark.as_ref().and_then(|(s, _)| seconds.get("hash").map(|k| r(*k, *s))),
        },
        "spark_error": spark_error,
        "note": "both engines read the same Parquet input of skewed_events (written once, not timed); sluice times are medians over the rounds. skew: one shuffle, each id cut into chunks of the target as rows pass the map side, one file per chunk; hash: one shuffle by id, each id written by one task, files rolled at the target; none: no shuffle, every task writes every id it sees; Spark: REBALANCE(id) with AQE, maxRecordsPerFile = target",
    }))
}

/// `input` written `PARTITIONED BY (id)` to `out` with `mode`, timed; the
/// files it made (checked to hold every row), `out` removed after.
async fn partitioned_write(
    runner: &JobRunner,
    input: &Path,
    out: &Path,
    (target, mode): (u64, &str),
    rows: u64,
    settings: &str,
) -> Result<(f64, FileRows)> {
    let sql = format!(
        "{settings}CREATE EXTERNAL TABLE IF NOT EXISTS events STORED AS PARQUET LOCATION '{}/';\n\
         COPY (SELECT seq, ts, payload, id FROM events) \
         TO '{}' STORED AS PARQUET PARTITIONED BY (id) \
         OPTIONS ('write.target_file_rows' '{target}', 'write.distribution' '{mode}');",
        input.display(),
        out.display()
    );
    let name = format!("partitioned-{mode}.sql");
    let (_, secs) = timed_write(runner, &name, &sql, &HashMap::new(), rows).await?;
    let files = file_rows(out)?;
    let counted: u64 = files.iter().map(|(_, r)| r).sum();
    if counted != rows {
        bail!(
            "{mode} to {}: the files hold {counted} rows, expected {rows}",
            out.display()
        );
    }
    std::fs::remove_dir_all(out)?;
    Ok((secs, files))
}

/// A process's peak resident set (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The `skew` write from `input` on a scheduler and `n` executor processes:
/// seconds, files against the ideal, and each executor's peak RSS.
async fn skew_on_processes(
    input: &Path,
    dir: &Path,
    (rows, target): (u64, u64),
    (n, slots): (usize, usize),
    ideal: u64,
    settings: &str,
) -> Result<Value> {
    let cluster =
        tokio::task::spawn_blocking(move || sluice_test_support::Cluster::start(n, slots))
            .await??;
    let ctx = client::connect(&cluster.endpoint, None, Duration::from_secs(10)).await?;
    let runner = JobRunner::new(ctx, &cluster.endpoint, Arc::new(NoProgress))?
        .with_coordinator(Some(cluster.coordinator.clone()));
    let out = dir.join("skew-processes");
    let (secs, files) =
        partitioned_write(&runner, input, &out, (target, "skew"), rows, settings).await?;
    let peaks: Vec<Option<u64>> = cluster.executors.iter().map(|c| peak_rss(c.id())).collect();
    Ok(json!({
        "executors": n,
        "slots_per_executor": slots,
        "seconds": secs,
        "files": files.len(),
        "ideal_files": ideal,
        "executor_peak_rss_bytes": peaks,
        "scheduler_peak_rss_bytes": peak_rss(cluster.scheduler.id()),
    }))
}

/// The largest excess of an id's file count over `ceil(rows / target)`.
pub(crate) fn per_id_excess(files: &FileRows, per_id: &HashMap<i64, u64>, target: u64) -> i64 {
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for (dir, _) in files {
        *counts.entry(dir.as_str()).or_insert(0) += 1;
    }
    per_id
        .iter()
        .map(|(id, rows)| {
            let got = counts
                .get(format!("id={id}").as_str())
                .copied()
                .unwrap_or(0);
            got - rows.div_ceil(target) as i64
        })
        .max()
        .unwrap_or(0)
}
