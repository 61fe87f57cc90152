//! `sluice-scheduler`: Ballista's scheduler flags, plus `--config FILE` and
//! `SLUICE_<FLAG>` environment variables for every flag.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{Config, SchedulerConfig};
use ballista_scheduler::scheduler_process::start_server;
use clap::{CommandFactory, FromArgMatches, Parser};
use tracing_subscriber::EnvFilter;

/// sluice's scheduler: plans sluice jobs and hands tasks to sluice executors.
#[derive(Parser, Debug)]
#[command(name = "sluice-scheduler", version)]
struct Cli {
    /// TOML file of settings, keys named like the long flags (e.g. `bind-port = 50050`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the DynamoDB write coordinator listens (HTTP). Executors find
    /// it on the scheduler's host at this port unless told otherwise.
    #[arg(long, default_value = "0.0.0.0:50090")]
    coordinator_addr: std::net::SocketAddr,
    /// Absolute directories SQL may read and write on this machine (the
    /// scheduler lists tables while planning), comma-separated (default: none).
    #[arg(long, default_value = "")]
    allow_local_paths: String,
    #[command(flatten)]
    ballista: Config,
}

// mimalloc, as Ballista's own binaries use: Parquet encoding allocates a
// lot from many threads, and in the embedded cluster all executors share
// one process.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One line naming what failed, not anyhow's debug dump (and backtrace).
fn main() -> std::process::ExitCode {
    match start() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", sluice_core::error::render(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn start() -> anyhow::Result<()> {
    sluice_core::alloc::tune(10_000);
    let args: Vec<String> = std::env::args().collect();
    let file = sluice_core::config::config_file_arg(&args);
    let cmd = sluice_core::config::layered_command(Cli::command(), file.as_deref())?;
    let cli = Cli::from_arg_matches(&cmd.get_matches_from(args))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 * 1024 * 1024)
        .build()?;
    let access = sluice_core::storage::local::LocalAccess::only(&cli.allow_local_paths)
        .map_err(|e| anyhow::anyhow!("--allow-local-paths: {e}"))?;
    runtime.block_on(run(cli.ballista, cli.coordinator_addr, access))
}

async fn run(
    opt: Config,
    coordinator: std::net::SocketAddr,
    access: sluice_core::storage::local::LocalAccess,
) -> anyhow::Result<()> {
    let filter = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or(opt.log_level_setting.clone());
    // Logs on stderr, as the CLI's: stdout stays free for output.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(EnvFilter::new(filter))
        .init();
    let addr = format!("{}:{}", opt.bind_host, opt.bind_port)
        .parse()
        .context("--bind-host/--bind-port")?;
    if let Some(addr) = sluice_core::metrics::serve_from_env()? {
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    let (handle, _) = sluice_core::coordinator::Coordinator::spawn(coordinator)
        .await
        .with_context(|| format!("starting the coordinator on {coordinator}"))?;
    let config: SchedulerConfig = opt.try_into().context("scheduler settings")?;
    let config = sluice_scheduler::with_sluice(config, handle, access);
    let cluster = BallistaCluster::new_from_config(&config).await?;
    start_server(cluster, addr, Arc::new(config)).await?;
    Ok(())
}
