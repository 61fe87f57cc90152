//! `sluice-scheduler`: Ballista's scheduler flags, plus `--config FILE` and
//! `SLUICE_<FLAG>` environment variables for every flag.

use std::path::PathBuf;

use anyhow::Context;
use ballista_scheduler::config::{Config, SchedulerConfig};
use clap::{CommandFactory, FromArgMatches, Parser};
use sluice_core::tls::{ClusterTls, TlsArgs};
use tracing_subscriber::EnvFilter;

/// sluice's scheduler: plans sluice jobs and hands tasks to sluice executors.
#[derive(Parser, Debug)]
#[command(name = "sluice-scheduler", version = sluice_core::config::VERSION)]
struct Cli {
    /// TOML file of settings, keys named like the long flags (e.g. `bind-port = 50050`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the DynamoDB write coordinator listens (HTTPS with --tls-*).
    /// Executors find it on the scheduler's host at this port unless told
    /// otherwise.
    #[arg(long, default_value = "0.0.0.0:50090")]
    coordinator_addr: std::net::SocketAddr,
    /// Absolute directories SQL may read and write on this machine (the
    /// scheduler lists tables while planning), comma-separated (default: none).
    #[arg(long, default_value = "")]
    allow_local_paths: String,
    #[command(flatten)]
    tls: TlsArgs,
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
    // Pull, as the executors: push scheduling needs an executor gRPC port
    // that sluice cannot put behind TLS.
    let cmd = Cli::command().mut_arg("scheduler_policy", |a| a.default_value("pull-staged"));
    let cmd = sluice_core::config::layered_command(cmd, file.as_deref())?;
    let cli = Cli::from_arg_matches(&cmd.get_matches_from(args))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 * 1024 * 1024)
        .build()?;
    let access = sluice_core::storage::local::LocalAccess::only(&cli.allow_local_paths)
        .map_err(|e| anyhow::anyhow!("--allow-local-paths: {e}"))?;
    let tls = cli.tls.load()?;
    runtime.block_on(run(
        cli.ballista,
        cli.coordinator_addr,
        access,
        tls,
        cli.tls.insecure_no_tls,
    ))
}

async fn run(
    opt: Config,
    coordinator: std::net::SocketAddr,
    access: sluice_core::storage::local::LocalAccess,
    tls: Option<ClusterTls>,
    insecure: bool,
) -> anyhow::Result<()> {
    let filter = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or(opt.log_level_setting.clone());
    // Logs on stderr, as the CLI's: stdout stays free for output.
    tracing_subscriber::fmt()
        .with_writer(sluice_core::error::redacting_stderr)
        .with_ansi(false)
        .with_env_filter(EnvFilter::new(filter))
        .init();
    let addr: std::net::SocketAddr = format!("{}:{}", opt.bind_host, opt.bind_port)
        .parse()
        .context("--bind-host/--bind-port")?;
    // Closed by default: every port checked before any is opened.
    let check =
        |what: &str, addr| sluice_core::tls::check_listen(what, addr, tls.as_ref(), insecure);
    check("the scheduler (gRPC and REST)", addr)?;
    check("the coordinator (--coordinator-addr)", coordinator)?;
    if let Some(addr) = sluice_core::metrics::addr_from_env()? {
        check("metrics (SLUICE_METRICS_ADDR)", addr)?;
        sluice_core::metrics::serve(addr, tls.clone()).await?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    let (handle, _) = sluice_core::coordinator::Coordinator::spawn(coordinator, tls.clone())
        .await
        .with_context(|| format!("starting the coordinator on {coordinator}"))?;
    if matches!(
        opt.scheduler_policy,
        ballista_core::config::TaskSchedulingPolicy::PushStaged
    ) && (tls.is_some() || !addr.ip().is_loopback())
    {
        anyhow::bail!(
            "--scheduler-policy push-staged needs an executor gRPC port sluice cannot put \
             behind TLS; use pull-staged (sluice's default) on a network"
        );
    }
    let config: SchedulerConfig = opt.try_into().context("scheduler settings")?;
    let config = sluice_scheduler::with_sluice(config, handle, access, tls.as_ref());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the scheduler to {addr}"))?;
    tracing::info!(%addr, tls = tls.is_some(), "scheduler listening");
    sluice_scheduler::start(listener, config, tls)
        .await?
        .await??;
    Ok(())
}
