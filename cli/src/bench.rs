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

/// Where a local benchmark writes, and the Spark it compares with.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Scratch directory (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Python with pyspark for the Spark run (skipped when it cannot import pyspark).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Skip the Spark run.
    #[arg(long)]
    no_spark: bool,
}

impl CompareArgs {
    fn scratch(&self) -> Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new()
            .prefix("sluice-bench")
            .tempdir_in(self.dir.clone().unwrap_or_else(std::env::temp_dir))?)
    }

    /// The Python to run Spark with, unless skipped.
    fn spark(&self) -> Option<&str> {
        (!self.no_spark).then_some(self.python.as_str())
    }
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
        #[command(flatten)]
        common: CompareArgs,
    },
    /// The field notes' skewed stream written PARTITIONED BY (id) with a row
    /// target: files per id against the ideal, for each distribution.
    Partitioned {
        /// Rows of `skewed_events` to write.
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
        /// Target rows per file.
        #[arg(long, default_value_t = 240_000)]
        target: u64,
        /// Input partitions (map tasks).
        #[arg(long, default_value_t = 42)]
        partitions: u64,
        /// Rounds of skew, hash and none, interleaved; times are medians.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[command(flatten)]
        common: CompareArgs,
    },
    /// range_to_parquet to S3: the multipart committer vs rename-based v1 and v2.
    S3Commit {
        /// Rows to write.
        #[arg(long, default_value_t = 100_000_000)]
        rows: u64,
        /// Partitions (and files).
        #[arg(long, default_value_t = 100)]
        partitions: u64,
        /// Rounds of the three committers, order rotated; times are medians.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
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
            common,
        } => {
            let scratch = common.scratch()?;
            let report = range_bench(rows, partitions, scratch.path(), common.spark()).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Bench::Partitioned {
            rows,
            target,
            partitions,
            rounds,
            common,
        } => {
            let scratch = common.scratch()?;
            let shape = PartitionedShape {
                rows,
                target,
                partitions,
                rounds: rounds.max(1),
            };
            let report = partitioned_bench(shape, scratch.path(), common.spark()).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Bench::S3Commit {
            rows,
            partitions,
            rounds,
            bucket,
            server,
        } => {
            let report = s3_commit_bench(rows, partitions, rounds.max(1), &bucket, &server).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}

/// (directory name, rows) of every data file written.
type FileRows = Vec<(String, u64)>;

/// Rows per data file under `dir`, recursively, from the Parquet footers.
fn file_rows(dir: &Path) -> Result<FileRows> {
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

fn file_figures(name: &str, secs: f64, files: &[(String, u64)], ideal: u64, target: u64) -> Value {
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

struct PartitionedShape {
    rows: u64,
    target: u64,
    partitions: u64,
    rounds: usize,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

const PARTITIONED_MODES: [&str; 3] = ["skew", "hash", "none"];

async fn partitioned_bench(
    shape: PartitionedShape,
    dir: &Path,
    spark_python: Option<&str>,
) -> Result<Value> {
    let PartitionedShape {
        rows,
        target,
        partitions,
        rounds,
    } = shape;
    let seed = 1u64;
    let mut per_id: HashMap<i64, u64> = HashMap::new();
    for r in 0..rows {
        *per_id
            .entry(sluice_udfs::skewed::id_of(seed, r))
            .or_insert(0) += 1;
    }
    let ideal: u64 = per_id.values().map(|n| n.div_ceil(target)).sum();
    let cluster = EmbeddedCluster::start(1, sluice_core::config::default_slots()).await?;
    let ctx = runner::connect(&cluster.endpoint, Duration::from_secs(10)).await?;
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
        for mode in PARTITIONED_MODES {
            let out = dir.join(mode);
            let sql = format!(
                "CREATE EXTERNAL TABLE IF NOT EXISTS events STORED AS PARQUET LOCATION '{}/';\n\
                 COPY (SELECT seq, ts, payload, id FROM events) \
                 TO '{}' STORED AS PARQUET PARTITIONED BY (id) \
                 OPTIONS ('write.target_file_rows' '{target}', 'write.distribution' '{mode}');",
                input.display(),
                out.display()
            );
            let (_, secs) = timed_write(
                &runner,
                &format!("partitioned-{mode}.sql"),
                &sql,
                &HashMap::new(),
                rows,
            )
            .await?;
            let files = file_rows(&out)?;
            let counted: u64 = files.iter().map(|(_, r)| r).sum();
            if counted != rows {
                bail!("{mode}: the files hold {counted} rows, expected {rows}");
            }
            times.entry(mode).or_default().push(secs);
            last_files.insert(mode, files);
            std::fs::remove_dir_all(&out)?;
        }
    }
    let mut runs = vec![];
    let mut seconds = HashMap::new();
    for mode in PARTITIONED_MODES {
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
    Ok(json!({
        "bench": "skewed_events PARTITIONED BY (id)",
        "rows": rows,
        "target_file_rows": target,
        "input_partitions": partitions,
        "rounds": rounds,
        "ideal_files": ideal,
        "ids": per_id.len(),
        "runs": runs,
        "ratios": {
            "skew_time_over_hash": r(seconds["skew"], seconds["hash"]),
            "skew_time_over_none": r(seconds["skew"], seconds["none"]),
            "hash_time_over_none": r(seconds["hash"], seconds["none"]),
            "skew_time_over_spark": spark.as_ref().map(|(s, _)| r(seconds["skew"], *s)),
            "hash_time_over_spark": spark.as_ref().map(|(s, _)| r(seconds["hash"], *s)),
        },
        "spark_error": spark_error,
        "note": "both engines read the same Parquet input of skewed_events (written once, not timed); sluice times are medians over the rounds. skew: one shuffle, each id cut into chunks of the target as rows pass the map side, one file per chunk; hash: one shuffle by id, each id written by one task, files rolled at the target; none: no shuffle, every task writes every id it sees; Spark: REBALANCE(id) with AQE, maxRecordsPerFile = target",
    }))
}

/// The largest excess of an id's file count over `ceil(rows / target)`.
fn per_id_excess(files: &FileRows, per_id: &HashMap<i64, u64>, target: u64) -> i64 {
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

/// Spark 4's `REBALANCE(id)` on the same Parquet input, `maxRecordsPerFile`
/// at the target. Times reading, the shuffle and the write.
fn spark_rebalance(
    python: &str,
    input: &Path,
    target: u64,
    dir: &Path,
) -> Result<Option<(f64, FileRows)>> {
    let out = dir.join("spark");
    let script = format!(
        r#"
import time
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
         .config("spark.driver.memory", "4g").config("spark.sql.adaptive.enabled", "true")
         .config("spark.sql.files.maxRecordsPerFile", "{target}").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
spark.range(1).count()
t = time.time()
spark.read.parquet("{input}").createOrReplaceTempView("events")
spark.sql("SELECT /*+ REBALANCE(id) */ seq, ts, payload, id FROM events").write.partitionBy("id").mode("overwrite").parquet("{out}")
print(time.time() - t)
"#,
        input = input.display(),
        out = out.display()
    );
    match run_spark(python, &script)? {
        Some(secs) => Ok(Some((secs, file_rows(&out)?))),
        None => Ok(None),
    }
}

/// One write per committer into a fresh prefix, on one embedded cluster.
async fn s3_commit_bench(
    rows: u64,
    partitions: u64,
    rounds: usize,
    bucket: &str,
    server: &str,
) -> Result<Value> {
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
    let warm_report = runner
        .run("s3-commit-warmup.sql", &warm, &HashMap::new())
        .await?;
    // The warm-up's 100 near-empty files: what this server charges per file
    // to commit, whatever its size.
    let floor_ms = warm_report
        .statements
        .iter()
        .find_map(|s| s.write.as_ref())
        .map_or(0, |w| w.commit_ms);
    let profile = server_profile(bucket, &format!("bench-{run_id}/profile")).await?;
    let mut runs = vec![];
    let mut seconds = HashMap::new();
    let mut commit_seconds = HashMap::new();
    let mut rest_seconds = HashMap::new();
    const COMMITTERS: [&str; 3] = ["auto", "rename-v1", "rename-v2"];
    let mut measured: HashMap<&str, Vec<S3Run>> = HashMap::new();
    for round in 0..rounds {
        // Rotate the order so no committer always runs first (or last).
        for i in 0..COMMITTERS.len() {
            let committer = COMMITTERS[(i + round) % COMMITTERS.len()];
            let prefix = format!("bench-{run_id}/{committer}-{round}");
            let run = s3_commit_run(&runner, bucket, &prefix, committer, rows, partitions).await?;
            measured.entry(committer).or_default().push(run);
        }
    }
    for committer in COMMITTERS {
        let mut all = measured.remove(committer).unwrap_or_default();
        all.sort_by(|a, b| a.secs.total_cmp(&b.secs));
        let rounds: Vec<f64> = all.iter().map(|r| round3(r.secs)).collect();
        let Some(m) = all.get(all.len() / 2) else {
            bail!("{committer}: no run");
        };
        let name = if committer == "auto" {
            "sluice_multipart"
        } else {
            committer
        };
        let mut f = figures(name, rows, m.secs, m.files);
        f["rounds_seconds"] = json!(rounds);
        f["bytes"] = json!(m.bytes);
        f["mb_per_sec"] = json!((m.bytes as f64 / 1e6 / m.secs * 10.0).round() / 10.0);
        f["commit_seconds"] = json!(m.commit_secs);
        f["commit_publish_seconds"] = json!(m.publish_secs);
        f["commit_rest_seconds"] = json!(round3(m.commit_secs - m.publish_secs).max(0.0));
        f["commit_share_of_job"] = json!(((m.commit_secs / m.secs) * 10000.0).round() / 10000.0);
        runs.push(f);
        seconds.insert(committer, m.secs);
        commit_seconds.insert(committer, m.commit_secs);
        rest_seconds.insert(committer, (m.commit_secs - m.publish_secs).max(0.0));
    }
    let r = |a: f64, b: f64| ((a / b) * 1000.0).round() / 1000.0;
    Ok(json!({
        "bench": "range_to_parquet to S3: commit protocols",
        "s3_server": server,
        "endpoint": std::env::var("AWS_ENDPOINT_URL_S3").unwrap_or_default(),
        "rows": rows,
        "partitions": partitions,
        "rounds": rounds,
        "cores": cores,
        "runs": runs,
        "ratios": {
            "v1_time_over_sluice": r(seconds["rename-v1"], seconds["auto"]),
            "v2_time_over_sluice": r(seconds["rename-v2"], seconds["auto"]),
            "sluice_commit_share_of_job": r(commit_seconds["auto"], seconds["auto"]),
            "sluice_commit_without_completions_share_of_job": r(rest_seconds["auto"], seconds["auto"]),
            "v1_commit_over_sluice_commit": r(commit_seconds["rename-v1"], commit_seconds["auto"]),
        },
        "commit_floor": {
            "files": partitions,
            "rows": 1000,
            "commit_seconds": floor_ms as f64 / 1000.0,
        },
        "server_profile": profile,
        "note": "rename = copy + delete on S3; v1 renames in the task and again, one file at a time, in the job commit (as Hadoop's FileOutputCommitter); v2 renames inside the tasks, so its job commit only writes _SUCCESS. sluice completes every upload in the job commit: its commit time is the server's CompleteMultipartUpload cost (server_profile), which AWS S3 pays without moving data",
    }))
}

/// One committer's write in the S3 commit bench.
struct S3Run {
    secs: f64,
    commit_secs: f64,
    /// The commit's first phase, which makes the files visible (completions
    /// or renames: the server's work); the rest is sluice's own bookkeeping.
    publish_secs: f64,
    files: usize,
    bytes: u64,
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

async fn s3_commit_run(
    runner: &JobRunner,
    bucket: &str,
    prefix: &str,
    committer: &str,
    rows: u64,
    partitions: u64,
) -> Result<S3Run> {
    let sql = format!(
        "INSERT OVERWRITE DIRECTORY 's3://{bucket}/{prefix}' USING PARQUET \
         OPTIONS ('{COMMITTER_OPTION}' '{committer}') \
         SELECT * FROM range(0, {rows}, 1, {partitions});"
    );
    let (report, secs) = timed_write(
        runner,
        &format!("s3-commit-{committer}.sql"),
        &sql,
        &HashMap::new(),
        rows,
    )
    .await?;
    let manifest = read_manifest(bucket, prefix).await?;
    if manifest["rows"].as_u64() != Some(rows) {
        bail!("{committer}: _SUCCESS says {} rows", manifest["rows"]);
    }
    let commit_ms = report
        .statements
        .iter()
        .find_map(|s| s.write.as_ref())
        .map(|w| w.commit_ms as f64)
        .context("the write's commit time")?;
    let publish_ms = manifest["diagnostics"]["publish_ms"]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .context("publish_ms in the _SUCCESS diagnostics")?;
    Ok(S3Run {
        secs,
        commit_secs: commit_ms / 1000.0,
        publish_secs: publish_ms / 1000.0,
        files: report.files_written as usize,
        bytes: report.bytes_written,
    })
}

/// What the server charges for the calls the commit protocols rest on, on
/// one object of `PARTS` x 8 MiB, median of three: sluice's commit is
/// CompleteMultipartUpload, a rename is CopyObject (+ DeleteObject). AWS S3
/// completes an upload without moving its data and copies at its own pace;
/// a local server's costs can be the other way round, and the committers'
/// ratios follow from these figures.
async fn server_profile(bucket: &str, prefix: &str) -> Result<Value> {
    use object_store::multipart::MultipartStore;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStoreExt, PutPayload};
    const PART: usize = 8 * 1024 * 1024;
    const PARTS: usize = 4;
    let url = url::Url::parse(&format!("s3://{bucket}/"))?;
    let store = sluice_core::write::multipart::s3_store(&url)?;
    // Not constant, so a server that compresses or dedups pays in full.
    let part: bytes::Bytes = (0..PART)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into();
    let (mut put, mut copy, mut complete, mut tiny) = (vec![], vec![], vec![], vec![]);
    for round in 0..3 {
        let src = ObjectPath::from(format!("{prefix}/put-{round}"));
        let dst = ObjectPath::from(format!("{prefix}/copy-{round}"));
        let mp = ObjectPath::from(format!("{prefix}/multipart-{round}"));
        let small = ObjectPath::from(format!("{prefix}/tiny-{round}"));
        let t = Instant::now();
        store
            .put(&src, PutPayload::from_iter(vec![part.clone(); PARTS]))
            .await?;
        put.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        store.copy(&src, &dst).await?;
        copy.push(t.elapsed().as_secs_f64());
        let id = store.create_multipart(&mp).await?;
        let mut parts = vec![];
        for idx in 0..PARTS {
            parts.push(store.put_part(&mp, &id, idx, part.clone().into()).await?);
        }
        let t = Instant::now();
        store.complete_multipart(&mp, &id, parts).await?;
        complete.push(t.elapsed().as_secs_f64());
        let id = store.create_multipart(&small).await?;
        let one = store
            .put_part(&small, &id, 0, bytes::Bytes::from_static(b"x").into())
            .await?;
        let t = Instant::now();
        store.complete_multipart(&small, &id, vec![one]).await?;
        tiny.push(t.elapsed().as_secs_f64());
        for p in [&src, &dst, &mp, &small] {
            store.delete(p).await?;
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mb = (PART * PARTS) as f64 / 1e6;
    let rate = |secs: f64| (mb / secs * 10.0).round() / 10.0;
    let (put, copy, complete, tiny) = (
        median(&mut put),
        median(&mut copy),
        median(&mut complete),
        median(&mut tiny),
    );
    Ok(json!({
        "object_bytes": PART * PARTS,
        "parts": PARTS,
        "put_mb_per_sec": rate(put),
        "copy_mb_per_sec": rate(copy),
        "complete_multipart_mb_per_sec": rate(complete),
        "complete_one_byte_upload_ms": (tiny * 1e5).round() / 100.0,
        "complete_seconds_over_copy_seconds": ((complete / copy) * 1000.0).round() / 1000.0,
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
    let (_, secs) = timed_write(&runner, "range_to_parquet.sql", JOB, &vars, rows).await?;
    Ok(secs)
}

/// Runs job `name` and times it; an error unless it wrote exactly `rows`.
async fn timed_write(
    runner: &JobRunner,
    name: &str,
    sql: &str,
    vars: &HashMap<String, String>,
    rows: u64,
) -> Result<(runner::JobReport, f64)> {
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

/// Runs a pyspark `script` that prints its measured seconds last; `None`
/// when `python` cannot import pyspark. Bounded to 30 minutes.
fn run_spark(python: &str, script: &str) -> Result<Option<f64>> {
    let probe = std::process::Command::new(python)
        .args(["-c", "import pyspark"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        return Ok(None);
    }
    // Files, not pipes: Spark can log more than a pipe holds while we wait.
    let (stdout, stderr) = (
        tempfile::NamedTempFile::new()?,
        tempfile::NamedTempFile::new()?,
    );
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        // Python UDF workers must run the interpreter that has pyspark.
        .env("PYSPARK_PYTHON", python)
        .stdout(stdout.reopen()?)
        .stderr(stderr.reopen()?)
        .spawn()
        .context("running pyspark")?;
    let deadline = Instant::now() + Duration::from_secs(30 * 60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the Spark run took over 30 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !status.success() {
        let err = std::fs::read_to_string(stderr.path()).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        bail!(
            "the Spark run failed: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    let secs: f64 = std::fs::read_to_string(stdout.path())?
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .parse()
        .context("reading Spark's time")?;
    Ok(Some(secs))
}

fn spark_run(python: &str, rows: u64, partitions: u64, out: &Path) -> Result<Option<f64>> {
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
    run_spark(python, &script)
}

async fn range_bench(
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
