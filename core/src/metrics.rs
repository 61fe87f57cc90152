//! Prometheus metrics of the write path, on every process that writes or
//! commits. A process serves them at `http://$SLUICE_METRICS_ADDR/metrics`
//! when that variable is set (`sluice-scheduler`, `sluice-executor`, and
//! `sluice run` for its embedded cluster).
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

/// The variable naming the address to serve `/metrics` on.
pub const METRICS_ADDR_ENV: &str = "SLUICE_METRICS_ADDR";

/// Serves `/metrics` on `$SLUICE_METRICS_ADDR` when it is set. Returns the
/// address served, if any. Must run inside a tokio runtime.
pub fn serve_from_env() -> Result<Option<SocketAddr>, SluiceError> {
    let Ok(raw) = std::env::var(METRICS_ADDR_ENV) else {
        return Ok(None);
    };
    let addr: SocketAddr = raw.parse().map_err(|source| SluiceError::BadAddress {
        variable: METRICS_ADDR_ENV,
        value: raw.clone(),
        source,
    })?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|source| SluiceError::Metrics {
            addr,
            source: Box::new(source),
        })?;
    Ok(Some(addr))
}

/// One multipart part sent.
pub fn part_uploaded(took: Duration) {
    counter!("sluice_s3_parts_total").increment(1);
    histogram!("sluice_s3_part_seconds").record(took.as_secs_f64());
}
