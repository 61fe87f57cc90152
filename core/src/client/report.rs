//! What a job run reports: per statement, per write (files or DynamoDB),
//! and live progress of the scheduler's job. Serialised as the CLI's JSON
//! output.

use arrow::array::RecordBatch;
use serde::Serialize;

/// What the runner tells whoever watches it (a progress bar, a log).
pub trait Progress: Send + Sync {
    fn statement_started(&self, _index: usize, _total: usize, _line: usize, _text: &str) {}
    fn job_submitted(&self, _job_id: &str) {}
    fn job_progress(&self, _p: &JobProgress) {}
    fn statement_finished(&self, _outcome: &StatementOutcome) {}
}

/// Ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// A snapshot of a running Ballista job, from the scheduler's REST API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobProgress {
    pub job_id: String,
    pub status: String,
    pub stages_done: usize,
    pub stages: usize,
    pub tasks_done: usize,
    pub tasks: usize,
    pub percent: u8,
}

#[derive(Debug, Clone, Serialize)]
pub struct WriteOutcome {
    pub output: String,
    pub write_id: String,
    pub rows: u64,
    pub files: u64,
    pub bytes: u64,
    /// The commit step, from the first file made visible to staging removed.
    pub commit_ms: u64,
    /// A DynamoDB write's counts and where its writers' time went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamodb: Option<DynamoOutcome>,
    /// A micro-batch's write: its rows per source split, when its rows
    /// carry the split (see `WriteSpec::count_by`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_by_split: Option<std::collections::BTreeMap<String, u64>>,
    /// The write keeps only rows the source could not decode
    /// (`WHERE _error IS NOT NULL`): dead letters.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dead_letter: bool,
    /// Found committed (its files listed, no manifest naming it), not
    /// written by this run: its per-split counts are unknown.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub earlier: bool,
}

/// The summary of a DynamoDB write. Times are summed over writers.
#[derive(Debug, Clone, Serialize)]
pub struct DynamoOutcome {
    pub table: String,
    pub items: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub dead_letter: Option<String>,
    pub throttles: u64,
    pub calls: u64,
    pub consumed_wcu: u64,
    /// Consumed WCU per second of the write stage, and the budget (WCU/s)
    /// when the job was planned.
    pub wcu_per_sec: f64,
    pub budget_wcu: f64,
    pub build_ms: u64,
    pub call_ms: u64,
    pub response_ms: u64,
    pub wait_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatementOutcome {
    pub line: usize,
    pub kind: &'static str,
    pub job_id: Option<String>,
    pub duration_ms: u64,
    pub write: Option<WriteOutcome>,
    /// Rows a query returned (not written).
    pub result_rows: u64,
    /// A query's result; in JSON, an array of row objects under `rows`.
    #[serde(rename = "rows", serialize_with = "batches_as_json")]
    pub batches: Vec<RecordBatch>,
}

fn batches_as_json<S: serde::Serializer>(batches: &[RecordBatch], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::Error;
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::ArrayWriter::new(&mut buf);
        for b in batches {
            w.write(b).map_err(S::Error::custom)?;
        }
        w.finish().map_err(S::Error::custom)?;
    }
    let rows: serde_json::Value = if buf.is_empty() {
        serde_json::Value::Array(vec![])
    } else {
        serde_json::from_slice(&buf).map_err(S::Error::custom)?
    };
    rows.serialize(s)
}

#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub job_file: String,
    pub statements: Vec<StatementOutcome>,
    pub job_ids: Vec<String>,
    pub rows_written: u64,
    pub files_written: u64,
    pub bytes_written: u64,
    pub duration_ms: u64,
}
