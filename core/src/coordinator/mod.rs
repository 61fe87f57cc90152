//! The cluster's coordinator: one small HTTP service that runs with the
//! scheduler (port 50090; in-process on the embedded cluster) and holds
//! what the executors must agree on while a job runs. One route module per
//! concern:
//!
//! - [`placement`]: running row counts of skew-aware partitioned writes
//!   (`/v1/chunks`);
//! - [`leases`]: one DynamoDB write budget per table, shared out among the
//!   writers running now (`/v1/dynamodb/*`).
//! - [`planned`]: the writes the scheduler planned, the only ones both
//!   routes serve.
//!
//! Its clients (the skew router, the DynamoDB writers' limiter) live with
//! the sinks that use them and speak the request types defined here.

pub mod leases;
pub mod placement;
pub mod planned;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use datafusion::prelude::SessionConfig;

use crate::clock::Clock;
use leases::{CapacitySource, DescribeTable, Leases};
use placement::ChunkBook;
use planned::PlannedWrites;

/// Default coordinator port, next to the scheduler's 50050.
pub const DEFAULT_COORDINATOR_PORT: u16 = 50090;
/// How often leases expire and capacities are re-read.
const TICK: Duration = Duration::from_millis(250);

/// How the operators of a process reach the coordinator. Each process sets
/// it once from its own settings (the executor from `--coordinator-url`,
/// the embedded cluster from the coordinator it starts) on the session
/// config its tasks run with, so operators read it from their task context
/// instead of globals or the environment.
#[derive(Clone, Default)]
pub struct CoordinatorHandle {
    /// `http://host:port` of the coordinator.
    pub url: Option<String>,
    /// The coordinator running in this process (the embedded cluster):
    /// placement without an HTTP round trip.
    pub local: Option<Coordinator>,
}

impl CoordinatorHandle {
    /// A coordinator reached over HTTP.
    pub fn remote(url: &str) -> Self {
        Self {
            url: Some(url.trim_end_matches('/').to_string()),
            local: None,
        }
    }

    /// This handle on `config`, for every task run with it.
    pub fn install(self, config: SessionConfig) -> SessionConfig {
        config.with_extension(Arc::new(self))
    }

    /// The handle a task's session carries (none: no coordinator).
    pub fn of(config: &SessionConfig) -> Arc<Self> {
        config.get_extension::<Self>().unwrap_or_default()
    }
}

/// The coordinator service; cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    pub leases: Leases,
    pub placement: ChunkBook,
    pub planned: PlannedWrites,
}

impl Default for Coordinator {
    fn default() -> Self {
        Self::new(crate::clock::system(), Arc::new(DescribeTable))
    }
}

impl Coordinator {
    pub fn new(clock: Arc<dyn Clock>, capacity: Arc<dyn CapacitySource>) -> Self {
        let planned = PlannedWrites::new(Arc::clone(&clock));
        Self {
            leases: Leases::new(Arc::clone(&clock), capacity).serving(planned.clone()),
            placement: ChunkBook::new(clock).serving(planned.clone()),
            planned,
        }
    }

    /// Every route of every concern.
    pub fn router(&self) -> axum::Router {
        self.leases
            .clone()
            .router()
            .merge(self.placement.clone().router())
    }

    /// Serves the API on `listener` and runs the lease and describe loop.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let leases = self.leases.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            loop {
                every.tick().await;
                leases.tick_and_describe();
            }
        });
        axum::serve(listener, self.router()).await
    }

    /// Binds `addr` and serves in the background; returns a handle for
    /// operators in this process (placement in-process, leases over HTTP,
    /// as on a cluster) and the bound address.
    pub async fn spawn(addr: SocketAddr) -> std::io::Result<(CoordinatorHandle, SocketAddr)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let coordinator = Self::default();
        let handle = CoordinatorHandle {
            url: Some(format!("http://{bound}")),
            local: Some(coordinator.clone()),
        };
        tokio::spawn(async move {
            if let Err(e) = coordinator.serve(listener).await {
                tracing::error!(error = %e, "coordinator stopped");
            }
        });
        tracing::info!(%bound, "coordinator listening");
        Ok((handle, bound))
    }
}

/// `GET /v1/dynamodb/tables` of the coordinator at `url`.
pub async fn fetch_lease_status(
    url: &str,
    timeout: Duration,
) -> Result<Vec<leases::TableStatus>, reqwest::Error> {
    let http = reqwest::Client::builder().timeout(timeout).build()?;
    http.get(format!("{}/v1/dynamodb/tables", url.trim_end_matches('/')))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}
