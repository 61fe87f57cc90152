//! The Kafka source of a stream: a `STORED AS KAFKA` table. A batch takes,
//! per partition, the records from the stream's position to the high
//! watermark, at most `max_records_per_batch` over the whole topic (shared
//! fairly between partitions), as ranges `(partition, start, end)`; the
//! executors fetch them (`source::kafka`). Positions are the next offset of
//! each partition, in the checkpoint; a partition the stream has no position
//! for starts at `starting_offsets`. A position below what the broker still
//! keeps (retention deleted it) fails the batch, saying how many records
//! were lost. The lag's age is that of the oldest record a batch leaves
//! waiting (one small fetch per partition that is behind).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use rskafka::client::partition::OffsetAt;

use super::error::StreamError;
use super::source::{BatchInputs, Planned, Range, Source, SourceLag};
use crate::clock::Clock;
use crate::source::kafka::{
    KafkaLocation, KafkaOptions, KafkaRange, StartingOffsets, connect, partition_client,
};

pub struct KafkaSource {
    table: String,
    location: KafkaLocation,
    options: KafkaOptions,
    /// Next offset to read, per partition.
    positions: BTreeMap<i32, i64>,
    /// With `--available-now`: the high watermarks at start.
    frozen: Option<BTreeMap<i32, i64>>,
    /// Partitions whose resolved start no recorded plan holds yet: each
    /// plan carries them (as empty ranges) until one is taken, so a plan
    /// that was not recorded (another source failed) loses no start.
    unrecorded: HashSet<i32>,
    client: Option<rskafka::client::Client>,
    clock: Arc<dyn Clock>,
}

impl KafkaSource {
    pub fn new(
        table: &str,
        location: KafkaLocation,
        options: KafkaOptions,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            table: table.to_string(),
            location,
            options,
            positions: BTreeMap::new(),
            frozen: None,
            unrecorded: HashSet::new(),
            client: None,
            clock,
        }
    }

    /// A client for one partition, each call bounded by `timeout`.
    async fn partition(
        &mut self,
        partition: i32,
        timeout: std::time::Duration,
    ) -> Result<rskafka::client::partition::PartitionClient, StreamError> {
        let location = self.location.clone();
        let client = self.client().await?;
        partition_client(client, &location, partition, timeout)
            .await
            .map_err(|e| self.error(e.to_string()))
    }

    /// The time (ms since the epoch) of the record at `offset`, or `None`
    /// when it cannot be read now: the lag's age is a report, and the
    /// batch's own fetch fails clearly if the broker is gone.
    async fn record_time(&mut self, partition: i32, offset: i64) -> Option<i64> {
        // A report: it may not hold the plan up for a whole broker timeout.
        let timeout = self
            .options
            .timeout()
            .min(std::time::Duration::from_secs(2));
        let pc = self.partition(partition, timeout).await.ok()?;
        let fetch = pc.fetch_records(offset, 1..64 * 1024, 0);
        let (records, _) = tokio::time::timeout(timeout, fetch).await.ok()?.ok()?;
        records
            .into_iter()
            .find(|r| r.offset >= offset)
            .map(|r| r.record.timestamp.timestamp_millis())
    }

    fn error(&self, what: String) -> StreamError {
        StreamError::Source {
            table: self.table.clone(),
            location: self.location.url(),
            what,
        }
    }

    async fn client(&mut self) -> Result<&rskafka::client::Client, StreamError> {
        if self.client.is_none() {
            let c = connect(&self.location, self.options.timeout())
                .await
                .map_err(|e| self.error(e.to_string()))?;
            self.client = Some(c);
        }
        self.client
            .as_ref()
            .ok_or_else(|| self.error("no client".into()))
    }

    async fn partitions(&mut self) -> Result<Vec<i32>, StreamError> {
        let topic = self.location.topic.clone();
        let timeout = self.options.timeout();
        let client = self.client().await?;
        let listed = tokio::time::timeout(timeout, client.list_topics()).await;
        let topics = match listed {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                self.client = None;
                return Err(self.error(format!("listing topics: {e}")));
            }
            Err(_) => {
                self.client = None;
                return Err(self.error(format!("listing topics took over {timeout:?}")));
            }
        };
        let Some(t) = topics.into_iter().find(|t| t.name == topic) else {
            return Err(self.error(format!("topic {topic} does not exist")));
        };
        Ok(t.partitions.into_iter().collect())
    }

    /// The earliest and next-to-be-written offsets of a partition.
    async fn bounds(&mut self, partition: i32) -> Result<(i64, i64), StreamError> {
        let pc = self.partition(partition, self.options.timeout()).await?;
        let earliest = self.offset(&pc, OffsetAt::Earliest).await?;
        let latest = self.offset(&pc, OffsetAt::Latest).await?;
        Ok((earliest, latest))
    }

    async fn offset(
        &self,
        pc: &rskafka::client::partition::PartitionClient,
        at: OffsetAt,
    ) -> Result<i64, StreamError> {
        let timeout = self.options.timeout();
        match tokio::time::timeout(timeout, pc.get_offset(at)).await {
            Ok(Ok(o)) => Ok(o),
            Ok(Err(e)) => Err(self.error(format!(
                "partition {}: reading an offset: {e}",
                pc.partition()
            ))),
            Err(_) => Err(self.error(format!(
                "partition {}: reading an offset took over {timeout:?}",
                pc.partition()
            ))),
        }
    }

    /// Where a partition without a position starts.
    async fn start_of(
        &mut self,
        partition: i32,
        earliest: i64,
        latest: i64,
    ) -> Result<i64, StreamError> {
        Ok(match self.options.starting_offsets {
            StartingOffsets::Earliest => earliest,
            StartingOffsets::Latest => latest,
            StartingOffsets::Timestamp(ms) => {
                let pc = self.partition(partition, self.options.timeout()).await?;
                let at = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
                // No record at or after the time: the broker answers -1.
                match self.offset(&pc, OffsetAt::Timestamp(at)).await? {
                    o if o < 0 => latest,
                    o => o.clamp(earliest, latest),
                }
            }
        })
    }

    async fn plan_ranges(&mut self) -> Result<Planned, StreamError> {
        let mut available = Vec::new();
        let mut starts = BTreeMap::new();
        for p in self.partitions().await? {
            let (earliest, latest) = self.bounds(p).await?;
            let (start, fresh) = match self.positions.get(&p) {
                Some(pos) => (*pos, false),
                None => (self.start_of(p, earliest, latest).await?, true),
            };
            if fresh {
                // Known from now on, and carried by every plan (as an
                // empty range if nothing is taken from it) until one is
                // recorded, so a restart does not resolve `latest` again
                // and skip records.
                self.positions.insert(p, start);
                self.unrecorded.insert(p);
            }
            if start > latest && self.frozen.is_none() {
                return Err(self.error(format!(
                    "partition {p}: the stream's position {start} is past the broker's end {latest}: the topic was recreated or truncated"
                )));
            }
            if start < earliest {
                return Err(self.error(format!(
                    "partition {p}: the stream's position {start} is older than the broker keeps (earliest {earliest}): {} records were deleted before they were read",
                    earliest - start
                )));
            }
            let end = match &self.frozen {
                Some(f) => f.get(&p).copied().unwrap_or(start).min(latest),
                None => latest,
            };
            starts.insert(p, start);
            available.push((p, (end - start).max(0)));
        }
        let takes = share(&available, self.options.max_records_per_batch);
        let mut ranges = Vec::new();
        let mut pending = 0u64;
        let mut oldest_waiting: Option<i64> = None;
        for (p, a) in &available {
            let take = takes.get(p).copied().unwrap_or(0);
            pending += (a - take).max(0) as u64;
            if a > &take {
                let first_left = starts.get(p).copied().unwrap_or(0) + take;
                if let Some(t) = self.record_time(*p, first_left).await {
                    oldest_waiting = Some(oldest_waiting.map_or(t, |o| o.min(t)));
                }
            }
            if take > 0 || self.unrecorded.contains(p) {
                let start = starts.get(p).copied().unwrap_or(0);
                ranges.push(Range {
                    source: self.table.clone(),
                    split: p.to_string(),
                    start,
                    end: start + take,
                    modified_ms: None,
                    ..Default::default()
                });
            }
        }
        Ok(Planned {
            ranges,
            lag: SourceLag {
                source: self.table.clone(),
                pending,
                pending_bytes: 0,
                age_ms: oldest_waiting.map_or(0, |t| {
                    (self.clock.wall().timestamp_millis() - t).max(0) as u64
                }),
            },
        })
    }
}

/// Shares `cap` records between partitions with `available` records each:
/// equal shares, what a partition does not need going to the others.
fn share(available: &[(i32, i64)], cap: u64) -> BTreeMap<i32, i64> {
    let mut order: Vec<(i32, i64)> = available.to_vec();
    order.sort_by_key(|(_, a)| *a);
    let mut left = cap.min(i64::MAX as u64) as i64;
    let mut out = BTreeMap::new();
    let n = order.len() as i64;
    for (i, (p, a)) in order.into_iter().enumerate() {
        let fair = left / (n - i as i64).max(1);
        let take = a.max(0).min(fair);
        left -= take;
        out.insert(p, take);
    }
    out
}

#[async_trait]
impl Source for KafkaSource {
    fn split_column(&self) -> Option<&'static str> {
        Some("partition")
    }

    fn filtered_record_limit(&self) -> Option<u64> {
        self.options.max_filtered_records
    }

    fn table(&self) -> &str {
        &self.table
    }

    async fn plan(&mut self) -> Result<Planned, StreamError> {
        let planned = self.plan_ranges().await;
        if planned.is_err() {
            // A broker that failed a call may have restarted or moved: the
            // next plan connects afresh.
            self.client = None;
        }
        planned
    }

    fn taken(&mut self, ranges: &[Range]) {
        for r in ranges.iter().filter(|r| r.source == self.table) {
            if let Ok(p) = r.split.parse::<i32>() {
                let pos = self.positions.entry(p).or_insert(r.end);
                *pos = (*pos).max(r.end);
                self.unrecorded.remove(&p);
            }
        }
    }

    fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({ "positions": self.positions })
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), StreamError> {
        #[derive(serde::Deserialize)]
        struct Saved {
            positions: BTreeMap<i32, i64>,
        }
        let saved: Saved = serde_json::from_value(state.clone())
            .map_err(|e| self.error(format!("its checkpointed state is unreadable: {e}")))?;
        self.positions = saved.positions;
        Ok(())
    }

    fn bind(&self, ranges: &[&Range], batch: &mut BatchInputs) -> Result<(), StreamError> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for r in ranges {
            let partition: i32 = r
                .split
                .parse()
                .map_err(|_| self.error(format!("'{}' is not a partition", r.split)))?;
            if !seen.insert(partition) {
                return Err(self.error(format!("partition {partition} twice in one batch")));
            }
            out.push(KafkaRange {
                partition,
                start: r.start,
                end: r.end,
            });
        }
        batch.kafka.by_location.insert(self.location.url(), out);
        Ok(())
    }

    async fn rows(&self, ranges: &[&Range]) -> Vec<Option<u64>> {
        ranges
            .iter()
            .map(|r| Some((r.end - r.start).max(0) as u64))
            .collect()
    }

    async fn freeze(&mut self) -> Result<(), StreamError> {
        let mut ends = BTreeMap::new();
        for p in self.partitions().await? {
            let (_, latest) = self.bounds(p).await?;
            ends.insert(p, latest);
        }
        self.frozen = Some(ends);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_shared_fairly_and_nothing_is_taken_twice() {
        let s = share(&[(0, 100), (1, 5), (2, 100)], 60);
        assert_eq!(s[&1], 5);
        assert_eq!(s[&0] + s[&2], 55);
        assert!(s[&0].abs_diff(s[&2]) <= 1);
        let s = share(&[(0, 3), (1, 4)], 1_000);
        assert_eq!((s[&0], s[&1]), (3, 4));
        assert_eq!(share(&[(0, 10)], 0)[&0], 0);
    }
}
