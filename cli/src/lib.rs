//! The `sluice` command's library: argument definitions, the embedded
//! cluster, progress display and the summary. `main.rs` only wires them.

pub mod args;
pub mod bench;
pub mod display;
pub mod embedded;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sluice_core::config::SluiceConfig;
use sluice_core::runner::{self, JobReport, JobRunner, SchedulerApi};

use crate::args::{Cli, Command, JobArgs, OutputFormat};
use crate::display::{CliProgress, print_report};

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
    if let Some(l) = &cli.log {
        config.log = l.clone();
    }
    Ok(config)
}

/// Runs the parsed command; the returned error is what the user sees.
pub async fn dispatch(cli: Cli) -> Result<()> {
    let mut config = load_config(&cli)?;
    // The embedded cluster writes and commits in this process.
    if matches!(cli.command, Command::Run { .. }) {
        sluice_core::metrics::serve_from_env()?;
    }
    let timeout = Duration::from_secs(config.connect_timeout_secs);
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
            run_job(&job, &cluster.endpoint, timeout).await
        }
        Command::Submit { job } => run_job(&job, &config.scheduler, timeout).await,
        Command::Limiter {
            coordinator,
            output,
        } => {
            let url = coordinator.unwrap_or_else(|| {
                let host = config
                    .scheduler
                    .rsplit_once(':')
                    .map_or(config.scheduler.as_str(), |(h, _)| h);
                format!(
                    "http://{host}:{}",
                    sluice_core::dynamo::limiter::DEFAULT_COORDINATOR_PORT
                )
            });
            let tables = sluice_core::dynamo::limiter::fetch_status(&url, timeout)
                .await
                .map_err(|e| anyhow::anyhow!("DynamoDB coordinator at {url}: {e}"))?;
            display::print_limiter(&tables, output);
            Ok(())
        }
        Command::Jobs { output } => {
            runner::wait_for_scheduler(&config.scheduler, timeout).await?;
            let jobs = SchedulerApi::new(&config.scheduler)?.jobs().await?;
            display::print_jobs(&jobs, output);
            Ok(())
        }
        Command::Status { job_id, output } => {
            runner::wait_for_scheduler(&config.scheduler, timeout).await?;
            let api = SchedulerApi::new(&config.scheduler)?;
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
            runner::wait_for_scheduler(&config.scheduler, timeout).await?;
            SchedulerApi::new(&config.scheduler)?
                .cancel(&job_id)
                .await?;
            println!("cancelled {job_id}");
            Ok(())
        }
        Command::Clean {
            output,
            older_than_mins,
        } => {
            let cleaned = sluice_core::write::clean_abandoned(
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
        Command::Bench(args) => bench::run(args).await,
    }
}

async fn run_job(job: &JobArgs, endpoint: &str, timeout: Duration) -> Result<()> {
    let vars = parse_vars(&job.var)?;
    let source = std::fs::read_to_string(&job.file)
        .with_context(|| format!("reading job file {}", job.file.display()))?;
    let file = job.file.display().to_string();
    let ctx = runner::connect(endpoint, timeout).await?;
    let progress = Arc::new(CliProgress::new(job.output == OutputFormat::Text));
    let runner = JobRunner::new(ctx, endpoint, progress.clone())?;
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
