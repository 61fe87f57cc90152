//! Prometheus metrics of the write path, on every process that writes or
//! commits. A process serves them at `http://$SLUICE_METRICS_ADDR/metrics`
//! when that variable is set (`sluice-scheduler`, `sluice-executor`, and
//! `sluice run` for its embedded cluster): over mutual TLS (`https://`)
//! when the process has cluster TLS, and on loopback only without it unless
//! the operator passed `--insecure-no-tls`.
//!
//! Names (all counters unless noted; `format` and `committer` labels):
//! - `sluice_write_rows_total`, `sluice_write_bytes_total`, `sluice_write_files_total`
//! - `sluice_write_partition_seconds` (histogram): one writer partition, start to last byte
//! - `sluice_s3_parts_total`, `sluice_s3_part_seconds` (histogram): multipart part uploads
//! - `sluice_commits_total`, `sluice_commit_seconds` (histogram),
//!   `sluice_committed_files_total`, `sluice_committed_rows_total`
//! - `sluice_uploads_aborted_total`: uploads of lost, retried or failed attempts

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, histogram};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::error::SluiceError;
use crate::tls::ClusterTls;

/// The variable naming the address to serve `/metrics` on.
pub const METRICS_ADDR_ENV: &str = "SLUICE_METRICS_ADDR";

/// The address `$SLUICE_METRICS_ADDR` names, if set.
pub fn addr_from_env() -> Result<Option<SocketAddr>, SluiceError> {
    let Ok(raw) = std::env::var(METRICS_ADDR_ENV) else {
        return Ok(None);
    };
    let addr: SocketAddr = raw.parse().map_err(|source| SluiceError::BadAddress {
        variable: METRICS_ADDR_ENV,
        value: raw.clone(),
        source,
    })?;
    Ok(Some(addr))
}

/// Installs the recorder and serves `/metrics` on `addr` in the background
/// (over mutual TLS with `tls`). Must run inside a tokio runtime.
pub async fn serve(addr: SocketAddr, tls: Option<ClusterTls>) -> Result<(), SluiceError> {
    let failed =
        |source: Box<dyn std::error::Error + Send + Sync>| SluiceError::Metrics { addr, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| failed(Box::new(e)))?;
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| failed(Box::new(e)))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Histograms keep samples until upkeep folds them in.
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = crate::tls::serve(listener, router, tls.as_ref()).await {
            tracing::error!(error = %e, %addr, "metrics server stopped");
        }
    });
    Ok(())
}

/// For processes without cluster TLS (`sluice run`): serves
/// `$SLUICE_METRICS_ADDR` when set, on loopback only.
pub async fn serve_from_env() -> Result<Option<SocketAddr>, SluiceError> {
    let Some(addr) = addr_from_env()? else {
        return Ok(None);
    };
    if !addr.ip().is_loopback() {
        return Err(SluiceError::Config(format!(
            "{METRICS_ADDR_ENV}={addr}: `sluice` serves metrics on loopback only (e.g. \
             127.0.0.1:{})",
            addr.port()
        )));
    }
    serve(addr, None).await?;
    Ok(Some(addr))
}

/// One multipart part sent.
pub fn part_uploaded(took: Duration) {
    counter!("sluice_s3_parts_total").increment(1);
    histogram!("sluice_s3_part_seconds").record(took.as_secs_f64());
}
