//! `sluice-bench`: sluice's benchmarks, each printing JSON figures measured
//! side by side in one run (ratios, since these machines are shared and
//! noisy). Kept out of the product binary: it drives Spark and the test
//! clusters, which `sluice` has no business shipping.
//!
//! Run with a release build: `cargo run --release -p sluice-test-support
//! --bin sluice-bench -- range`.
// The stream runner's future (a batch, its watch, the search) nests deeper
// than the default limit when its layout is computed in this binary.
#![recursion_limit = "256"]

mod changes;
mod common;
mod partitioned;
mod range;
mod s3_commit;
mod scan;
mod spark;
mod stream;
mod tls;

use std::path::PathBuf;

use anyhow::Result;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::common::PartitionedShape;
use crate::partitioned::partitioned_bench;
use crate::range::range_bench;
use crate::s3_commit::s3_commit_bench;

#[derive(Parser, Debug)]
#[command(name = "sluice-bench", about = "sluice's benchmarks, as JSON")]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: Bench,
}

// mimalloc, as the product binaries use: the embedded cluster runs here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    sluice_core::alloc::tune(-1);
    let args = BenchArgs::parse();
    // SAFETY: no other thread exists yet. The embedded cluster's shuffle
    // files stay under this directory, removed on exit.
    let scratch = unsafe { sluice_cli::contain_tmpdir() };
    sluice_cli::finish_main(sluice_core::config::DEFAULT_LOG.into(), run(args), scratch)
}

/// Where a local benchmark writes, and the Spark it compares with.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Scratch directory (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Python with pyspark for the Spark run (skipped when it cannot import pyspark).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Skip the Spark run.
    #[arg(long)]
    no_spark: bool,
}

impl CompareArgs {
    pub fn scratch(&self) -> Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new()
            .prefix("sluice-bench")
            .tempdir_in(self.dir.clone().unwrap_or_else(std::env::temp_dir))?)
    }

    /// The Python to run Spark with, unless skipped.
    pub fn spark(&self) -> Option<&str> {
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
        /// Distributions to time, comma-separated.
        #[arg(long, default_value = "skew,hash,none", value_delimiter = ',')]
        modes: Vec<String>,
        /// Also write with `skew` on a scheduler and this many executor
        /// processes: time and peak RSS per executor (0: skip).
        #[arg(long, default_value_t = 0)]
        processes: usize,
        /// Task slots per executor process (default: the product's default).
        #[arg(long)]
        slots: Option<usize>,
        /// An engine setting for the timed writes, `key=value` (repeatable),
        /// e.g. `ballista.shuffle.sort_based.memory_limit_per_task_bytes=268435456`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        #[command(flatten)]
        common: CompareArgs,
    },
    /// The cost of mutual TLS: range_to_parquet and a DynamoDB write on a
    /// scheduler and two executor processes, TLS off and on.
    Tls {
        /// Rows of the range job.
        #[arg(long, default_value_t = 20_000_000)]
        rows: u64,
        /// Rows of the skewed partitioned write (a full shuffle).
        #[arg(long, default_value_t = 10_000_000)]
        skewed_rows: u64,
        /// Items of the DynamoDB write (0: skip; needs AWS_ENDPOINT_URL_DYNAMODB).
        #[arg(long, default_value_t = 20_000)]
        items: u64,
        /// Rounds of off and on, order alternating; times are medians.
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
    /// Micro-batch streams against Spark Structured Streaming: per-batch
    /// overhead (one small file a batch) and file-source throughput.
    Stream {
        /// Batches of one small file, for the overhead's median.
        #[arg(long, default_value_t = 20)]
        batches: usize,
        /// Rows of `skewed_events` for the throughput run.
        #[arg(long, default_value_t = 2_000_000)]
        rows: u64,
        /// Parquet files they arrive in.
        #[arg(long, default_value_t = 20)]
        files: u64,
        /// Files a batch takes in the throughput run.
        #[arg(long, default_value_t = 5)]
        per_batch: usize,
        /// Skewed events for the Kafka throughput run (0: no Kafka figures).
        #[arg(long, default_value_t = 60_000)]
        kafka_records: u64,
        /// A Kafka broker (host:port) to use; by default a private tansu
        /// from the test cache (`scripts/test-servers.sh` builds it).
        #[arg(long)]
        kafka: Option<String>,
        #[command(flatten)]
        common: CompareArgs,
    },
    /// Change streams: events a second from DynamoDB Local's stream and
    /// from kinesalite to both S3 layouts of `jobs/chat_changes.sql`, and the
    /// lag from write to commit under a steady load (servers from
    /// `scripts/test-servers.sh`).
    Changes {
        /// Chat items preloaded and drained.
        #[arg(long, default_value_t = 20_000)]
        items: u64,
        /// Items a second written during the lag run.
        #[arg(long, default_value_t = 500)]
        rate: u64,
        /// Seconds of the lag run.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Kinesis records preloaded and drained.
        #[arg(long, default_value_t = 20_000)]
        records: u64,
    },
    /// A DynamoDB backfill into Parquet on a scheduler and 2 executors,
    /// through the read-capacity proxy: RCU/s against the budget, items/s,
    /// at read.percent 0.5 and 1.0 (servers from `scripts/test-servers.sh`).
    Scan {
        /// Items loaded and read (about 30 bytes plus `--item-bytes` each).
        #[arg(long, default_value_t = 20_000)]
        items: u64,
        /// The table's provisioned read capacity.
        #[arg(long, default_value_t = 400)]
        rcu: u64,
        #[arg(long, default_value_t = 8)]
        segments: u32,
        /// Distinct partition keys (DynamoDB Local cuts scan segments by
        /// their hash: few keys make uneven segments).
        #[arg(long, default_value_t = 100)]
        keys: u64,
        /// Bytes of each item's payload attribute.
        #[arg(long, default_value_t = 800)]
        item_bytes: usize,
        /// Strongly consistent reads (`read.consistent`): the same RCU
        /// budget in half the bytes.
        #[arg(long)]
        consistent: bool,
        /// Task slots per executor (2 executors): how many segments are
        /// read at once.
        #[arg(long, default_value_t = 2)]
        vcores: u32,
    },
    /// One write of `s3-commit`'s ledger pass (run by it, through its proxy).
    #[command(hide = true)]
    S3CommitLedger {
        #[arg(long)]
        rows: u64,
        #[arg(long)]
        partitions: u64,
        #[arg(long)]
        bucket: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        committer: String,
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
            modes,
            processes,
            slots,
            settings,
            common,
        } => {
            let scratch = common.scratch()?;
            let shape = PartitionedShape {
                rows,
                target,
                partitions,
                rounds: rounds.max(1),
                modes,
                processes,
                slots: slots
                    .unwrap_or_else(sluice_core::config::default_slots)
                    .max(1),
                settings: set_statements(&settings)?,
            };
            let report = partitioned_bench(shape, scratch.path(), common.spark()).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Bench::Tls {
            rows,
            skewed_rows,
            items,
            rounds,
            common,
        } => {
            let scratch = common.scratch()?;
            let report =
                tls::tls_bench(rows, skewed_rows, items, rounds.max(1), scratch.path()).await?;
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
        Bench::Stream {
            batches,
            rows,
            files,
            per_batch,
            kafka_records,
            kafka,
            common,
        } => {
            let scratch = common.scratch()?;
            let report = stream::stream_bench(
                batches.max(1),
                rows,
                files.max(1),
                per_batch.max(1),
                kafka_records,
                kafka,
                scratch.path(),
                common.spark(),
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Bench::Changes {
            items,
            rate,
            seconds,
            records,
        } => {
            let report =
                changes::changes_bench(items, rate.max(1), seconds.max(1), records).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Bench::Scan {
            items,
            rcu,
            segments,
            keys,
            item_bytes,
            consistent,
            vcores,
        } => {
            let scratch = tempfile::tempdir()?;
            let shape = scan::Shape {
                items,
                rcu: rcu.max(1),
                segments: segments.max(1),
                keys: keys.max(1),
                item_bytes,
                consistent,
                vcores: vcores.max(1),
            };
            let report = scan::scan_bench(&shape, scratch.path()).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Bench::S3CommitLedger {
            rows,
            partitions,
            bucket,
            prefix,
            committer,
        } => {
            let run =
                s3_commit::ledger_write(rows, partitions, &bucket, &prefix, &committer).await?;
            println!("{}", serde_json::to_string(&run)?);
            Ok(())
        }
    }
}

/// `--set key=value` arguments as `SET key = value;` statements.
fn set_statements(settings: &[String]) -> Result<String> {
    settings
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok(format!("SET {} = {};\n", k.trim(), v.trim()))
            }
            _ => anyhow::bail!("--set {kv}: expected KEY=VALUE"),
        })
        .collect()
}
