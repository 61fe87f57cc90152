//! The `sluice` command's library: argument definitions, the embedded
//! cluster, progress display and the summary. `main.rs` only wires them.

// The stream runner's future is deep: computing its layout in
// `stream::run_stream` needs more than the default 128 (seen in a build
// from a fresh path, not in incremental ones).
#![recursion_limit = "256"]

pub mod args;
pub mod display;
pub mod embedded;
pub mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sluice_core::client::{self, JobReport, JobRunner, SchedulerApi};
use sluice_core::config::SluiceConfig;
use sluice_core::tls::ClusterTls;

use crate::args::{Cli, Command, JobArgs, OutputFormat};
use crate::display::{CliProgress, print_report};

/// Gives this process its own `TMPDIR`, removed when the returned
/// directory drops. Ballista's in-process executors put their shuffle files
/// in a temporary directory they never remove (the `TempDir` is dropped at
/// once); on a busy machine `/tmp` filled up with gigabytes per run.
///
/// # Safety
/// Sets an environment variable: call it before any other thread starts.
pub unsafe fn contain_tmpdir() -> Option<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("sluice-run-")
        .tempdir()
        .ok()?;
    // SAFETY: the caller guarantees this process has one thread.
    unsafe { std::env::set_var("TMPDIR", dir.path()) };
    Some(dir)
}

/// The rest of a `main` that runs on the embedded cluster (`sluice`,
/// `sluice-bench`): logs to stderr with `log` (`RUST_LOG` wins), runs `job`
/// on [`runtime`], prints its error once, and stops the runtime (executors
/// may still hold files open) before `scratch` is removed.
pub fn finish_main(
    log: String,
    job: impl std::future::Future<Output = Result<()>>,
    scratch: Option<tempfile::TempDir>,
) -> std::process::ExitCode {
    let filter = std::env::var(tracing_subscriber::EnvFilter::DEFAULT_ENV).unwrap_or(log);
    tracing_subscriber::fmt()
        .with_writer(sluice_core::error::redacting_stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .init();
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(job) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", sluice_core::error::render(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    };
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(scratch);
    code
}

/// The runtime the CLI (and the benchmarks, which drive the same embedded
/// cluster) run on: 32 MiB stacks, since planning deep queries recurses.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 * 1024 * 1024)
        .build()
}

/// Parses `--var key=value` pairs.
pub fn parse_vars(vars: &[String]) -> Result<HashMap<String, String>> {
    vars.iter()
        .map(|v| {
            let (k, val) = v
                .split_once('=')
                .with_context(|| format!("--var {v}: expected key=value"))?;
            if k.trim().is_empty() {
                bail!("--var {v}: the key is empty");
            }
            Ok((k.trim().to_string(), val.to_string()))
        })
        .collect()
}

/// Loads the config file and `SLUICE_*` variables, then applies flags.
pub fn load_config(cli: &Cli) -> Result<SluiceConfig> {
    let mut config = SluiceConfig::load(cli.config.as_deref())?;
    if let Some(s) = &cli.scheduler {
        config.scheduler = s.clone();
    }
    if let Some(t) = cli.connect_timeout {
        config.connect_timeout_secs = t;
    }
    for (flag, key) in [
        (&cli.tls_ca, &mut config.tls_ca),
        (&cli.tls_cert, &mut config.tls_cert),
        (&cli.tls_key, &mut config.tls_key),
    ] {
        if flag.is_some() {
            key.clone_from(flag);
        }
    }
    if let Some(l) = &cli.log {
        config.log = l.clone();
    }
    Ok(config)
}

/// Runs the parsed command; the returned error is what the user sees.
pub async fn dispatch(cli: Cli) -> Result<()> {
    let mut config = load_config(&cli)?;
    // The embedded cluster writes and commits in this process.
    let remote = cli.scheduler.is_some();
    if matches!(cli.command, Command::Run { .. } | Command::Stream(_)) {
        sluice_core::metrics::serve_from_env().await?;
    }
    let timeout = Duration::from_secs(config.connect_timeout_secs);
    // Only a remote cluster is dialled with TLS (the embedded one is this
    // process on loopback), so only commands that dial one load it.
    let remote_command = remote
        || matches!(
            cli.command,
            Command::Submit { .. }
                | Command::Jobs { .. }
                | Command::Status { .. }
                | Command::Cancel { .. }
                | Command::Limiter { .. }
        );
    let tls = if remote_command {
        ClusterTls::load_some(
            config.tls_ca.as_deref(),
            config.tls_cert.as_deref(),
            config.tls_key.as_deref(),
        )?
    } else {
        None
    };
    let tls = tls.as_ref();
    match cli.command {
        Command::Run {
            job,
            executors,
            slots,
        } => {
            if let Some(n) = executors {
                config.executors = n;
            }
            if let Some(n) = slots {
                config.executor_slots = n;
            }
            if config.executors == 0 {
                bail!("--executors must be at least 1");
            }
            let cluster =
                embedded::EmbeddedCluster::start(config.executors, config.slots()).await?;
            let coordinator = cluster.coordinator.clone();
            run_job(
                &job,
                &cluster.endpoint,
                None,
                coordinator,
                timeout,
                &config,
                0,
            )
            .await
        }
        Command::Stream(args) => {
            if let Some(crate::args::StreamCommand::Status {
                checkpoint,
                last,
                output,
            }) = &args.command
            {
                return stream::show_status(checkpoint, *last, *output).await;
            }
            if remote {
                let coordinator = default_coordinator(&config, tls);
                return stream::run_stream(
                    &args,
                    &config.scheduler,
                    tls,
                    Some(coordinator),
                    timeout,
                    &config,
                )
                .await;
            }
            if let Some(n) = args.executors {
                config.executors = n;
            }
            if config.executors == 0 {
                bail!("--executors must be at least 1");
            }
            let cluster =
                embedded::EmbeddedCluster::start(config.executors, config.slots()).await?;
            let coordinator = cluster.coordinator.clone();
            stream::run_stream(
                &args,
                &cluster.endpoint,
                None,
                coordinator,
                timeout,
                &config,
            )
            .await
        }
        Command::Submit {
            job,
            resubmit_on_scheduler_loss,
        } => {
            let coordinator = default_coordinator(&config, tls);
            let resubmit = if resubmit_on_scheduler_loss { 3 } else { 0 };
            run_job(
                &job,
                &config.scheduler,
                tls,
                Some(coordinator),
                timeout,
                &config,
                resubmit,
            )
            .await
        }
        Command::Limiter {
            coordinator,
            output,
        } => {
            let url = coordinator.unwrap_or_else(|| default_coordinator(&config, tls));
            let handle = sluice_core::coordinator::CoordinatorHandle::remote(&url, tls)?;
            let tables = sluice_core::coordinator::fetch_lease_status(&handle, timeout)
                .await
                .map_err(|e| {
                    let reason = sluice_core::error::render(&e);
                    let hint = sluice_core::tls::mismatch_hint(tls, &reason)
                        .map(|h| format!("; {h}"))
                        .unwrap_or_default();
                    anyhow::anyhow!("DynamoDB coordinator at {url}: {reason}{hint}")
                })?;
            display::print_limiter(&tables, output);
            Ok(())
        }
        Command::Jobs { output } => {
            client::wait_for_scheduler(&config.scheduler, tls, timeout).await?;
            let jobs = SchedulerApi::new(&config.scheduler, tls)?.jobs().await?;
            display::print_jobs(&jobs, output);
            Ok(())
        }
        Command::Status { job_id, output } => {
            client::wait_for_scheduler(&config.scheduler, tls, timeout).await?;
            let api = SchedulerApi::new(&config.scheduler, tls)?;
            let job = api
                .job(&job_id)
                .await
                .with_context(|| format!("job {job_id}"))?;
            let progress = api.progress(&job_id).await?;
            display::print_status(&job, &progress, output);
            if job["job_status"]
                .as_str()
                .is_some_and(|s| s.contains("Failed"))
            {
                bail!("job {job_id} failed: {}", job["status"]);
            }
            Ok(())
        }
        Command::Cancel { job_id } => {
            client::wait_for_scheduler(&config.scheduler, tls, timeout).await?;
            SchedulerApi::new(&config.scheduler, tls)?
                .cancel(&job_id)
                .await?;
            println!("cancelled {job_id}");
            Ok(())
        }
        Command::Certs(command) => certs(command),
        Command::Clean {
            output,
            older_than_mins,
        } => {
            let cleaned = sluice_core::sink::files::clean_abandoned(
                &output,
                Duration::from_secs(older_than_mins * 60),
            )
            .await?;
            for w in &cleaned {
                println!(
                    "write {}: aborted {} uploads, removed {} staged objects",
                    w.write_id, w.aborted_uploads, w.removed_objects
                );
            }
            println!("cleaned {} abandoned writes under {output}", cleaned.len());
            Ok(())
        }
    }
}

/// The configured coordinator, else the one next to the configured
/// scheduler (same host, its port), as a URL (`https://` with TLS).
fn default_coordinator(config: &SluiceConfig, tls: Option<&ClusterTls>) -> String {
    let scheme = sluice_core::tls::http_scheme(tls);
    if let Some(url) = &config.coordinator {
        return if url.contains("://") {
            url.clone()
        } else {
            format!("{scheme}://{url}")
        };
    }
    let host = config
        .scheduler
        .rsplit_once(':')
        .map_or(config.scheduler.as_str(), |(h, _)| h);
    format!(
        "{scheme}://{host}:{}",
        sluice_core::coordinator::DEFAULT_COORDINATOR_PORT
    )
}

/// `sluice certs`: the cluster's TLS files.
fn certs(command: crate::args::CertsCommand) -> Result<()> {
    use sluice_core::tls::issue;
    match command {
        crate::args::CertsCommand::Ca { dir, name, days } => {
            let cert = issue::init_ca(&dir, &name, days)?;
            println!("CA certificate: {}", cert.display());
            println!(
                "CA key: {} (keep it off the cluster)",
                dir.join(issue::CA_KEY).display()
            );
        }
        crate::args::CertsCommand::Issue {
            dir,
            name,
            hosts,
            days,
            out,
        } => {
            let (cert, key) = issue::issue(&dir, &name, &hosts, days, &out)?;
            println!("certificate: {}", cert.display());
            println!("key: {}", key.display());
        }
    }
    Ok(())
}

async fn run_job(
    job: &JobArgs,
    endpoint: &str,
    tls: Option<&ClusterTls>,
    coordinator: Option<String>,
    timeout: Duration,
    config: &SluiceConfig,
    resubmit: u32,
) -> Result<()> {
    let vars = parse_vars(&job.var)?;
    let source = std::fs::read_to_string(&job.file)
        .with_context(|| format!("reading job file {}", job.file.display()))?;
    let file = job.file.display().to_string();
    let ctx = client::connect(endpoint, tls, timeout).await?;
    let progress = Arc::new(CliProgress::new(job.output == OutputFormat::Text));
    let runner = JobRunner::new(ctx, endpoint, progress.clone())?
        .protect(&config.protected_outputs)?
        .with_coordinator(coordinator)
        .resubmit_on_scheduler_loss(resubmit)
        .no_executor_timeout(Duration::from_secs(config.no_executor_timeout_secs));
    let interrupter = runner.interrupter();
    let run = runner.run(&file, &source, &vars);
    tokio::pin!(run);
    let report: JobReport = tokio::select! {
        r = &mut run => r?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: cancelling the running job");
            interrupter.interrupt();
            // The runner cancels the job, cleans up the write, and fails; a
            // job that finished before the cancel took effect still reports.
            match tokio::time::timeout(Duration::from_secs(60), &mut run).await {
                Ok(Ok(report)) => {
                    eprintln!("interrupted too late: the job had already finished");
                    report
                }
                Ok(Err(e)) => return Err(anyhow::Error::from(e).context("interrupted")),
                Err(_) => bail!("interrupted; the job did not stop within 60s"),
            }
        }
    };
    progress.finish();
    print_report(&report, job.output);
    Ok(())
}

#[cfg(test)]
// figment's test jail returns its own (large) error type.
#[allow(clippy::result_large_err, clippy::panic)]
mod tests {
    use clap::Parser;

    use super::*;

    fn cli(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied()))
    }

    #[test]
    fn flags_win_over_env_which_wins_over_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "sluice.toml",
                "scheduler = \"file:1\"\nconnect_timeout_secs = 7\nexecutors = 3\nlog = \"info\"\n",
            )?;
            jail.set_env("SLUICE_CONNECT_TIMEOUT_SECS", "9");
            jail.set_env("SLUICE_LOG", "debug");
            let parsed = cli(&["--log", "trace", "jobs"]).map_err(|e| e.to_string())?;
            let c = load_config(&parsed).map_err(|e| e.to_string())?;
            // ./sluice.toml is read when present.
            assert_eq!(c.scheduler, "file:1");
            assert_eq!(c.executors, 3);
            // SLUICE_* over the file.
            assert_eq!(c.connect_timeout_secs, 9);
            // The flag over both.
            assert_eq!(c.log, "trace");
            let parsed = cli(&["--scheduler", "flag:2", "--connect-timeout", "1", "jobs"])
                .map_err(|e| e.to_string())?;
            let c = load_config(&parsed).map_err(|e| e.to_string())?;
            assert_eq!(
                (c.scheduler.as_str(), c.connect_timeout_secs),
                ("flag:2", 1)
            );
            assert_eq!(c.log, "debug");
            Ok(())
        });
    }

    #[test]
    fn defaults_hold_without_file_env_or_flags() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            let c = load_config(&cli(&["jobs"]).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            assert_eq!(c, SluiceConfig::default());
            Ok(())
        });
    }

    #[test]
    fn a_missing_config_file_and_a_bad_setting_are_named() {
        let parsed = cli(&["--config", "/nonexistent/s.toml", "jobs"]);
        let err = parsed
            .map_err(anyhow::Error::from)
            .and_then(|c| load_config(&c))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/s.toml"), "{err}");
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("sluice.toml", "executors = \"many\"\n")?;
            let err = load_config(&cli(&["jobs"]).map_err(|e| e.to_string())?)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("executors"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn arguments_parse_and_bad_ones_are_refused() {
        let parsed = cli(&[
            "run",
            "job.sql",
            "--var",
            "a=1",
            "--var",
            "b=x=y",
            "--executors",
            "2",
        ]);
        let Ok(Cli {
            command: Command::Run { job, executors, .. },
            ..
        }) = parsed
        else {
            panic!("run did not parse: {parsed:?}");
        };
        assert_eq!(executors, Some(2));
        let vars = parse_vars(&job.var).unwrap_or_default();
        assert_eq!(vars.get("a").map(String::as_str), Some("1"));
        assert_eq!(vars.get("b").map(String::as_str), Some("x=y"));
        assert!(parse_vars(&["novalue".to_string()]).is_err());
        assert!(parse_vars(&[" =1".to_string()]).is_err());
        assert!(cli(&["run"]).is_err(), "a job file is required");
        assert!(cli(&["run", "j.sql", "--output", "xml"]).is_err());
        assert!(cli(&["status"]).is_err(), "a job id is required");
        assert!(cli(&["bench"]).is_err(), "no bench in the product binary");
    }
}
