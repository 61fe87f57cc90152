//! What each batch reports, after Spark's `BatchInfo` and
//! `StreamingQueryProgress`: its delays, where its time went, its input per
//! split, its rates, and how far each source is behind. The same record is
//! the checkpoint's `commits/N`, the `--output json` line, what `sluice
//! stream status` shows, and the Prometheus metrics.

use chrono::{DateTime, Utc};
use metrics::{counter, gauge, histogram};
use serde::{Deserialize, Serialize};

use super::source::SourceLag;
use crate::client::WriteOutcome;

/// One split's part of a batch's input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitInput {
    pub source: String,
    pub split: String,
    pub start: i64,
    pub end: i64,
    /// Rows, where the source can tell (Parquet footers).
    pub rows: Option<u64>,
}

/// One write a batch committed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchWrite {
    pub output: String,
    pub write_id: String,
    pub rows: u64,
    pub files: u64,
    pub bytes: u64,
    pub commit_ms: u64,
}

impl From<&WriteOutcome> for BatchWrite {
    fn from(w: &WriteOutcome) -> Self {
        Self {
            output: w.output.clone(),
            write_id: w.write_id.clone(),
            rows: w.rows,
            files: w.files,
            bytes: w.bytes,
            commit_ms: w.commit_ms,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchInfo {
    pub batch_id: u64,
    pub stream_id: String,
    pub due_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub committed_at: DateTime<Utc>,
    /// Due time to start: how far behind its schedule the stream is.
    pub scheduling_delay_ms: u64,
    /// Start to commit.
    pub processing_delay_ms: u64,
    pub total_delay_ms: u64,
    /// Listing the sources and recording the batch's ranges.
    pub planning_ms: u64,
    /// The batch's jobs, commits excluded.
    pub running_ms: u64,
    /// The writes' commits and the batch's commit record.
    pub committing_ms: u64,
    /// Input rows, when every split's count is known.
    pub input_rows: Option<u64>,
    pub input_splits: u64,
    pub input_bytes: u64,
    /// Input rows per second of processing delay.
    pub processed_rows_per_sec: Option<f64>,
    /// Input rows per second since the previous batch started.
    pub input_rows_per_sec: Option<f64>,
    pub rows_written: u64,
    pub files_written: u64,
    pub bytes_written: u64,
    /// A re-run of a batch an earlier process planned and did not commit.
    pub resumed: bool,
    pub splits: Vec<SplitInput>,
    pub lag: Vec<SourceLag>,
    pub writes: Vec<BatchWrite>,
    pub job_ids: Vec<String>,
}

impl BatchInfo {
    /// The share of the total delay spent waiting to start.
    pub fn scheduling_share(&self) -> f64 {
        if self.total_delay_ms == 0 {
            0.0
        } else {
            self.scheduling_delay_ms as f64 / self.total_delay_ms as f64
        }
    }

    pub fn lag_records(&self) -> u64 {
        self.lag.iter().map(|l| l.pending).sum()
    }

    pub fn lag_age_ms(&self) -> u64 {
        self.lag.iter().map(|l| l.age_ms).max().unwrap_or(0)
    }

    /// Publishes the batch as Prometheus metrics.
    pub fn record_metrics(&self) {
        let secs = |ms: u64| ms as f64 / 1000.0;
        counter!("sluice_stream_batches_total").increment(1);
        gauge!("sluice_stream_last_batch_id").set(self.batch_id as f64);
        histogram!("sluice_stream_scheduling_delay_seconds").record(secs(self.scheduling_delay_ms));
        histogram!("sluice_stream_processing_delay_seconds").record(secs(self.processing_delay_ms));
        histogram!("sluice_stream_total_delay_seconds").record(secs(self.total_delay_ms));
        gauge!("sluice_stream_scheduling_delay_seconds_last").set(secs(self.scheduling_delay_ms));
        gauge!("sluice_stream_total_delay_seconds_last").set(secs(self.total_delay_ms));
        counter!("sluice_stream_input_rows_total").increment(self.input_rows.unwrap_or(0));
        counter!("sluice_stream_input_splits_total").increment(self.input_splits);
        counter!("sluice_stream_rows_written_total").increment(self.rows_written);
        for (phase, ms) in [
            ("planning", self.planning_ms),
            ("running", self.running_ms),
            ("committing", self.committing_ms),
        ] {
            histogram!("sluice_stream_phase_seconds", "phase" => phase).record(secs(ms));
        }
        if let Some(rate) = self.input_rows_per_sec {
            gauge!("sluice_stream_input_rows_per_second").set(rate);
        }
        if let Some(rate) = self.processed_rows_per_sec {
            gauge!("sluice_stream_processed_rows_per_second").set(rate);
        }
        for lag in &self.lag {
            gauge!("sluice_stream_lag_records", "source" => lag.source.clone())
                .set(lag.pending as f64);
            gauge!("sluice_stream_lag_age_seconds", "source" => lag.source.clone())
                .set(secs(lag.age_ms));
        }
    }
}
