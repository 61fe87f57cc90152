//! The embedded cluster of `sluice run`: a scheduler and N executors in this
//! process, on loopback ports the OS picks, torn down when the process exits.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ballista_core::config::TaskSchedulingPolicy;
use ballista_scheduler::config::SchedulerConfig;
use sluice_core::client::SchedulerApi;

pub struct EmbeddedCluster {
    /// `host:port` of the scheduler (gRPC and REST).
    pub endpoint: String,
    /// `http://host:port` of the in-process coordinator.
    pub coordinator: Option<String>,
}

impl EmbeddedCluster {
    pub async fn start(executors: usize, slots: usize) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the embedded scheduler")?;
        // A finished job's shuffle files go after 30 s rather than Ballista's
        // 300: nobody reads them once the client has the (small) result, and
        // back-to-back jobs of a long `sluice run` or bench otherwise keep
        // gigabytes each on local disk.
        let config = SchedulerConfig::default()
            .with_scheduler_policy(TaskSchedulingPolicy::PullStaged)
            .with_finished_job_data_clean_up_interval_seconds(30);
        // The coordinator, as a separate scheduler would run it; the
        // scheduler registers the writes it plans with it.
        let (coordinator, _) =
            sluice_core::coordinator::Coordinator::spawn(([127, 0, 0, 1], 0).into(), None)
                .await
                .context("starting the coordinator")?;
        let (addr, _handle) =
            sluice_scheduler::start_in_process(listener, config, coordinator.clone())
                .await
                .context("starting the embedded scheduler")?;
        let endpoint = addr.to_string();
        sluice_core::client::wait_for_scheduler(&endpoint, None, Duration::from_secs(10)).await?;
        for i in 0..executors {
            start_executor_thread(i, format!("http://{endpoint}"), slots, coordinator.clone())
                .await?;
        }
        wait_for_executors(&endpoint, executors).await?;
        Ok(Self {
            endpoint,
            coordinator: coordinator.url.clone(),
        })
    }
}

/// Starts one executor on its own runtime and threads, as a separate process
/// would have: CPU-bound encoding on the executors' threads must not delay the
/// scheduler and client on this process's runtime (measured on 2 cores,
/// `range_to_parquet` 2e8 rows: 3.36 s sharing one runtime, 2.84 s for
/// separate processes).
async fn start_executor_thread(
    index: usize,
    scheduler: String,
    slots: usize,
    coordinator: sluice_core::coordinator::CoordinatorHandle,
) -> Result<()> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::Builder::new()
        .name(format!("sluice-executor-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name(format!("sluice-executor-{index}"))
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("executor runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let started = sluice_executor::start_in_process(&scheduler, slots, coordinator)
                    .await
                    .context("starting an embedded executor");
                let ok = started.is_ok();
                let _ = ready_tx.send(started);
                if ok {
                    // Serve until the process exits.
                    std::future::pending::<()>().await;
                }
            });
        })
        .context("spawning an executor thread")?;
    ready_rx
        .await
        .context("the executor thread ended before starting")?
}

/// Waits until `n` executors have registered, so the first job is not planned
/// against an empty cluster.
async fn wait_for_executors(endpoint: &str, n: usize) -> Result<()> {
    let api = SchedulerApi::new(endpoint, None)?;
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
