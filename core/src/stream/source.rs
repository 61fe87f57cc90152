//! What a streaming source is. A batch reads, from each source, a set of
//! ranges: `(split, start, end)`, where a split is what the source is made
//! of (a file, a Kafka partition, a shard) and `start..end` the part of it
//! this batch takes (a whole file is `0..size`; a partition, offsets). The
//! ranges are written to the checkpoint before the batch runs, so a re-run
//! reads exactly the same input; the source then tells the session which
//! data its table holds for this batch ([`Source::bind`]).

use std::collections::HashMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::error::StreamError;
use crate::plan::tables::BatchFiles;
use crate::source::kafka::BatchKafka;
use crate::source::shards::BatchShards;

/// What each source's table reads in one batch, put on the session by the
/// runner.
#[derive(Debug, Default)]
pub struct BatchInputs {
    pub files: BatchFiles,
    pub kafka: BatchKafka,
    pub shards: BatchShards,
    /// Which records the sources that can pick records read (see
    /// [`Picks`]); the sources' `bind` applies it.
    pub picks: Picks,
}

/// Records picked by their place in their range (`0..` the range's
/// count), keyed by (table, split): how the runner finds the records a
/// job's SQL fails on (`stream::isolate`) and reads them as bad records.
#[derive(Debug, Clone, Default)]
pub struct Picks {
    /// Only these records are read (`from..to` per split; a split not
    /// named reads nothing): `None` reads everything.
    pub window: Option<HashMap<(String, String), (u64, u64)>>,
    /// Read as bad records (`_error` set), with why.
    pub rejected: Vec<(String, String, u64, String)>,
}

/// One part of one split that a batch reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// The source's table name.
    pub source: String,
    pub split: String,
    pub start: i64,
    pub end: i64,
    /// When the split's data was written, where the source knows (a file's
    /// modification time, in ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_ms: Option<i64>,
    /// For shards, whose positions are sequence numbers (up to 40 digits,
    /// not an `i64`): the first and last record of the range, `start..end`
    /// then counting its records (`0..n`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// When the range's last record was created (shards; ms since the
    /// epoch): the start of what a later trim of the shard lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ms: Option<i64>,
}

/// How far a source is behind after a batch was planned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceLag {
    pub source: String,
    /// Splits (files) or records waiting, not in this batch.
    pub pending: u64,
    pub pending_bytes: u64,
    /// Age of the oldest waiting data (0 when nothing waits).
    pub age_ms: u64,
}

/// A source's plan for the next batch.
#[derive(Debug, Clone, Default)]
pub struct Planned {
    pub ranges: Vec<Range>,
    pub lag: SourceLag,
}

#[async_trait]
pub trait Source: Send + Sync {
    /// The table the job reads it as.
    fn table(&self) -> &str;

    /// Ranges not taken yet, at most the source's cap per batch.
    async fn plan(&mut self) -> Result<Planned, StreamError>;

    /// Connects before a batch runs; a batch recorded by an earlier
    /// process (`recorded_earlier`, until it was prepared once) may be
    /// checked against the source: `ranges` are the whole batch's.
    async fn prepare(
        &mut self,
        _ranges: &[Range],
        _recorded_earlier: bool,
    ) -> Result<(), StreamError> {
        Ok(())
    }

    /// Marks ranges as taken (planned by this process, or replayed from the
    /// checkpoint on restart).
    fn taken(&mut self, ranges: &[Range]);

    /// The source's position, for the checkpoint's compacted state.
    fn snapshot(&self) -> serde_json::Value;

    /// Restores a position saved by [`Source::snapshot`].
    fn restore(&mut self, state: &serde_json::Value) -> Result<(), StreamError>;

    /// Tells the session what this source's table reads in a batch.
    fn bind(&self, ranges: &[&Range], batch: &mut BatchInputs) -> Result<(), StreamError>;

    /// Bytes of a range, where they are known (a file's size; a Kafka
    /// range is offsets, not bytes).
    fn bytes(&self, _range: &Range) -> Option<u64> {
        None
    }

    /// The column of this source's rows that names their split, if they
    /// have one: a batch's writes count their rows by it.
    fn split_column(&self) -> Option<&'static str> {
        None
    }

    /// At most how many records of a batch may be neither written (to each
    /// data output) nor dead-lettered (`max_filtered_records`); `None`: not
    /// checked.
    fn filtered_record_limit(&self) -> Option<u64> {
        None
    }

    /// Records of `range` that can be picked by their place ([`Picks`])
    /// and read as bad records: how many; `None` where they cannot.
    fn pickable(&self, _range: &Range) -> Option<u64> {
        None
    }

    /// At most how many records of a batch the job's SQL may fail on alone
    /// and have read as bad records instead (`max_failing_records`), for a
    /// source whose records can be picked.
    fn failing_record_limit(&self) -> u64 {
        0
    }

    /// Records of `range` by their place, named for a message (a sequence
    /// number); `None` where that is not known.
    async fn name_records(&self, _range: &Range, places: &[u64]) -> Vec<Option<String>> {
        vec![None; places.len()]
    }

    /// Rows per range, where the source can tell cheaply (a Parquet footer).
    async fn rows(&self, ranges: &[&Range]) -> Vec<Option<u64>>;

    /// Only what is there now: later arrivals wait for another run
    /// (`--available-now`).
    async fn freeze(&mut self) -> Result<(), StreamError>;
}
