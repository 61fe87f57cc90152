//! Prometheus metrics of file writes, labelled by format and committer.

use std::time::Duration;

use metrics::{counter, histogram};

use super::spec::WriteSpec;

fn labels(spec: &WriteSpec) -> [(&'static str, String); 2] {
    let committer = spec.committer_label().unwrap_or("staging");
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

/// One commit done.
pub fn committed(spec: &WriteSpec, files: usize, rows: u64, aborted: usize, took: Duration) {
    let l = labels(spec);
    counter!("sluice_commits_total", &l).increment(1);
    counter!("sluice_committed_files_total", &l).increment(files as u64);
    counter!("sluice_committed_rows_total", &l).increment(rows);
    counter!("sluice_uploads_aborted_total", &l).increment(aborted as u64);
    histogram!("sluice_commit_seconds", &l).record(took.as_secs_f64());
}
