//! What every benchmark shares: the job they time, timing with a row check,
//! and reading back what was written.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use datafusion::prelude::{SessionConfig, SessionContext};
use serde_json::{Value, json};
use sluice_core::client::{self, JobRunner, NoProgress};

/// (directory name, rows) of every data file written.
pub(crate) type FileRows = Vec<(String, u64)>;

/// Rows per data file under `dir`, recursively, from the Parquet footers.
pub(crate) fn file_rows(dir: &Path) -> Result<FileRows> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if name.starts_with('_') || name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".parquet") {
                let file = std::fs::File::open(&path)?;
                let reader = parquet::file::reader::SerializedFileReader::new(file)?;
                use parquet::file::reader::FileReader;
                let rows = reader.metadata().file_metadata().num_rows() as u64;
                let key = path
                    .parent()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                out.push((key, rows));
            }
        }
    }
    Ok(out)
}

pub(crate) fn file_figures(
    name: &str,
    secs: f64,
    files: &[(String, u64)],
    ideal: u64,
    target: u64,
) -> Value {
    let mut rows: Vec<u64> = files.iter().map(|(_, r)| *r).collect();
    rows.sort_unstable();
    let pick = |q: f64| {
        rows.get(((rows.len().saturating_sub(1)) as f64 * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    json!({
        "name": name,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "files": files.len(),
        "files_over_ideal": ((files.len() as f64 / ideal as f64) * 1000.0).round() / 1000.0,
        "rows_per_file": {"min": pick(0.0), "median": pick(0.5), "max": pick(1.0)},
        "max_file_over_target": ((pick(1.0) as f64 / target as f64) * 1000.0).round() / 1000.0,
    })
}

pub(crate) struct PartitionedShape {
    pub(crate) rows: u64,
    pub(crate) target: u64,
    pub(crate) partitions: u64,
    pub(crate) rounds: usize,
    /// The distributions to time (of `skew`, `hash`, `none`).
    pub(crate) modes: Vec<String>,
    /// Executor processes for a `skew` run on a scheduler and executors (0:
    /// none), with peak RSS per executor.
    pub(crate) processes: usize,
    /// Task slots per executor process.
    pub(crate) slots: usize,
    /// `SET key = value;` statements run before each timed write.
    pub(crate) settings: String,
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

pub(crate) const JOB: &str = include_str!("../../../../jobs/range_to_parquet.sql");

pub(crate) fn figures(name: &str, rows: u64, secs: f64, files: usize) -> Value {
    json!({
        "name": name,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "rows_per_sec": (rows as f64 / secs).round(),
        "files": files,
    })
}

pub(crate) fn count_parquet(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
                .count()
        })
        .unwrap_or(0)
}

pub(crate) async fn sluice_run(
    endpoint: &str,
    rows: u64,
    partitions: u64,
    out: &Path,
) -> Result<f64> {
    let ctx = client::connect(endpoint, None, Duration::from_secs(10)).await?;
    let runner = JobRunner::new(ctx, endpoint, Arc::new(NoProgress))?;
    let vars = HashMap::from([
        ("rows".to_string(), rows.to_string()),
        ("partitions".to_string(), partitions.to_string()),
        ("output".to_string(), out.display().to_string()),
    ]);
    let (_, secs) = timed_write(&runner, "range_to_parquet.sql", JOB, &vars, rows).await?;
    Ok(secs)
}

/// Runs job `name` and times it; an error unless it wrote exactly `rows`.
pub(crate) async fn timed_write(
    runner: &JobRunner,
    name: &str,
    sql: &str,
    vars: &HashMap<String, String>,
    rows: u64,
) -> Result<(client::JobReport, f64)> {
    let t = Instant::now();
    let report = runner.run(name, sql, vars).await?;
    let secs = t.elapsed().as_secs_f64();
    if report.rows_written != rows {
        bail!(
            "{name}: wrote {} rows, expected {rows}",
            report.rows_written
        );
    }
    Ok((report, secs))
}

pub(crate) async fn datafusion_copy(rows: u64, partitions: u64, out: &Path) -> Result<f64> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut config = SessionConfig::new().with_target_partitions(cores);
    // The codec sluice (and Spark) writes, so the three do the same work.
    config.options_mut().execution.parquet.compression =
        Some(sluice_core::plan::session::PARQUET_COMPRESSION.to_string());
    let ctx = SessionContext::new_with_config(config);
    ctx.register_udtf("range", Arc::new(sluice_udfs::range::RangeFunction));
    let sql = format!(
        "COPY (SELECT * FROM range(0, {rows}, 1, {partitions})) TO '{}/' STORED AS PARQUET",
        out.display()
    );
    let t = Instant::now();
    ctx.sql(&sql).await?.collect().await?;
    Ok(t.elapsed().as_secs_f64())
}
