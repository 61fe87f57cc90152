//! The stream runtime's errors: each names the checkpoint, source or batch
//! it is about.

use crate::error::SluiceError;
use crate::sink::files::lock::{Holder, LockError};

#[derive(thiserror::Error)]
pub enum StreamError {
    #[error("checkpoint {url}: {what}")]
    Checkpoint {
        url: String,
        what: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("checkpoint {url}: unreadable {path}: {reason}")]
    Corrupt {
        url: String,
        path: String,
        reason: String,
    },
    #[error(
        "checkpoint {url} is in use by {holder}; two streams cannot share a checkpoint (a killed stream's claim expires {ttl_s}s after it stopped renewing)"
    )]
    InUse {
        url: String,
        holder: Box<Holder>,
        ttl_s: u64,
    },
    #[error("checkpoint {url}: this stream lost its claim on it; stopping")]
    LostCheckpoint { url: String },
    #[error("source {table} ({location}): {what}")]
    Source {
        table: String,
        location: String,
        what: String,
    },
    /// A source failure no retry mends (records lost, the stream replaced
    /// or missing, no credentials): it ends a run even with `--every`.
    #[error("source {table} ({location}): {what}")]
    SourceFatal {
        table: String,
        location: String,
        what: String,
    },
    #[error(
        "checkpoint {url}: batch {batch_id} was planned by another version of {file} (its text or variables changed) and did not commit; its writes are named by the job's lines, so a changed job could write them twice: restore it and run it once (`--once`) to finish batch {batch_id}, then change the job"
    )]
    JobChanged {
        url: String,
        file: String,
        batch_id: u64,
    },
    #[error("bad alarm '{text}': {reason}")]
    BadAlarm { text: String, reason: String },
    #[error("bad stream setting: {0}")]
    Setting(String),
    #[error("batch {batch_id} is committed, and publishing its writes failed (tried again)")]
    Unpublished {
        batch_id: u64,
        #[source]
        source: Box<SluiceError>,
    },
    #[error("batch {batch_id} failed")]
    Batch {
        batch_id: u64,
        #[source]
        source: Box<SluiceError>,
    },
    #[error(
        "batch {batch_id} ran longer than --batch-timeout {}: its job was cancelled and its writes cleaned up; it runs again over the same input",
        humantime::format_duration(*after)
    )]
    BatchTimedOut {
        batch_id: u64,
        after: std::time::Duration,
    },
    /// Records of a batch the job's SQL fails on alone, more than may be
    /// read as bad records: every retry would fail the same way.
    #[error(
        "batch {batch_id} failed on {} of its records alone ({}): {why}",
        records.len(),
        list(records)
    )]
    RecordsFail {
        batch_id: u64,
        records: Vec<super::info::RejectedRecord>,
        why: String,
    },
    /// A batch holding more records that do not decode than the source's
    /// `max_bad_records`: its records do not change, nor would a retry.
    #[error(
        "batch {batch_id} holds more bad records than max_bad_records allows; no retry mends this: raise max_bad_records (the job's `_error` rows take them) and start the stream again: the changed job takes the batch up, unless a write of it was published before it failed (the log says which)"
    )]
    OverBadRecordLimit {
        batch_id: u64,
        #[source]
        source: Box<SluiceError>,
    },
    /// A batch whose records are not all written or dead-lettered, past
    /// the source's `max_filtered_records`: its writes were taken back,
    /// unless one was published before the check (`kept`).
    #[error(
        "batch {batch_id}: source {table}: {what}; {}",
        if *kept {
            "a write of the batch was published before this check (an overlapping output, or an earlier attempt's), so no changed job may take the batch up: restarting the same job ends here again; only a new checkpoint goes past it"
        } else {
            "no file of the batch was committed: fix the job (or raise max_filtered_records) and start the stream again, and the changed job takes the batch up"
        }
    )]
    Unaccounted {
        batch_id: u64,
        table: String,
        what: String,
        kept: bool,
    },
    #[error(transparent)]
    Job(#[from] SluiceError),
    #[error(transparent)]
    Lock(#[from] LockError),
}

crate::error::debug_as_display!(StreamError);

/// The first few records, and how many more.
fn list(records: &[super::info::RejectedRecord]) -> String {
    const SHOWN: usize = 3;
    let mut out: Vec<String> = records.iter().take(SHOWN).map(|r| r.to_string()).collect();
    if records.len() > SHOWN {
        out.push(format!("and {} more", records.len() - SHOWN));
    }
    out.join("; ")
}

impl StreamError {
    /// The same failure, marked as one no retry mends.
    pub fn fatal(self) -> Self {
        match self {
            Self::Source {
                table,
                location,
                what,
            } => Self::SourceFatal {
                table,
                location,
                what,
            },
            other => other,
        }
    }

    /// Whether retrying (with `--every`) cannot help: the run ends.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::SourceFatal { .. }
                | Self::RecordsFail { .. }
                | Self::OverBadRecordLimit { .. }
                | Self::Unaccounted { .. }
        )
    }

    /// A conditional create found the record already there.
    pub fn already_exists(&self) -> bool {
        matches!(self, Self::Checkpoint { source, .. } if matches!(**source, object_store::Error::AlreadyExists { .. }))
    }
}
