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
use crate::write::{Committer, WriteSpec};

/// The variable naming the address to serve `/metrics` on.
pub const METRICS_ADDR_ENV: &str = "SLUICE_METRICS_ADDR";

/// Serves `/metrics` on `$SLUICE_METRICS_ADDR` when it is set. Returns the
/// address served, if any. Must run inside a tokio runtime.
pub fn serve_from_env() -> Result<Option<SocketAddr>, SluiceError> {
    let Ok(raw) = std::env::var(METRICS_ADDR_ENV) else {
        return Ok(None);
    };
    let addr: SocketAddr = raw.parse().map_err(|e| {
        SluiceError::Config(format!("{METRICS_ADDR_ENV}={raw} is not host:port: {e}"))
    })?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| SluiceError::Config(format!("serving metrics on {addr}: {e}")))?;
    Ok(Some(addr))
}

fn labels(spec: &WriteSpec) -> [(&'static str, String); 2] {
    let committer = match spec.committer {
        Committer::Auto if spec.uses_multipart().unwrap_or(false) => "multipart",
        Committer::Auto => "staging",
        Committer::RenameV1 => "rename-v1",
        Committer::RenameV2 => "rename-v2",
    };
    [
        ("format", format!("{:?}", spec.format).to_lowercase()),
        ("committer", committer.to_string()),
    ]
}

/// One writer partition done.
pub fn partition_written(spec: &WriteSpec, rows: u64, bytes: u64, files: usize, took: Duration) {
    let l = labels(spec);
    counter!("sluice_write_rows_total", &l).increment(rows);
    counter!("sluice_write_bytes_total", &l).increment(bytes);
    counter!("sluice_write_files_total", &l).increment(files as u64);
    histogram!("sluice_write_partition_seconds", &l).record(took.as_secs_f64());
}

/// One multipart part sent.
pub fn part_uploaded(took: Duration) {
    counter!("sluice_s3_parts_total").increment(1);
    histogram!("sluice_s3_part_seconds").record(took.as_secs_f64());
}

/// One commit done.
pub fn committed(spec: &WriteSpec, files: usize, rows: u64, aborted: usize, took: Duration) {
    let l = labels(spec);
    counter!("sluice_commits_total", &l).increment(1);
    counter!("sluice_committed_files_total", &l).increment(files as u64);
    counter!("sluice_committed_rows_total", &l).increment(rows);
    counter!("sluice_uploads_aborted_total", &l).increment(aborted as u64);
    histogram!("sluice_commit_seconds", &l).record(took.as_secs_f64());
}
