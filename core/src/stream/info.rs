//! What each batch reports, after Spark's `BatchInfo` and
//! `StreamingQueryProgress`: its delays, where its time went, its input per
//! split, its rates, and how far each source is behind. The same record is
//! the checkpoint's `commits/N`, the `--output json` line, what `sluice
//! stream status` shows, and the Prometheus metrics.

use std::collections::BTreeMap;

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

/// A record the job's SQL failed on alone (`stream::isolate`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RejectedRecord {
    pub source: String,
    pub split: String,
    /// Its place in the batch's range of the split (from 0).
    pub place: u64,
    /// The record's own name, where the source tells (a sequence number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// Why the job failed on it.
    pub error: String,
}

impl std::fmt::Display for RejectedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} split {} ", self.source, self.split)?;
        match &self.record {
            Some(name) => write!(f, "{name}")?,
            None => write!(f, "record {} of the batch's range", self.place + 1)?,
        }
        write!(f, ": {}", self.error)
    }
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
    /// Its rows per source split, when its rows name their split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_by_split: Option<BTreeMap<String, u64>>,
    /// It keeps only records the source could not decode.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead_letter: bool,
    /// Found committed by an earlier attempt of the batch, its per-split
    /// counts unknown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub earlier: bool,
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
            rows_by_split: w.rows_by_split.clone(),
            dead_letter: w.dead_letter,
            earlier: w.earlier,
        }
    }
}

/// One split's input, accounted for: read = written + dead-lettered +
/// filtered. `read` comes from the source (records in the range, checked
/// by the executors as they read it); `written` and `dead_lettered` from
/// the writers, which count their rows by the split column. `filtered` is
/// what the job's SQL dropped; below zero, more rows were written than
/// read (twice, or a job that makes several rows of one record). With
/// several data writes, `written` is the largest: a job that routes one
/// split's records to different outputs shows the others as filtered; each
/// output's own count is in `written_by_output`, so a job writing every
/// record to two layouts shows each layout's balance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitAccount {
    pub source: String,
    pub split: String,
    pub read: Option<u64>,
    /// Rows of the data write (not dead letters) that wrote the most of
    /// this split's rows.
    pub written: Option<u64>,
    /// Per data write's output: its rows of this split (with several
    /// data writes; those that count by split).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub written_by_output: BTreeMap<String, u64>,
    pub dead_lettered: Option<u64>,
    pub filtered: Option<i64>,
}

impl SplitAccount {
    /// Rows written or dead-lettered beyond what was read.
    pub fn overcount(&self) -> Option<u64> {
        self.filtered.filter(|f| *f < 0).map(|f| f.unsigned_abs())
    }
}

/// Every split's account from its input and the batch's writes. A split
/// is only accounted when some write counted rows by it.
pub fn accounts(splits: &[SplitInput], writes: &[BatchWrite]) -> Vec<SplitAccount> {
    if writes.iter().all(|w| w.rows_by_split.is_none()) {
        return vec![];
    }
    // Reads summed per split (a split may come in several ranges).
    let mut read: BTreeMap<(String, String), Option<u64>> = BTreeMap::new();
    for s in splits {
        let entry = read
            .entry((s.source.clone(), s.split.clone()))
            .or_insert(Some(0));
        *entry = entry.zip(s.rows).map(|(a, b)| a + b);
    }
    let of = |w: &BatchWrite, split: &str| {
        w.rows_by_split
            .as_ref()
            .map(|m| m.get(split).copied().unwrap_or(0))
    };
    read.into_iter()
        .map(|((source, split), read)| {
            let mut written_by_output: BTreeMap<String, u64> = BTreeMap::new();
            let data: Vec<&BatchWrite> = writes.iter().filter(|w| !w.dead_letter).collect();
            if data.len() > 1 {
                for w in &data {
                    if let Some(n) = of(w, &split) {
                        *written_by_output.entry(w.output.clone()).or_default() += n;
                    }
                }
            }
            let mut data = data.into_iter().peekable();
            let written = if data.peek().is_none() {
                Some(0)
            } else {
                data.map(|w| of(w, &split))
                    .collect::<Option<Vec<u64>>>()
                    .map(|v| v.into_iter().max().unwrap_or(0))
            };
            // Two layouts of the same dead letters count them once.
            let dead_lettered = writes
                .iter()
                .filter(|w| w.dead_letter)
                .map(|w| of(w, &split))
                .collect::<Option<Vec<u64>>>()
                .map(|v| v.into_iter().max().unwrap_or(0));
            let filtered = match (read, written, dead_lettered) {
                (Some(r), Some(w), Some(d)) => Some(r as i64 - w as i64 - d as i64),
                _ => None,
            };
            SplitAccount {
                source,
                split,
                read,
                written,
                written_by_output,
                dead_lettered,
                filtered,
            }
        })
        .collect()
}

/// Where a batch's accounts show more than `limit` records neither
/// written (to each data output) nor dead-lettered: how many, and the
/// first split short of them. Splits whose counts are not known (a
/// snapshot's) are not checked.
pub fn unaccounted(accounts: &[SplitAccount], limit: u64) -> Option<String> {
    // Per data output: records missing, and the first split they miss from.
    let mut missing: BTreeMap<&str, (u64, String)> = BTreeMap::new();
    for a in accounts {
        let (Some(read), Some(dead)) = (a.read, a.dead_lettered) else {
            continue;
        };
        let outputs: Vec<(&str, u64)> = if a.written_by_output.is_empty() {
            match a.written {
                Some(w) => vec![("", w)],
                None => continue,
            }
        } else {
            a.written_by_output
                .iter()
                .map(|(o, w)| (o.as_str(), *w))
                .collect()
        };
        for (output, written) in outputs {
            let gone = read.saturating_sub(written + dead);
            if gone == 0 {
                continue;
            }
            let entry = missing.entry(output).or_insert((0, String::new()));
            if entry.0 == 0 {
                let to = if output.is_empty() {
                    String::new()
                } else {
                    format!(" to {output}")
                };
                entry.1 = format!(
                    "split {}: {read} records read, {written} written{to}, {dead} dead-lettered",
                    a.split
                );
            }
            entry.0 += gone;
        }
    }
    missing
        .into_iter()
        .find(|(_, (n, _))| *n > limit)
        .map(|(output, (n, first))| {
            let to = if output.is_empty() {
                String::new()
            } else {
                format!(" to {output}")
            };
            format!(
                "{n} of its records were neither written{to} nor dead-lettered, more than max_filtered_records ({limit}) allows (the job's WHERE dropped them, or a write lost them); {first}"
            )
        })
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
    /// Rows of the writes that keep only records the source could not
    /// decode (`WHERE _error IS NOT NULL`).
    #[serde(default)]
    pub rows_dead_lettered: u64,
    /// A re-run of a batch an earlier process planned and did not commit.
    pub resumed: bool,
    pub splits: Vec<SplitInput>,
    pub lag: Vec<SourceLag>,
    pub writes: Vec<BatchWrite>,
    /// Per split: rows read = written + dead-lettered + filtered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<SplitAccount>,
    /// Records the job's SQL failed on alone, read as bad records when the
    /// batch ran again (`stream::isolate`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<RejectedRecord>,
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
        counter!("sluice_stream_rows_dead_lettered_total").increment(self.rows_dead_lettered);
        let overcount: u64 = self.accounts.iter().filter_map(|a| a.overcount()).sum();
        if overcount > 0 {
            counter!("sluice_stream_rows_overcounted_total").increment(overcount);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn split(split: &str, rows: Option<u64>) -> SplitInput {
        SplitInput {
            source: "chat".into(),
            split: split.into(),
            rows,
            ..Default::default()
        }
    }

    fn write(dead_letter: bool, counts: Option<&[(&str, u64)]>) -> BatchWrite {
        BatchWrite {
            dead_letter,
            rows_by_split: counts.map(|c| c.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn records_neither_written_nor_dead_lettered_are_counted_per_output() {
        let splits = [
            split("shard-a", Some(10)),
            split("shard-b", Some(5)),
            // A snapshot's count is not known: not checked.
            split("snapshot", None),
        ];
        let mut writes = [
            write(
                false,
                Some(&[("shard-a", 9), ("shard-b", 5), ("snapshot", 4)]),
            ),
            write(false, Some(&[("shard-a", 9), ("shard-b", 3)])),
            write(true, Some(&[("shard-a", 1)])),
        ];
        writes[0].output = "s3://b/by_stream/".into();
        writes[1].output = "s3://b/by_hour/".into();
        let got = accounts(&splits, &writes);
        // by_stream has every record; by_hour misses 2 of shard-b.
        let why = unaccounted(&got, 1).unwrap();
        assert!(
            why.starts_with("2 of its records were neither written to s3://b/by_hour/ nor dead-lettered, more than max_filtered_records (1)"),
            "{why}"
        );
        assert!(
            why.ends_with(
                "split shard-b: 5 records read, 3 written to s3://b/by_hour/, 0 dead-lettered"
            ),
            "{why}"
        );
        assert_eq!(unaccounted(&got, 2), None);
        // One output: its count is `written`.
        let one = accounts(
            &splits,
            &[
                write(false, Some(&[("shard-a", 7), ("shard-b", 5)])),
                writes[2].clone(),
            ],
        );
        let why = unaccounted(&one, 0).unwrap();
        assert!(
            why.starts_with("2 of its records were neither written nor dead-lettered"),
            "{why}"
        );
        assert!(
            why.ends_with("split shard-a: 10 records read, 7 written, 1 dead-lettered"),
            "{why}"
        );
        // Every record written or dead-lettered: nothing to say at 0.
        let whole = accounts(
            &splits,
            &[
                write(false, Some(&[("shard-a", 9), ("shard-b", 5)])),
                writes[2].clone(),
            ],
        );
        assert_eq!(unaccounted(&whole, 0), None);
    }

    #[test]
    fn each_split_is_read_written_dead_lettered_or_filtered() {
        let splits = [
            split("shard-a", Some(10)),
            split("shard-b", Some(5)),
            // A second range of shard-a in the same batch.
            split("shard-a", Some(2)),
            split("shard-c", Some(0)),
        ];
        let mut writes = [
            write(false, Some(&[("shard-a", 11), ("shard-b", 3)])),
            // A second layout of the same rows, one filtered more.
            write(false, Some(&[("shard-a", 10), ("shard-b", 3)])),
            write(true, Some(&[("shard-a", 1)])),
            // The same dead letters in a second layout count once.
            write(true, Some(&[("shard-a", 1)])),
        ];
        writes[0].output = "s3://b/by_stream/".into();
        writes[1].output = "s3://b/by_hour/".into();
        let got = accounts(&splits, &writes);
        let by = |s: &str| {
            got.iter()
                .find(|a| a.split == s)
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(got.len(), 3);
        let a = by("shard-a");
        assert_eq!(
            (a.read, a.written, a.dead_lettered, a.filtered),
            (Some(12), Some(11), Some(1), Some(0))
        );
        // Each layout's own balance: by_hour/ lost one of shard-a's rows.
        assert_eq!(
            a.written_by_output.clone().into_iter().collect::<Vec<_>>(),
            [
                ("s3://b/by_hour/".to_string(), 10),
                ("s3://b/by_stream/".to_string(), 11)
            ]
        );
        let b = by("shard-b");
        assert_eq!(
            (b.written, b.dead_lettered, b.filtered),
            (Some(3), Some(0), Some(2))
        );
        let c = by("shard-c");
        assert_eq!((c.read, c.written, c.filtered), (Some(0), Some(0), Some(0)));
        assert_eq!(a.overcount(), None);
    }

    #[test]
    fn rows_written_twice_show_as_an_overcount() {
        let got = accounts(
            &[split("0", Some(4))],
            &[
                write(false, Some(&[("0", 4)])),
                write(true, Some(&[("0", 2)])),
            ],
        );
        assert_eq!(got[0].filtered, Some(-2));
        assert_eq!(got[0].overcount(), Some(2));
    }

    #[test]
    fn unknown_counts_leave_the_account_open() {
        // No write counted by split: no accounts at all.
        assert!(accounts(&[split("0", Some(4))], &[write(false, None)]).is_empty());
        // One data write without counts: what it wrote is unknown.
        let got = accounts(
            &[split("0", Some(4)), split("1", None)],
            &[write(false, None), write(true, Some(&[("0", 1)]))],
        );
        assert_eq!(got[0].written, None);
        assert_eq!(got[0].dead_lettered, Some(1));
        assert_eq!(got[0].filtered, None);
        assert_eq!(got[1].read, None);
    }
}
