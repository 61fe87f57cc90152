//! Command-line arguments. Every flag that has a config-file key documents it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version = sluice_core::config::VERSION,
    about = "Run SQL data jobs on a DataFusion Ballista cluster",
    long_about = "Run SQL data jobs on a DataFusion Ballista cluster.\n\n\
        Settings come from built-in defaults, then a TOML file (--config, SLUICE_CONFIG or \
        ./sluice.toml), then SLUICE_* environment variables, then flags."
)]
pub struct Cli {
    /// TOML config file (keys: scheduler, executors, executor_slots, connect_timeout_secs, log).
    #[arg(long, global = true, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Scheduler host:port for submit, jobs, status and cancel [config: scheduler; default localhost:50050].
    #[arg(long, global = true)]
    pub scheduler: Option<String>,
    /// Seconds to wait for the scheduler to answer before failing [config: connect_timeout_secs; default 10].
    #[arg(long, global = true)]
    pub connect_timeout: Option<u64>,
    /// Log filter, e.g. `info` or `sluice_core=debug` [config: log; default warn, quieter for executor poll loops; RUST_LOG wins].
    #[arg(long, global = true)]
    pub log: Option<String>,
    /// Cluster CA certificate(s), PEM, for a cluster with TLS [config: tls_ca].
    #[arg(long, global = true, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate, signed by the cluster CA [config: tls_cert].
    #[arg(long, global = true, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert [config: tls_key].
    #[arg(long, global = true, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Tables and a summary for people.
    Text,
    /// One JSON document on stdout for scripts.
    Json,
}

#[derive(Args, Debug)]
pub struct JobArgs {
    /// The job: a .sql file of statements separated by `;`.
    pub file: PathBuf,
    /// Define a job variable used as ${key}; repeatable.
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub var: Vec<String>,
    /// Output format of results and the summary.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a job on an embedded cluster: scheduler and executors in this process.
    Run {
        #[command(flatten)]
        job: JobArgs,
        /// Executors to start [config: executors; default 1].
        #[arg(long)]
        executors: Option<usize>,
        /// Task slots per executor [config: executor_slots; default: 2 x cores, at least 16].
        #[arg(long)]
        slots: Option<usize>,
    },
    /// Run a job on a remote cluster (see --scheduler).
    Submit {
        #[command(flatten)]
        job: JobArgs,
        /// When the scheduler restarts or forgets a running job, wait for it
        /// (up to 2 minutes) and run the statement again, up to 3 times; a
        /// write the lost job committed is not written again.
        #[arg(long)]
        resubmit_on_scheduler_loss: bool,
    },
    /// List the scheduler's jobs.
    Jobs {
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Show one job's state and progress; exits non-zero if it failed.
    Status {
        job_id: String,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Cancel a running job.
    Cancel { job_id: String },
    /// Show the DynamoDB write coordinator's tables: budget, current rate,
    /// live writers and their grants, consumed WCU, throttles.
    Limiter {
        /// The coordinator (`host:port` or a URL); default: the
        /// scheduler's host on port 50090.
        #[arg(long)]
        coordinator: Option<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Run a job as a micro-batch stream over what arrives in its directory
    /// tables (on the embedded cluster, or on --scheduler's), or show a
    /// stream's recent batches (`sluice stream status CHECKPOINT`).
    Stream(StreamArgs),
    /// Make the cluster's TLS files: a CA, and certificates it signs.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Abort the uploads and remove the staging of writes to OUTPUT whose
    /// client died before it could (killed with SIGKILL, lost its machine).
    Clean {
        /// The output directory URL the writes went to.
        output: String,
        /// Only writes whose newest staged object is at least this old, so a
        /// write still running is left alone.
        #[arg(long, default_value_t = 60)]
        older_than_mins: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// A new cluster CA: DIR/ca.pem (give it to every process as --tls-ca)
    /// and DIR/ca.key (keep it off the cluster).
    Ca {
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "sluice cluster CA")]
        name: String,
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// A certificate NAME signed by the CA in DIR, for the hosts peers dial
    /// (DNS names or IP addresses): OUT/NAME.pem and OUT/NAME.key, usable
    /// as --tls-cert/--tls-key by a scheduler, an executor or a client.
    Issue {
        dir: PathBuf,
        name: String,
        /// A DNS name or IP address of this process; repeatable.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
        /// Where the files go (not DIR: the CA key stays off the hosts).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct StreamArgs {
    #[command(subcommand)]
    pub command: Option<StreamCommand>,
    /// The job: a .sql file whose directory tables are the stream's sources.
    #[arg(required = true)]
    pub file: Option<PathBuf>,
    /// Define a job variable used as ${key}; repeatable.
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub var: Vec<String>,
    /// Text lines, or one JSON line per batch (and a last one for the run).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// The stream's checkpoint directory (local path or s3://): its batches'
    /// inputs and commits, so a restart continues exactly once.
    #[arg(long, required = true)]
    pub checkpoint: Option<String>,
    /// A batch every interval while input arrives; a batch that overruns is
    /// followed at once. The default trigger, every 10s.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with_all = ["once", "available_now"])]
    pub every: Option<Duration>,
    /// One batch over what is there, then exit.
    #[arg(long, conflicts_with = "available_now")]
    pub once: bool,
    /// Batches over what is there now (each capped), then exit.
    #[arg(long)]
    pub available_now: bool,
    /// Files a batch takes from a file source, oldest first.
    #[arg(long, default_value_t = 1000)]
    pub max_files_per_batch: usize,
    /// Files this much older than the newest taken are ignored and forgotten.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
    pub max_file_age: Duration,
    /// How long the checkpoint's claim outlives a stream process that died.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub lock_ttl: Duration,
    /// Cancel a batch that runs longer than this (its job is cancelled, its
    /// writes cleaned up): it fails, and under --every runs again (default: no bound).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub batch_timeout: Option<Duration>,
    /// An alarm rule, e.g. "scheduling_share > 0.5 for 3",
    /// "total_delay > 2 intervals", "no_commit > 10m"; repeatable.
    #[arg(long = "alarm", value_name = "RULE")]
    pub alarms: Vec<String>,
    /// POST each alarm change as JSON to this URL (5 s timeout, in the background).
    #[arg(long)]
    pub alarm_webhook: Option<String>,
    /// Run this shell command with each alarm change as JSON on stdin.
    #[arg(long)]
    pub alarm_command: Option<String>,
    /// Executors of the embedded cluster [config: executors; default 1].
    #[arg(long)]
    pub executors: Option<usize>,
}

#[derive(Subcommand, Debug)]
pub enum StreamCommand {
    /// A stream's recent batches: delays, input, lag, and who runs it.
    Status {
        checkpoint: String,
        /// How many of the last batches to show.
        #[arg(long, default_value_t = 10)]
        last: usize,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
}
