//! `sluice bench range`: the seed's `range_to_parquet` job timed side by side
//! in one run, printed as JSON: (a) the embedded cluster, (b) a scheduler and
//! two executor processes, (c) plain single-process DataFusion `COPY`, and
//! (d) Spark `local[2]` when `pyspark` imports. Figures are ratios from the
//! same run because these machines are shared and noisy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use datafusion::prelude::{SessionConfig, SessionContext};
use serde_json::{Value, json};
use sluice_core::runner::{self, JobRunner, NoProgress};
use sluice_core::write::COMMITTER_OPTION;

use crate::embedded::EmbeddedCluster;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: Bench,
}

#[derive(Subcommand, Debug)]
pub enum Bench {
    /// range_to_parquet: embedded vs processes vs DataFusion COPY vs Spark.
    Range {
        /// Rows to write.
        #[arg(long, default_value_t = 200_000_000)]
        rows: u64,
        /// Partitions (and files).
        #[arg(long, default_value_t = 100)]
        partitions: u64,
        /// Scratch directory (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Python with pyspark for the Spark run (skipped when it cannot import pyspark).
        #[arg(long, default_value = "python3")]
        python: String,
        /// Skip the Spark run.
        #[arg(long)]
        no_spark: bool,
    },
    /// range_to_parquet to S3: the multipart committer vs rename-based v1 and v2.
    S3Commit {
        /// Rows to write.
        #[arg(long, default_value_t = 20_000_000)]
        rows: u64,
        /// Partitions (and files).
        #[arg(long, default_value_t = 100)]
        partitions: u64,
        /// An existing bucket on the S3 server of `AWS_ENDPOINT_URL_S3`.
        #[arg(long)]
        bucket: String,
        /// The S3 server's name, for the report.
        #[arg(long, env = "SLUICE_BENCH_S3_SERVER", default_value = "unknown")]
        server: String,
    },
}

pub async fn run(args: BenchArgs) -> Result<()> {
    match args.which {
        Bench::Range {
            rows,
            partitions,
            dir,
            python,
            no_spark,
        } => {
            let scratch = tempfile::Builder::new()
                .prefix("sluice-bench")
                .tempdir_in(dir.unwrap_or_else(std::env::temp_dir))?;
            let report = range_bench(rows, partitions, scratch.path(), &python, no_spark).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Bench::S3Commit {
            rows,
            partitions,
            bucket,
            server,
        } => {
            let report = s3_commit_bench(rows, partitions, &bucket, &server).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}

/// One write per committer into a fresh prefix, on one embedded cluster.
async fn s3_commit_bench(rows: u64, partitions: u64, bucket: &str, server: &str) -> Result<Value> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let cluster = EmbeddedCluster::start(2, sluice_core::config::default_slots()).await?;
    let ctx = runner::connect(&cluster.endpoint, Duration::from_secs(10)).await?;
    let runner = JobRunner::new(ctx, &cluster.endpoint, Arc::new(NoProgress))?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    // Warm the cluster and the store's connections so the first committer
    // measured does not pay for them.
    let warm = format!(
        "INSERT OVERWRITE DIRECTORY 's3://{bucket}/bench-{run_id}/warmup' USING PARQUET \
         SELECT * FROM range(0, 1000, 1, {partitions});"
    );
    runner
        .run("s3-commit-warmup.sql", &warm, &HashMap::new())
        .await?;
    let mut runs = vec![];
    let mut seconds = HashMap::new();
    let mut commit_seconds = HashMap::new();
    for committer in ["auto", "rename-v1", "rename-v2"] {
        let prefix = format!("bench-{run_id}/{committer}");
        let sql = format!(
            "INSERT OVERWRITE DIRECTORY 's3://{bucket}/{prefix}' USING PARQUET \
             OPTIONS ('{COMMITTER_OPTION}' '{committer}') \
             SELECT * FROM range(0, {rows}, 1, {partitions});"
        );
        let t = Instant::now();
        let report = runner
            .run(&format!("s3-commit-{committer}.sql"), &sql, &HashMap::new())
            .await?;
        let secs = t.elapsed().as_secs_f64();
        if report.rows_written != rows {
            bail!(
                "{committer}: wrote {} rows, expected {rows}",
                report.rows_written
            );
        }
        let manifest = read_manifest(bucket, &prefix).await?;
        if manifest["rows"].as_u64() != Some(rows) {
            bail!("{committer}: _SUCCESS says {} rows", manifest["rows"]);
        }
        let commit_ms = report
            .statements
            .iter()
            .find_map(|s| s.write.as_ref())
            .map(|w| w.commit_ms as f64)
            .context("the write's commit time")?;
        let name = if committer == "auto" {
            "sluice_multipart"
        } else {
            committer
        };
        let mut f = figures(name, rows, secs, report.files_written as usize);
        f["commit_seconds"] = json!(commit_ms / 1000.0);
        f["commit_share_of_job"] = json!(((commit_ms / 1000.0 / secs) * 10000.0).round() / 10000.0);
        runs.push(f);
        seconds.insert(committer, secs);
        commit_seconds.insert(committer, commit_ms / 1000.0);
    }
    let r = |a: f64, b: f64| ((a / b) * 1000.0).round() / 1000.0;
    Ok(json!({
        "bench": "range_to_parquet to S3: commit protocols",
        "s3_server": server,
        "endpoint": std::env::var("AWS_ENDPOINT_URL_S3").unwrap_or_default(),
        "rows": rows,
        "partitions": partitions,
        "cores": cores,
        "runs": runs,
        "ratios": {
            "v1_time_over_sluice": r(seconds["rename-v1"], seconds["auto"]),
            "v2_time_over_sluice": r(seconds["rename-v2"], seconds["auto"]),
            "sluice_commit_share_of_job": r(commit_seconds["auto"], seconds["auto"]),
            "v1_commit_over_sluice_commit": r(commit_seconds["rename-v1"], commit_seconds["auto"]),
        },
        "note": "rename = copy + delete on S3; v2 renames inside the tasks, so its job commit only writes _SUCCESS",
    }))
}

async fn read_manifest(bucket: &str, prefix: &str) -> Result<Value> {
    use object_store::ObjectStoreExt;
    let url = url::Url::parse(&format!("s3://{bucket}/"))?;
    let store = sluice_core::write::multipart::s3_store(&url)?;
    let path = object_store::path::Path::from(format!("{prefix}/_SUCCESS"));
    let body = store.get(&path).await?.bytes().await?;
    Ok(serde_json::from_slice(&body)?)
}

const JOB: &str = include_str!("../../jobs/range_to_parquet.sql");

fn figures(name: &str, rows: u64, secs: f64, files: usize) -> Value {
    json!({
        "name": name,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "rows_per_sec": (rows as f64 / secs).round(),
        "files": files,
    })
}

fn count_parquet(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
                .count()
        })
        .unwrap_or(0)
}

async fn sluice_run(endpoint: &str, rows: u64, partitions: u64, out: &Path) -> Result<f64> {
    let ctx = runner::connect(endpoint, Duration::from_secs(10)).await?;
    let runner = JobRunner::new(ctx, endpoint, Arc::new(NoProgress))?;
    let vars = HashMap::from([
        ("rows".to_string(), rows.to_string()),
        ("partitions".to_string(), partitions.to_string()),
        ("output".to_string(), out.display().to_string()),
    ]);
    let t = Instant::now();
    let report = runner.run("range_to_parquet.sql", JOB, &vars).await?;
    let secs = t.elapsed().as_secs_f64();
    if report.rows_written != rows {
        bail!("wrote {} rows, expected {rows}", report.rows_written);
    }
    Ok(secs)
}

async fn datafusion_copy(rows: u64, partitions: u64, out: &Path) -> Result<f64> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut config = SessionConfig::new().with_target_partitions(cores);
    // The codec sluice (and Spark) writes, so the three do the same work.
    config.options_mut().execution.parquet.compression =
        Some(sluice_core::session::PARQUET_COMPRESSION.to_string());
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

/// Free loopback port, released just before the child binds it.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found next to {} (build the workspace first)",
            name,
            exe.display()
        );
    }
    Ok(path)
}

struct Children(Vec<std::process::Child>);
impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn processes_run(rows: u64, partitions: u64, out: &Path, work: &Path) -> Result<f64> {
    let port = free_port()?;
    let mut children = Children(vec![]);
    children.0.push(
        std::process::Command::new(sibling_binary("sluice-scheduler")?)
            .args(["--bind-host", "127.0.0.1", "--bind-port", &port.to_string()])
            .args(["--scheduler-policy", "pull-staged"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting sluice-scheduler")?,
    );
    let endpoint = format!("127.0.0.1:{port}");
    runner::wait_for_scheduler(&endpoint, Duration::from_secs(20)).await?;
    for i in 0..2 {
        let dir = work.join(format!("executor-{i}"));
        std::fs::create_dir_all(&dir)?;
        children.0.push(
            std::process::Command::new(sibling_binary("sluice-executor")?)
                .args(["--bind-host", "127.0.0.1", "--external-host", "127.0.0.1"])
                .args([
                    "--scheduler-host",
                    "127.0.0.1",
                    "--scheduler-port",
                    &port.to_string(),
                ])
                .args(["--bind-port", &free_port()?.to_string()])
                .args(["--bind-grpc-port", &free_port()?.to_string()])
                .args(["--bind-health-port", &free_port()?.to_string()])
                .args([
                    "--vcores",
                    &sluice_core::config::default_slots().to_string(),
                ])
                .args(["--task-scheduling-policy", "pull-staged"])
                .arg("--work-dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting sluice-executor")?,
        );
    }
    let api = runner::SchedulerApi::new(&endpoint)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.executors().await.map(|e| e.len()).unwrap_or(0) < 2 {
        if Instant::now() > deadline {
            bail!("executors did not register within 20s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sluice_run(&endpoint, rows, partitions, out).await
}

fn spark_run(python: &str, rows: u64, partitions: u64, out: &Path) -> Result<Option<f64>> {
    let probe = std::process::Command::new(python)
        .args(["-c", "import pyspark"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        return Ok(None);
    }
    let script = format!(
        r#"
import time
from pyspark.sql import SparkSession
spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").config("spark.driver.memory", "4g").getOrCreate()
spark.sparkContext.setLogLevel("ERROR")
t = time.time()
spark.sql("INSERT OVERWRITE DIRECTORY '{out}' USING PARQUET SELECT * FROM range(0, {rows}, 1, {partitions})")
print(time.time() - t)
"#,
        out = out.display()
    );
    let output = std::process::Command::new(python)
        .args(["-c", &script])
        .stderr(Stdio::null())
        .output()
        .context("running pyspark")?;
    if !output.status.success() {
        bail!("the Spark run failed");
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let secs: f64 = text
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .parse()
        .context("reading Spark's time")?;
    Ok(Some(secs))
}

async fn range_bench(
    rows: u64,
    partitions: u64,
    dir: &Path,
    python: &str,
    no_spark: bool,
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
    let processes = processes_run(rows, partitions, &out, dir).await?;
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

    let spark = if no_spark {
        None
    } else {
        let out = dir.join("spark");
        let s = spark_run(python, rows, partitions, &out)?;
        if let Some(secs) = s {
            runs.push(figures("spark_local2", rows, secs, count_parquet(&out)));
        }
        s
    };
    let r = |a: f64, b: f64| ((a / b) * 1000.0).round() / 1000.0;
    Ok(json!({
        "bench": "range_to_parquet",
        "parquet_compression": sluice_core::session::PARQUET_COMPRESSION,
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
