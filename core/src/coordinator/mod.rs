//! The cluster's coordinator: one small HTTP service that runs with the
//! scheduler (port 50090; in-process on the embedded cluster) and holds
//! what the executors must agree on while a job runs. One route module per
//! concern:
//!
//! - [`placement`]: running row counts of skew-aware partitioned writes
//!   (`/v1/chunks`);
//! - [`leases`]: one DynamoDB write budget per table, shared out among the
//!   writers running now (`/v1/dynamodb/*`).
//! - [`planned`]: the writes (and scans) the scheduler planned, the only
//!   ones both routes serve.
//!
//! The lease client ([`limiter`]) lives here because both the DynamoDB sink
//! and the DynamoDB scan use it; the skew router lives with the file sink.

pub mod leases;
pub mod limiter;
pub mod placement;
pub mod planned;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use datafusion::prelude::SessionConfig;

use crate::clock::Clock;
use crate::tls::{ClusterTls, TlsError};
use leases::{CapacitySource, DescribeTable, Leases};
use placement::ChunkBook;
use planned::PlannedWrites;

/// Default coordinator port, next to the scheduler's 50050.
pub const DEFAULT_COORDINATOR_PORT: u16 = 50090;
/// How often leases expire and capacities are re-read.
const TICK: Duration = Duration::from_millis(250);
/// The longest any coordinator call may take (callers set shorter ones).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the operators of a process reach the coordinator. Each process sets
/// it once from its own settings (the executor from `--coordinator-url`,
/// the embedded cluster from the coordinator it starts) on the session
/// config its tasks run with, so operators read it from their task context
/// instead of globals or the environment.
#[derive(Clone, Default)]
pub struct CoordinatorHandle {
    /// `http(s)://host:port` of the coordinator.
    pub url: Option<String>,
    /// The coordinator running in this process (the embedded cluster):
    /// placement without an HTTP round trip.
    pub local: Option<Coordinator>,
    /// One client for every call of this process (its tasks share the
    /// connections), presenting the cluster certificate when TLS is on.
    pub http: reqwest::Client,
}

impl CoordinatorHandle {
    /// A coordinator reached over HTTP(S): with cluster TLS always
    /// `https://`; without, `url`'s scheme or `http://`.
    pub fn remote(url: &str, tls: Option<&ClusterTls>) -> Result<Self, TlsError> {
        // With TLS every coordinator speaks https: an `http://` URL from an
        // older config would otherwise fail every call and quietly leave
        // the writers on their fallback rate.
        let url = url.trim_end_matches('/');
        let bare = url.split_once("://").map_or(url, |(_, rest)| rest);
        let url = match (tls, url.contains("://")) {
            (None, true) => url.to_string(),
            _ => format!("{}://{bare}", crate::tls::http_scheme(tls)),
        };
        Ok(Self {
            url: Some(url),
            local: None,
            http: crate::tls::http_client(tls, CLIENT_TIMEOUT)?,
        })
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

    /// Serves the API on `listener` (over mutual TLS with `tls`) and runs
    /// the lease and describe loop.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        tls: Option<ClusterTls>,
    ) -> std::io::Result<()> {
        let leases = self.leases.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            loop {
                every.tick().await;
                leases.tick_and_describe();
            }
        });
        crate::tls::serve(listener, self.router(), tls.as_ref()).await
    }

    /// Binds `addr` and serves in the background (over mutual TLS with
    /// `tls`); returns a handle for operators in this process (placement
    /// in-process, leases over HTTP, as on a cluster) and the bound address.
    pub async fn spawn(
        addr: SocketAddr,
        tls: Option<ClusterTls>,
    ) -> std::io::Result<(CoordinatorHandle, SocketAddr)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let coordinator = Self::default();
        let mut handle = CoordinatorHandle::remote(&bound.to_string(), tls.as_ref())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        handle.local = Some(coordinator.clone());
        tokio::spawn(async move {
            if let Err(e) = coordinator.serve(listener, tls).await {
                tracing::error!(error = %e, "coordinator stopped");
            }
        });
        tracing::info!(%bound, "coordinator listening");
        Ok((handle, bound))
    }
}

/// `GET /v1/dynamodb/tables` of the coordinator `handle` names.
pub async fn fetch_lease_status(
    handle: &CoordinatorHandle,
    timeout: Duration,
) -> Result<Vec<leases::TableStatus>, reqwest::Error> {
    let url = handle.url.as_deref().unwrap_or_default();
    handle
        .http
        .get(format!("{url}/v1/dynamodb/tables"))
        .timeout(timeout)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::issue;

    /// With TLS, a coordinator URL written for a plain cluster is dialled
    /// over https (plain http would fail every lease call).
    #[test]
    fn with_tls_the_coordinator_is_dialled_over_https() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("ca");
        issue::init_ca(&ca, "test CA", 2)?;
        let (cert, key) = issue::issue(&ca, "client", &["ops".into()], 2, dir.path())?;
        let tls = ClusterTls::load(&ca.join(issue::CA_CERT), &cert, &key)?;
        let handle = CoordinatorHandle::remote("http://s:50090/", Some(&tls))?;
        assert_eq!(handle.url.as_deref(), Some("https://s:50090"));
        let plain = CoordinatorHandle::remote("s:50090", None)?;
        assert_eq!(plain.url.as_deref(), Some("http://s:50090"));
        Ok(())
    }
}
