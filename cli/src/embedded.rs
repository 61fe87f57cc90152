//! The embedded cluster of `sluice run`: a scheduler and N executors in this
//! process, on loopback ports the OS picks, torn down when the process exits.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ballista_core::config::TaskSchedulingPolicy;
use ballista_scheduler::config::SchedulerConfig;
use sluice_core::runner::SchedulerApi;

pub struct EmbeddedCluster {
    /// `host:port` of the scheduler (gRPC and REST).
    pub endpoint: String,
}

impl EmbeddedCluster {
    pub async fn start(executors: usize, slots: usize) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the embedded scheduler")?;
        let config =
            SchedulerConfig::default().with_scheduler_policy(TaskSchedulingPolicy::PullStaged);
        let (addr, _handle) = sluice_scheduler::start_in_process(listener, config)
            .await
            .context("starting the embedded scheduler")?;
        let endpoint = addr.to_string();
        sluice_core::runner::wait_for_scheduler(&endpoint, Duration::from_secs(10)).await?;
        for _ in 0..executors {
            sluice_executor::start_in_process(&format!("http://{endpoint}"), slots)
                .await
                .context("starting an embedded executor")?;
        }
        wait_for_executors(&endpoint, executors).await?;
        Ok(Self { endpoint })
    }
}

/// Waits until `n` executors have registered, so the first job is not planned
/// against an empty cluster.
async fn wait_for_executors(endpoint: &str, n: usize) -> Result<()> {
    let api = SchedulerApi::new(endpoint)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = api.executors().await.map(|v| v.len()).unwrap_or(0);
        if seen >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {seen} of {n} embedded executors registered within 15s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
