//! Command-line arguments. Every flag that has a config-file key documents it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
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
        /// The coordinator (`http://host:port`); default: the scheduler's
        /// host on port 50090.
        #[arg(long)]
        coordinator: Option<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
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
