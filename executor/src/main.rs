//! `sluice-executor`: Ballista's executor flags, plus `--config FILE` and
//! `SLUICE_<FLAG>` environment variables for every flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ballista_executor::config::Config;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_executor::health::spawn_health_server;
use clap::{CommandFactory, FromArgMatches, Parser};
use tracing_subscriber::EnvFilter;

/// sluice's executor: runs the tasks of sluice jobs.
#[derive(Parser, Debug)]
#[command(name = "sluice-executor", version = sluice_core::config::VERSION)]
struct Cli {
    /// TOML file of settings, keys named like the long flags (e.g. `scheduler-port = 50050`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The cluster's coordinator (`host:port`; https with --tls-*); by
    /// default the scheduler's host, port 50090.
    #[arg(long)]
    coordinator_url: Option<String>,
    /// Absolute directories SQL may read and write on this machine,
    /// comma-separated (default: none; the work dir is not SQL's).
    #[arg(long, default_value = "")]
    allow_local_paths: String,
    #[command(flatten)]
    tls: sluice_core::tls::TlsArgs,
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
    let run = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run()));
    match run {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", sluice_core::error::render(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    sluice_core::alloc::tune(10_000);
    let args: Vec<String> = std::env::args().collect();
    let file = sluice_core::config::config_file_arg(&args);
    // Pull: push scheduling serves an executor gRPC port that sluice
    // cannot put behind TLS.
    let cmd = Cli::command().mut_arg("task_scheduling_policy", |a| a.default_value("pull-staged"));
    let cmd = sluice_core::config::layered_command(cmd, file.as_deref())?;
    let cli = Cli::from_arg_matches(&cmd.get_matches_from(args))?;
    let opt = cli.ballista;
    let tls = cli.tls.load()?;
    let coordinator = cli.coordinator_url.unwrap_or_else(|| {
        format!(
            "{}:{}",
            opt.scheduler_host,
            sluice_core::coordinator::DEFAULT_COORDINATOR_PORT
        )
    });
    let health_addr: SocketAddr = format!("{}:{}", opt.bind_host, opt.bind_health_port)
        .parse()
        .context("--bind-host/--bind-health-port")?;
    let flight_addr: SocketAddr = format!("{}:{}", opt.bind_host, opt.bind_port)
        .parse()
        .context("--bind-host/--bind-port")?;
    // Closed by default: every port that serves data or work is checked
    // before any is opened (the health port only answers probes).
    let check = |what: &str, addr| {
        sluice_core::tls::check_listen(what, addr, tls.as_ref(), cli.tls.insecure_no_tls)
    };
    check("the executor's Flight service (shuffle data)", flight_addr)?;
    let config: ExecutorProcessConfig = opt.try_into().context("executor settings")?;
    if matches!(
        config.task_scheduling_policy,
        ballista_core::config::TaskSchedulingPolicy::PushStaged
    ) && (tls.is_some() || !flight_addr.ip().is_loopback())
    {
        anyhow::bail!(
            "--task-scheduling-policy push-staged serves an executor gRPC port sluice cannot \
             put behind TLS; use pull-staged (sluice's default) on a network"
        );
    }
    let access = sluice_core::storage::local::LocalAccess::only(&cli.allow_local_paths)
        .map_err(|e| anyhow::anyhow!("--allow-local-paths: {e}"))?;
    let config = sluice_executor::with_sluice(
        config,
        sluice_core::coordinator::CoordinatorHandle::remote(&coordinator, tls.as_ref())?,
        access,
        tls.as_ref(),
    )?;
    let filter =
        std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or(config.special_mod_log_level.clone());
    // Logs on stderr, as the CLI's: stdout stays free for output.
    tracing_subscriber::fmt()
        .with_writer(sluice_core::error::redacting_stderr)
        .with_ansi(false)
        .with_env_filter(EnvFilter::new(filter))
        .init();
    if let Some(addr) = sluice_core::metrics::addr_from_env()? {
        check("metrics (SLUICE_METRICS_ADDR)", addr)?;
        sluice_core::metrics::serve(addr, tls.clone()).await?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    let (stop_health, health_rx) = tokio::sync::oneshot::channel();
    let health = spawn_health_server(health_addr, config.health.clone(), health_rx);
    let result = start_executor_process(Arc::new(config)).await;
    let _ = stop_health.send(());
    let _ = health.await;
    result?;
    Ok(())
}
