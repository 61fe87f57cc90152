//! The shard source of a stream: a `STORED AS DYNAMODB_STREAM` or
//! `STORED AS KINESIS` table. Each batch the client lists the shards
//! (`DescribeStream`, `ListShards`), and for each shard whose parents are
//! read to their end reads ahead from the stream's position, to find the
//! next range: its first and last sequence numbers and how many records it
//! holds, at most `max_records_per_batch` over the stream. The executors
//! read those ranges again (`source::shards`), so a batch that re-runs
//! reads exactly the same records; the price is that every record is read
//! twice (planning reads are counted in `sluice_shard_plan_records_total`).
//!
//! Positions are the last sequence number read per shard; a shard is
//! finished when it is closed and nothing follows its position, and its
//! children start then, at their beginning. A stream with no positions
//! starts at `starting_position`. A position the stream no longer keeps
//! (trimmed after 24 h) fails the run, saying records were lost (or, with
//! `on_trimmed 'snapshot'`, scans the table again); so does a stream that
//! is gone or replaced, even under `--every`, where other failures are
//! retried.
//!
//! With `snapshot 'true'` (DynamoDB Streams) the first batch scans the
//! table (`source::dynamodb`) instead of reading the stream: its plan reads
//! every shard to its newest record and records those positions as skipped
//! (`SKIP` ranges), all before the scan starts, which runs with the batch.
//! Later batches read the stream from there. A record the stream holds when
//! the batch is planned is reflected in the scan; one written after it
//! arrives as a change, and if it changed an item the scan read afterwards,
//! also in the scan: an item changed during the scan may arrive twice, in
//! its newest state both times; none is missed. The positions travel in
//! the checkpoint with the first batch, so a re-run scans again and skips
//! the same records. (Sequence numbers, not creation times: DynamoDB rounds
//! those, DynamoDB Local to the minute.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::error::StreamError;
use super::source::{BatchInputs, Planned, Range, Source, SourceLag};
use crate::clock::Clock;
use crate::source::shards::api::{At, Failure, ShardApi, ShardInfo, ShardRecord, compare};
use crate::source::shards::{
    Kind, MAX_RENEWALS, OnTrimmed, Rejected, ShardOptions, ShardRange, StartingPosition, describe,
};

/// Pages one shard's planning read takes at most.
const MAX_PAGES: u32 = 50;
/// Empty pages after which an open shard counts as read to its newest
/// record for this plan (DynamoDB Streams says nothing about how far
/// behind a page is); the next plan goes on from where this one stopped.
const EMPTY_PAGES_AT_TIP: u32 = 2;
/// The most pages one plan skips (records created before a `latest`
/// start, on DynamoDB Streams) before it plans with what it has.
const MAX_SKIP_PAGES: u32 = 2_000;
/// The coarsest rounding of a DynamoDB stream record's creation time seen
/// (DynamoDB Local's minute).
const CREATION_TIME_ROUNDING_MS: i64 = 60_000;
/// A range's `first` with no `last`: the shard starts at its newest record.
const MARK_LATEST: &str = "LATEST";
/// A range's `first` with no `last`: the shard was read to its end.
const MARK_END: &str = "END";
/// A range's `first` with no `last`: its `split` is the stream's ARN.
const MARK_STREAM: &str = "STREAM";
/// A range's `first` with no `last`: this batch scans the table in `end`
/// segments.
const MARK_SNAPSHOT: &str = "SNAPSHOT";
/// A range's `first` whose `last` is set: records up to `last` were in the
/// stream before the snapshot and are skipped (`end` of them).
const MARK_SKIP: &str = "SKIP";
/// Plans after which a DynamoDB stream source asks the table again which
/// stream it has (`DescribeTable`).
const RESOLVE_EVERY_PLANS: u32 = 10;
/// Records per shard a snapshot's plan skips at most (the stream holds 24
/// hours; past this, start from `latest` or trim the stream first).
const MAX_SKIPPED: u64 = 50_000_000;

pub struct ShardSource {
    table: String,
    kind: Kind,
    location: String,
    name: String,
    options: ShardOptions,
    /// The DynamoDB stream's ARN or the Kinesis stream's name, once known.
    stream: Option<String>,
    api: Option<Box<dyn ShardApi>>,
    /// Last sequence number read, per shard.
    positions: BTreeMap<String, String>,
    /// When the record at each position was created (ms), where known.
    read_at: BTreeMap<String, i64>,
    /// Shards closed and read to their end.
    finished: BTreeSet<String>,
    /// Shards that start at their newest record (`latest`, for the shards
    /// listed when the stream first planned) until they have a position.
    start_latest: BTreeSet<String>,
    /// When each `latest` shard was resolved (ms since the epoch): a
    /// Kinesis shard goes on from there (`AT_TIMESTAMP`) when the iterator
    /// of its first plan is gone (a restart, an expired iterator), instead
    /// of resolving `latest` again and skipping what arrived meanwhile.
    latest_since: BTreeMap<String, i64>,
    /// Whether this source has planned (or been given a position) yet.
    started: bool,
    /// Marks not yet recorded in a committed plan: `LATEST` and `END`
    /// ranges (no records) that carry `start_latest` and `finished` into
    /// the checkpoint with the next batch.
    marks: Vec<Range>,
    /// Per shard, an iterator past the newest record seen by a plan that
    /// found nothing there, and the position it goes on from: the next plan
    /// continues from it instead of starting again (past empty stretches,
    /// and without re-resolving `latest`). In memory only.
    parked: HashMap<String, (Option<String>, String)>,
    /// With `--available-now`: records created after this (ms) wait.
    frozen_at: Option<i64>,
    /// The last plan failed because records it had not read were trimmed.
    lost: std::sync::atomic::AtomicBool,
    /// The last plan failed in a way no retry mends (records lost, the
    /// stream replaced or gone, a table without one): the run ends,
    /// `--every` or not.
    fatal: std::sync::atomic::AtomicBool,
    /// The next plan scans the table again (`on_trimmed 'snapshot'`).
    resnapshot: bool,
    /// Plans since the table's stream was last resolved.
    since_resolved: u32,
    /// The columns the job declares (checked against what the stream
    /// carries).
    declared: Vec<String>,
    /// The stream's view was warned about (once a run).
    cautioned: bool,
    clock: Arc<dyn Clock>,
}

impl ShardSource {
    pub fn new(
        table: &str,
        kind: Kind,
        location: &str,
        name: &str,
        options: ShardOptions,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            table: table.to_string(),
            kind,
            location: location.to_string(),
            name: name.to_string(),
            options,
            stream: None,
            api: None,
            positions: BTreeMap::new(),
            read_at: BTreeMap::new(),
            finished: BTreeSet::new(),
            start_latest: BTreeSet::new(),
            latest_since: BTreeMap::new(),
            started: false,
            marks: Vec::new(),
            parked: HashMap::new(),
            frozen_at: None,
            lost: std::sync::atomic::AtomicBool::new(false),
            fatal: std::sync::atomic::AtomicBool::new(false),
            resnapshot: false,
            since_resolved: 0,
            declared: Vec::new(),
            cautioned: false,
            clock,
        }
    }

    /// The columns the job declares on the table.
    pub fn with_declared(mut self, declared: Vec<String>) -> Self {
        self.declared = declared;
        self
    }

    fn error(&self, what: String) -> StreamError {
        StreamError::Source {
            table: self.table.clone(),
            location: self.location.clone(),
            what,
        }
    }

    /// Records what kind of failure a call's error is: records trimmed
    /// unread are lost (and fatal unless the job re-snapshots); a stream,
    /// shard or table that is gone stays gone. Anything else (credentials
    /// that may be refreshed, a denied call that may be granted, network
    /// trouble) leaves a later batch to try again.
    fn note(&self, failure: Failure) {
        use std::sync::atomic::Ordering::Relaxed;
        match failure {
            Failure::Trimmed => {
                self.lost.store(true, Relaxed);
                self.fatal.store(true, Relaxed);
            }
            Failure::Gone => self.fatal.store(true, Relaxed),
            Failure::Fatal | Failure::Throttled | Failure::ExpiredIterator | Failure::Transient => {
            }
        }
    }

    /// A batch an earlier process recorded, about to re-run: its ranges
    /// must still be in the stream. One trimmed meanwhile (the stream was
    /// down past its retention) lost its records; the executors would
    /// only fail on it batch after batch, so the run ends here, saying so.
    async fn still_kept(&self, ranges: &[Range]) -> Result<(), StreamError> {
        let Some(api) = self.api.as_ref() else {
            return Err(self.error("no client".into()));
        };
        for r in ranges.iter().filter(|r| r.source == self.table) {
            let (Some(first), Some(_)) = (&r.first, &r.last) else {
                continue;
            };
            if first == MARK_SKIP || first == MARK_SNAPSHOT {
                continue;
            }
            // A shard gone altogether was trimmed too; anything else the
            // executors meet and say.
            if let Err(e) = api.iterator(&r.split, &At::Sequence(first.clone())).await
                && matches!(e.failure, Failure::Trimmed | Failure::Gone)
            {
                self.fatal.store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(self.error(format!(
                    "shard {}: the recorded batch re-runs from sequence number {first}, which the stream no longer keeps: {}; start a new checkpoint (with snapshot 'true' it scans the table again)",
                    r.split,
                    describe(&e)
                )));
            }
        }
        Ok(())
    }

    /// An outcome's error marked fatal when a call behind it said so.
    fn marked<T>(&self, outcome: Result<T, StreamError>) -> Result<T, StreamError> {
        let fatal = self.fatal.swap(false, std::sync::atomic::Ordering::Relaxed);
        outcome.map_err(|e| if fatal { e.fatal() } else { e })
    }

    /// Resolves the stream (a table's current stream ARN) and its client.
    async fn connect(&mut self) -> Result<(), StreamError> {
        if self.api.is_some() {
            return Ok(());
        }
        let stream = match self.kind {
            Kind::DynamodbStream => {
                let found =
                    crate::source::shards::dynamodb::stream_arn(&self.name, self.options.retry())
                        .await
                        .map_err(|e| {
                            self.note(e.failure);
                            self.error(e.to_string())
                        })?;
                if let Some(why) = found.refuses(&self.name, &self.declared) {
                    self.note(Failure::Gone);
                    return Err(self.error(why));
                }
                if let Some(caution) = found.caution()
                    && !self.cautioned
                {
                    self.cautioned = true;
                    tracing::warn!(table = %self.table, "{caution}");
                }
                found.arn
            }
            Kind::Kinesis => self.name.clone(),
        };
        if let Some(old) = &self.stream
            && *old != stream
        {
            self.note(Failure::Gone);
            return Err(self.error(format!(
                "the table's stream changed (the checkpoint read {old}, the table now has {stream}): records written between the two streams were lost; start a new checkpoint to read the new stream"
            )));
        }
        self.api = Some(crate::source::shards::api(self.kind, &stream, self.options.retry()).await);
        if self.stream.is_none() && self.kind == Kind::DynamodbStream {
            // Which stream the positions belong to, in the checkpoint with
            // the next batch: a table's stream can be replaced.
            self.mark(&stream, MARK_STREAM);
        }
        self.stream = Some(stream);
        Ok(())
    }

    /// Shards in lineage order: every parent before its children.
    fn lineage(shards: Vec<ShardInfo>) -> Vec<ShardInfo> {
        let ids: BTreeSet<String> = shards.iter().map(|s| s.id.clone()).collect();
        let mut placed: BTreeSet<String> = BTreeSet::new();
        let mut left = shards;
        let mut out = Vec::with_capacity(left.len());
        while !left.is_empty() {
            let (ready, wait): (Vec<ShardInfo>, Vec<ShardInfo>) = left.into_iter().partition(|s| {
                s.parents
                    .iter()
                    .all(|p| placed.contains(p) || !ids.contains(p))
            });
            if ready.is_empty() {
                // A cycle cannot happen; if a service reported one, keep
                // the rest in listed order rather than loop.
                out.extend(wait);
                break;
            }
            placed.extend(ready.iter().map(|s| s.id.clone()));
            out.extend(ready);
            left = wait;
        }
        out
    }

    /// Reads ahead in one shard from `start` (or from its parked
    /// iterator): up to `cap + 1` records, whether the shard is read to its
    /// end (the service gave no next iterator: closed and done), and how far
    /// behind the newest record the read stopped.
    async fn read_ahead(
        &mut self,
        shard: &ShardInfo,
        start: At,
        cap: u64,
    ) -> Result<(Vec<ShardRecord>, bool, Option<i64>), StreamError> {
        let Some(api) = self.api.as_ref() else {
            return Err(self.error("no client".into()));
        };
        let position = self.positions.get(&shard.id).cloned();
        let fail = |e: &crate::source::shards::api::ApiError| {
            // A shard gone between the listing and this call (shards close
            // and age out all the time): one read from a position was not
            // read to its end, its records were lost; one never read is
            // left out of the next listing, so the next plan goes on.
            let failure = match (e.failure, &position) {
                (Failure::Gone, Some(_)) => Failure::Trimmed,
                (Failure::Gone, None) => Failure::Transient,
                (other, _) => other,
            };
            self.note(failure);
            self.error(format!("shard {}: {}", shard.id, describe(e)))
        };
        let parked = self
            .parked
            .get(&shard.id)
            .filter(|(from, _)| *from == position)
            .map(|(_, it)| it.clone());
        let mut iterator = match parked {
            Some(it) => Some(it),
            None => match api.iterator(&shard.id, &start).await {
                Ok(it) => it,
                Err(e) if e.failure == Failure::Trimmed => {
                    let read_at = self.read_at.get(&shard.id).copied();
                    let kept =
                        oldest_kept(api.as_ref(), &shard.id, self.clock.as_ref(), read_at).await;
                    let mut err = fail(&e);
                    if let (StreamError::Source { what, .. }, Some(kept)) = (&mut err, kept) {
                        what.push_str(&kept);
                    }
                    return Err(err);
                }
                Err(e) => return Err(fail(&e)),
            },
        };
        // DynamoDB Streams has no iterator by time: a `Timestamp` start reads
        // from the trim horizon and skips what was created before it.
        // Creation times are "approximate" and rounded down (to the second
        // by AWS's docs, to the minute by DynamoDB Local), so a minute
        // more than the minute is kept (a margin for the client's clock
        // running ahead of the service's): a record written up to two
        // minutes before `latest` was resolved may be read, none written
        // after it is lost.
        let skip_before = match (&start, self.kind) {
            (At::Timestamp(since), Kind::DynamodbStream) if position.is_none() => {
                let margin = since - CREATION_TIME_ROUNDING_MS;
                Some(margin - margin.rem_euclid(CREATION_TIME_ROUNDING_MS))
            }
            _ => None,
        };
        let mut last_skipped_ms: Option<i64> = None;
        let mut skipped = 0u64;
        let mut out: Vec<ShardRecord> = Vec::new();
        let mut empty = 0u32;
        let mut renewals = 0u32;
        let mut behind: Option<i64> = None;
        let mut at_tip = false;
        let (mut pages, mut skip_pages) = (0u32, 0u32);
        loop {
            // Pages only skipped count apart, against a larger bound: a
            // restart may skip up to a day of a shard's records.
            if out.is_empty() && skipped > 0 {
                skip_pages += 1;
                if skip_pages > MAX_SKIP_PAGES {
                    break;
                }
            } else {
                pages += 1;
                if pages > MAX_PAGES {
                    break;
                }
            }
            let Some(it) = iterator.clone() else {
                return Ok((out, true, behind));
            };
            let want = (cap + 1 - out.len() as u64).clamp(1, 1000) as i32;
            let page = match api.records(&it, want).await {
                Ok(p) => p,
                Err(e) if e.failure == Failure::ExpiredIterator && renewals < MAX_RENEWALS => {
                    // As the executors' reads: the first at once (a parked
                    // iterator expires between plans), then 100 ms doubling.
                    if renewals > 0 {
                        tokio::time::sleep(Duration::from_millis(100 << (renewals - 1))).await;
                    }
                    renewals += 1;
                    let again = match out.last() {
                        Some(r) => At::After(r.sequence.clone()),
                        None => start.clone(),
                    };
                    iterator = api
                        .iterator(&shard.id, &again)
                        .await
                        .map_err(|e| fail(&e))?;
                    continue;
                }
                Err(e) => return Err(fail(&e)),
            };
            renewals = 0;
            behind = page.behind_ms.or(behind);
            let got = page.records.len();
            for r in page.records {
                if self.frozen_at.is_some_and(|t| r.time_ms > t) {
                    return Ok((out, false, behind));
                }
                // A record without a creation time (0) is kept.
                if out.is_empty() && skip_before.is_some_and(|t| r.time_ms > 0 && r.time_ms < t) {
                    skipped += 1;
                    last_skipped_ms = Some(r.time_ms);
                    continue;
                }
                if out.is_empty() && skipped > 0 {
                    tracing::info!(shard = %shard.id, skipped, "records created before `latest` was resolved skipped");
                }
                out.push(r);
            }
            if out.len() as u64 > cap {
                return Ok((out, false, behind));
            }
            iterator = page.next;
            if iterator.is_none() {
                return Ok((out, true, behind));
            }
            if got == 0 {
                empty += 1;
                at_tip = match self.kind {
                    Kind::Kinesis => page.behind_ms.is_none_or(|b| b == 0),
                    Kind::DynamodbStream => empty >= EMPTY_PAGES_AT_TIP,
                };
                if at_tip {
                    break;
                }
            } else if page.behind_ms == Some(0) && got < want as usize {
                // Caught up, by Kinesis's word; a full page is read on
                // from (kinesalite says 0 whatever is left, and a page cut
                // at the limit says nothing of what follows).
                at_tip = true;
                break;
            }
        }
        // Cut short while skipping: behind by at least the last skipped
        // record's age (the next plan goes on from the parked iterator).
        if !at_tip
            && out.is_empty()
            && behind.is_none()
            && let Some(t) = last_skipped_ms
        {
            behind = Some((self.clock.wall().timestamp_millis() - t).max(0));
        }
        // Cut short by the page limit with more to read: the reader is
        // behind by at least its last record's age. DynamoDB Streams says
        // nothing else about it, and its lag alarm must still see it.
        if !at_tip
            && empty == 0
            && behind.is_none()
            && let Some(last) = out.last()
        {
            let now = self.clock.wall().timestamp_millis();
            behind = Some((now - last.time_ms).max(0));
        }
        // Nothing new: the next plan goes on from here (nothing is skipped,
        // since nothing was seen).
        if out.is_empty()
            && let Some(it) = iterator
        {
            self.parked.insert(shard.id.clone(), (position, it));
        }
        Ok((out, false, behind))
    }

    /// Reads a shard from `start` to its newest record (or its end):
    /// how many records, the last one's sequence number, whether it ended.
    async fn read_to_tip(
        &mut self,
        shard: &ShardInfo,
        start: At,
    ) -> Result<(u64, Option<String>, bool), StreamError> {
        let mut at = start;
        let mut count = 0u64;
        let mut last = None;
        loop {
            let (records, ended, _) = self.read_ahead(shard, at.clone(), 100_000).await?;
            count += records.len() as u64;
            if let Some(r) = records.last() {
                last = Some(r.sequence.clone());
                at = At::After(r.sequence.clone());
            }
            if ended || records.is_empty() {
                return Ok((count, last, ended));
            }
            if count > MAX_SKIPPED {
                return Err(self.error(format!(
                    "shard {} holds over {MAX_SKIPPED} records before the snapshot: start from starting_position 'latest' and backfill with a SELECT from the table instead",
                    shard.id
                )));
            }
        }
    }

    fn mark(&mut self, shard: &str, what: &str) {
        self.marks.push(Range {
            source: self.table.clone(),
            split: shard.to_string(),
            first: Some(what.to_string()),
            ..Default::default()
        });
    }

    async fn plan_ranges(&mut self) -> Result<Planned, StreamError> {
        // A table's stream turned off, or off and on (a new ARN), while the
        // job runs: the old stream's shards close and it would idle forever
        // as caught up. The table is asked again every few plans.
        if self.kind == Kind::DynamodbStream {
            self.since_resolved += 1;
            if self.since_resolved >= RESOLVE_EVERY_PLANS {
                self.since_resolved = 0;
                self.api = None;
            }
        }
        self.connect().await?;
        let Some(api) = self.api.as_ref() else {
            return Err(self.error("no client".into()));
        };
        let listed = api.shards().await.map_err(|e| {
            self.note(e.failure);
            self.error(describe(&e))
        })?;
        let ids: BTreeSet<String> = listed.iter().map(|s| s.id.clone()).collect();
        // A shard whose child has a position (or is done) was read to its
        // end: children start only then.
        let vouched: BTreeSet<String> = listed
            .iter()
            .filter(|s| self.positions.contains_key(&s.id) || self.finished.contains(&s.id))
            .flat_map(|s| s.parents.iter().cloned())
            .collect();
        for shard in &self.start_latest {
            let unread = !self.positions.contains_key(shard) && !self.finished.contains(shard);
            if unread && !ids.contains(shard) && !vouched.contains(shard) {
                self.note(Failure::Trimmed);
                return Err(self.error(format!(
                    "shard {shard} started at latest is no longer in the stream (trimmed: streams keep 24 hours) and was never read: the records written to it after the start were lost"
                )));
            }
        }
        for (shard, position) in &self.positions {
            if !ids.contains(shard) && !self.finished.contains(shard) && !vouched.contains(shard) {
                self.note(Failure::Trimmed);
                let since = self
                    .read_at
                    .get(shard)
                    .and_then(|t| ago(*t, self.clock.as_ref()))
                    .map(|(at, ago)| format!(" (created at {at}, {ago} ago)"))
                    .unwrap_or_default();
                return Err(self.error(format!(
                    "shard {shard} is no longer in the stream (trimmed: streams keep 24 hours) and was not read to its end: records after sequence number {position}{since} were lost"
                )));
            }
        }
        // Shards gone from the listing and done with are forgotten, so the
        // state stays as small as the stream.
        self.positions.retain(|s, _| ids.contains(s));
        self.read_at.retain(|s, _| self.positions.contains_key(s));
        self.finished.retain(|s| ids.contains(s));
        self.start_latest.retain(|s| ids.contains(s));
        self.latest_since
            .retain(|s, _| self.start_latest.contains(s));
        // `latest` resolved by this plan reads from the newest record; its
        // time is for when this plan's iterator is gone (a later plan of a
        // shard this one did not park, a restart, an expired iterator).
        let mut resolved_now: BTreeSet<String> = BTreeSet::new();
        if !self.started {
            self.started = true;
            let fresh = self.positions.is_empty() && self.finished.is_empty();
            if (self.options.snapshot && fresh) || self.resnapshot {
                self.marks.push(Range {
                    source: self.table.clone(),
                    split: "snapshot".to_string(),
                    first: Some(MARK_SNAPSHOT.to_string()),
                    start: 0,
                    end: i64::from(self.options.snapshot_segments.max(1)),
                    ..Default::default()
                });
            }
            // A snapshot reads every shard to its tip from the trim horizon
            // instead (so its positions are recorded, not re-resolved).
            if self.options.starting_position == StartingPosition::Latest && !self.resnapshot {
                for s in &listed {
                    if !self.positions.contains_key(&s.id) && !self.finished.contains(&s.id) {
                        let since = self.clock.wall().timestamp_millis();
                        self.start_latest.insert(s.id.clone());
                        self.latest_since.insert(s.id.clone(), since);
                        resolved_now.insert(s.id.clone());
                        self.marks.push(Range {
                            source: self.table.clone(),
                            split: s.id.clone(),
                            first: Some(MARK_LATEST.to_string()),
                            modified_ms: Some(since),
                            ..Default::default()
                        });
                    }
                }
            }
        }
        self.resnapshot = false;
        // Until a plan carrying the mark is taken: a plan that failed
        // (here, in another source, or writing the checkpoint) is made
        // again as a snapshot.
        let snapshot = self
            .marks
            .iter()
            .any(|m| m.first.as_deref() == Some(MARK_SNAPSHOT));
        if snapshot {
            // Every shard is read to its tip from its recorded position:
            // an iterator parked by a plan that failed would skip nothing.
            self.parked.clear();
        }
        let shards = Self::lineage(listed);
        let open = shards
            .iter()
            .filter(|s| !self.finished.contains(&s.id))
            .count()
            .max(1) as u64;
        let cap = self.options.max_records_per_batch.div_ceil(open).max(1);
        let mut ranges = Vec::new();
        let mut pending = 0u64;
        let mut age_ms = 0u64;
        let mut planned_records = 0u64;
        let now = self.clock.wall().timestamp_millis();
        for shard in &shards {
            if self.finished.contains(&shard.id) {
                continue;
            }
            let ready = shard
                .parents
                .iter()
                .all(|p| self.finished.contains(p) || !ids.contains(p));
            if !ready {
                continue;
            }
            let start = match self.positions.get(&shard.id) {
                Some(seq) => At::After(seq.clone()),
                None if self.start_latest.contains(&shard.id) => {
                    match self.latest_since.get(&shard.id) {
                        Some(since) if !resolved_now.contains(&shard.id) => At::Timestamp(*since),
                        _ => At::Latest,
                    }
                }
                None => At::TrimHorizon,
            };
            if snapshot {
                let (skipped, last, ended) = self.read_to_tip(shard, start).await?;
                planned_records += skipped;
                if let Some(last) = last {
                    ranges.push(Range {
                        source: self.table.clone(),
                        split: shard.id.clone(),
                        start: 0,
                        end: skipped as i64,
                        first: Some(MARK_SKIP.to_string()),
                        last: Some(last),
                        ..Default::default()
                    });
                }
                if ended {
                    // Its children are read to their tip in this plan too.
                    self.finished.insert(shard.id.clone());
                    self.mark(&shard.id, MARK_END);
                }
                continue;
            }
            let (mut records, ended, behind) = self.read_ahead(shard, start, cap).await?;
            planned_records += records.len() as u64;
            if records.len() as u64 > cap {
                let waiting = records.split_off(cap as usize);
                pending += waiting.len() as u64;
                if let Some(first) = waiting.first() {
                    age_ms = age_ms.max((now - first.time_ms).max(0) as u64);
                }
            }
            if let Some(b) = behind {
                age_ms = age_ms.max(b.max(0) as u64);
            }
            match (records.first(), records.last()) {
                (Some(first), Some(last)) => ranges.push(Range {
                    source: self.table.clone(),
                    split: shard.id.clone(),
                    start: 0,
                    end: records.len() as i64,
                    first: Some(first.sequence.clone()),
                    last: Some(last.sequence.clone()),
                    last_ms: Some(last.time_ms),
                    ..Default::default()
                }),
                _ if ended => {
                    // Closed and nothing after the committed position: its
                    // children may start.
                    tracing::debug!(shard = %shard.id, "shard read to its end");
                    self.finished.insert(shard.id.clone());
                    self.mark(&shard.id, MARK_END);
                }
                _ => {}
            }
        }
        ranges.extend(self.marks.iter().cloned());
        metrics::counter!("sluice_shard_plan_records_total").increment(planned_records);
        Ok(Planned {
            ranges,
            lag: SourceLag {
                source: self.table.clone(),
                pending,
                pending_bytes: 0,
                age_ms,
            },
        })
    }
}

/// A record time (ms) as RFC 3339, and how long ago that was.
fn ago(time_ms: i64, clock: &dyn Clock) -> Option<(String, humantime::FormattedDuration)> {
    let at = chrono::DateTime::from_timestamp_millis(time_ms)?;
    let secs = (clock.wall() - at).num_seconds().max(0) as u64;
    Some((
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        humantime::format_duration(Duration::from_secs(secs)),
    ))
}

/// How much a trimmed position lost, as far as the shard tells: records
/// created after the last one read (`read_at`, when the checkpoint knows
/// it) and before the oldest the shard still keeps.
async fn oldest_kept(
    api: &dyn ShardApi,
    shard: &str,
    clock: &dyn Clock,
    read_at: Option<i64>,
) -> Option<String> {
    let it = api.iterator(shard, &At::TrimHorizon).await.ok()??;
    let page = api.records(&it, 1).await.ok()?;
    let first = page.records.first()?;
    let (kept, kept_ago) = ago(first.time_ms, clock)?;
    let from = read_at.and_then(|t| {
        let (at, _) = ago(t, clock)?;
        let span = Duration::from_secs((first.time_ms - t).max(0) as u64 / 1000);
        Some(format!(
            " the last record read was created at {at}, so up to {} of records are gone:",
            humantime::format_duration(span)
        ))
    });
    Some(format!(
        ";{} the oldest record shard {shard} keeps was created at {kept} ({kept_ago} ago): every record after the checkpoint's position and before it is gone",
        from.unwrap_or_default()
    ))
}

#[async_trait]
impl Source for ShardSource {
    fn split_column(&self) -> Option<&'static str> {
        Some("shard_id")
    }

    fn table(&self) -> &str {
        &self.table
    }

    async fn plan(&mut self) -> Result<Planned, StreamError> {
        self.fatal
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let mut planned = self.plan_ranges().await;
        let lost = self.lost.swap(false, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = &planned
            && lost
            && self.options.on_trimmed == OnTrimmed::Snapshot
        {
            tracing::warn!(table = %self.table, error = %e, "records the stream no longer keeps were not read: scanning the table again (on_trimmed 'snapshot')");
            metrics::counter!("sluice_shard_resnapshots_total").increment(1);
            self.positions.clear();
            self.read_at.clear();
            self.finished.clear();
            self.start_latest.clear();
            self.parked.clear();
            self.marks
                .retain(|m| m.first.as_deref() == Some(MARK_STREAM));
            self.started = false;
            self.resnapshot = true;
            self.fatal
                .store(false, std::sync::atomic::Ordering::Relaxed);
            planned = self.plan_ranges().await;
            // A trim racing the new snapshot's start: the next plan
            // snapshots again rather than end the run.
            if self.lost.swap(false, std::sync::atomic::Ordering::Relaxed) {
                self.fatal
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if planned.is_err() {
            // The next plan resolves the stream and connects afresh.
            self.api = None;
        }
        self.marked(planned)
    }

    async fn prepare(
        &mut self,
        ranges: &[Range],
        recorded_earlier: bool,
    ) -> Result<(), StreamError> {
        self.fatal
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let mut ready = self.connect().await;
        if ready.is_ok() && recorded_earlier {
            ready = self.still_kept(ranges).await;
        }
        self.marked(ready)
    }

    fn taken(&mut self, ranges: &[Range]) {
        // A snapshot (the first, or after records were trimmed) starts the
        // positions afresh: replayed on restart, it forgets the older ones.
        let snapshot = ranges.iter().any(|r| {
            r.source == self.table && r.first.as_deref() == Some(MARK_SNAPSHOT) && r.last.is_none()
        });
        if snapshot {
            self.positions.clear();
            self.read_at.clear();
            self.finished.clear();
            self.start_latest.clear();
        }
        for r in ranges.iter().filter(|r| r.source == self.table) {
            self.started = true;
            match (&r.first, &r.last) {
                (_, Some(last)) => {
                    let newer = self
                        .positions
                        .get(&r.split)
                        .is_none_or(|p| compare(last, p) == std::cmp::Ordering::Greater);
                    if newer {
                        self.positions.insert(r.split.clone(), last.clone());
                        match r.last_ms {
                            Some(t) => self.read_at.insert(r.split.clone(), t),
                            None => self.read_at.remove(&r.split),
                        };
                    }
                    self.parked.remove(&r.split);
                    self.start_latest.remove(&r.split);
                    self.latest_since.remove(&r.split);
                }
                (Some(mark), None) => {
                    match mark.as_str() {
                        MARK_LATEST if !self.positions.contains_key(&r.split) => {
                            self.start_latest.insert(r.split.clone());
                            if let Some(since) = r.modified_ms {
                                self.latest_since.insert(r.split.clone(), since);
                            }
                        }
                        MARK_END => {
                            self.finished.insert(r.split.clone());
                        }
                        MARK_STREAM if self.stream.is_none() => {
                            self.stream = Some(r.split.clone());
                        }
                        _ => {}
                    }
                    self.marks.retain(|m| m != r);
                }
                (None, None) => {}
            }
        }
    }

    fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "stream": self.stream,
            "positions": self.positions,
            "read_at": self.read_at,
            "finished": self.finished,
            "start_latest": self.start_latest,
            "latest_since": self.latest_since,
        })
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), StreamError> {
        #[derive(serde::Deserialize)]
        struct Saved {
            stream: Option<String>,
            positions: BTreeMap<String, String>,
            #[serde(default)]
            read_at: BTreeMap<String, i64>,
            #[serde(default)]
            finished: BTreeSet<String>,
            #[serde(default)]
            start_latest: BTreeSet<String>,
            #[serde(default)]
            latest_since: BTreeMap<String, i64>,
        }
        let saved: Saved = serde_json::from_value(state.clone())
            .map_err(|e| self.error(format!("its checkpointed state is unreadable: {e}")))?;
        self.stream = saved.stream;
        self.positions = saved.positions;
        self.read_at = saved.read_at;
        self.finished = saved.finished;
        self.start_latest = saved.start_latest;
        self.latest_since = saved.latest_since;
        self.started = true;
        Ok(())
    }

    fn bind(&self, ranges: &[&Range], batch: &mut BatchInputs) -> Result<(), StreamError> {
        let Some(stream) = &self.stream else {
            return Err(self.error("the stream is not resolved yet".into()));
        };
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for r in ranges {
            if r.first.as_deref() == Some(MARK_SNAPSHOT) {
                batch
                    .shards
                    .snapshots
                    .insert(self.location.clone(), (r.end - r.start).max(1) as u32);
                continue;
            }
            let (Some(first), Some(last)) = (&r.first, &r.last) else {
                // A mark (`LATEST`, `END`) reads nothing.
                continue;
            };
            if first == MARK_SKIP {
                continue;
            }
            if !seen.insert(r.split.clone()) {
                return Err(self.error(format!("shard {} twice in one batch", r.split)));
            }
            out.push(ShardRange {
                shard: r.split.clone(),
                first: first.clone(),
                last: last.clone(),
                count: (r.end - r.start).max(0) as u64,
            });
        }
        let picks = &batch.picks;
        if let Some(window) = &picks.window {
            let mine = window
                .iter()
                .filter(|((table, _), _)| *table == self.table)
                .map(|((_, shard), w)| (shard.clone(), *w))
                .collect();
            batch
                .shards
                .windows
                .get_or_insert_default()
                .insert(self.location.clone(), mine);
        }
        let rejected: Vec<Rejected> = picks
            .rejected
            .iter()
            .filter(|(table, ..)| *table == self.table)
            .map(|(_, shard, index, why)| Rejected {
                shard: shard.clone(),
                index: *index,
                why: why.clone(),
            })
            .collect();
        if !rejected.is_empty() {
            batch
                .shards
                .rejected
                .insert(self.location.clone(), rejected);
        }
        batch
            .shards
            .by_location
            .insert(self.location.clone(), (stream.clone(), out));
        Ok(())
    }

    fn pickable(&self, range: &Range) -> Option<u64> {
        match (range.first.as_deref(), &range.last) {
            (Some(MARK_SKIP | MARK_SNAPSHOT), _) | (None, _) | (_, None) => None,
            _ => Some((range.end - range.start).max(0) as u64),
        }
    }

    fn failing_record_limit(&self) -> u64 {
        self.options.max_failing_records
    }

    fn filtered_record_limit(&self) -> Option<u64> {
        self.options.max_filtered_records
    }

    async fn name_records(&self, range: &Range, places: &[u64]) -> Vec<Option<String>> {
        let unknown = vec![None; places.len()];
        let (Some(api), Some(first), Some(last)) = (&self.api, &range.first, &range.last) else {
            return unknown;
        };
        let range = ShardRange {
            shard: range.split.clone(),
            first: first.clone(),
            last: last.clone(),
            count: (range.end - range.start).max(0) as u64,
        };
        match crate::source::shards::read_range(api.as_ref(), &range).await {
            Ok(records) => places
                .iter()
                .map(|i| {
                    let r = records.get(usize::try_from(*i).ok()?)?;
                    Some(format!("sequence number {}", r.sequence))
                })
                .collect(),
            Err(e) => {
                tracing::debug!(shard = %range.shard, error = %e, "reading the records to name them failed");
                unknown
            }
        }
    }

    async fn rows(&self, ranges: &[&Range]) -> Vec<Option<u64>> {
        ranges
            .iter()
            .map(|r| match r.first.as_deref() {
                // Skipped records are not read; a snapshot's rows are
                // counted as it runs.
                Some(MARK_SKIP) => Some(0),
                Some(MARK_SNAPSHOT) => None,
                _ => Some((r.end - r.start).max(0) as u64),
            })
            .collect()
    }

    async fn freeze(&mut self) -> Result<(), StreamError> {
        self.frozen_at = Some(self.clock.wall().timestamp_millis());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::source::shards::api::{ApiError, Body, Change, Page};

    /// A stream in memory: shards, their records (sequence numbers 1, 2,
    /// ... per shard), and iterators `shard@index`.
    #[derive(Default)]
    struct Fake {
        shards: Mutex<Vec<(ShardInfo, Vec<ShardRecord>)>>,
        trimmed_before: Mutex<Option<u64>>,
        /// The next this many `records` calls find their iterator expired.
        expiring: Mutex<u32>,
        /// The most records a page holds, when smaller than asked.
        page_limit: Mutex<Option<usize>>,
        /// Pages say `MillisBehindLatest` 0, whatever is left (kinesalite).
        says_caught_up: std::sync::atomic::AtomicBool,
        /// As DynamoDB Streams: no iterator by time (the trim horizon).
        no_time_iterator: std::sync::atomic::AtomicBool,
        /// Shards still listed whose iterator says they are gone (aged out
        /// between the listing and the call).
        vanished: Mutex<Vec<String>>,
    }

    impl Fake {
        fn add_shard(&self, id: &str, parents: &[&str], records: u64, closed: bool) {
            let info = ShardInfo {
                id: id.into(),
                parents: parents.iter().map(|p| p.to_string()).collect(),
                closed,
            };
            let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
            shards.push((info, vec![]));
            drop(shards);
            self.append(id, records);
        }

        fn append(&self, id: &str, n: u64) {
            self.append_at(id, n, 0);
        }

        /// `n` records created at `time_ms`.
        fn append_at(&self, id: &str, n: u64, time_ms: i64) {
            let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, records)) = shards.iter_mut().find(|(s, _)| s.id == id) {
                for _ in 0..n {
                    let seq = format!("{:030}", records.len() + 1);
                    records.push(ShardRecord {
                        sequence: seq,
                        time_ms,
                        body: Body::Change(Change {
                            event_name: "INSERT".into(),
                            keys: "{}".into(),
                            new_image: None,
                            old_image: None,
                        }),
                    });
                }
            }
        }

        fn close(&self, id: &str) {
            let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((s, _)) = shards.iter_mut().find(|(s, _)| s.id == id) {
                s.closed = true;
            }
        }
    }

    #[async_trait]
    impl ShardApi for Arc<Fake> {
        async fn shards(&self) -> Result<Vec<ShardInfo>, ApiError> {
            let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
            Ok(shards.iter().map(|(s, _)| s.clone()).collect())
        }

        async fn iterator(&self, shard: &str, at: &At) -> Result<Option<String>, ApiError> {
            let vanished = self.vanished.lock().unwrap_or_else(|e| e.into_inner());
            if vanished.iter().any(|v| v == shard) {
                return Err(ApiError {
                    call: "GetShardIterator",
                    failure: Failure::Gone,
                    message: format!("ResourceNotFoundException: shard {shard} does not exist"),
                });
            }
            drop(vanished);
            let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
            let Some((_, records)) = shards.iter().find(|(s, _)| s.id == shard) else {
                return Err(ApiError {
                    call: "GetShardIterator",
                    failure: Failure::Gone,
                    message: format!("ResourceNotFoundException: no shard {shard}"),
                });
            };
            // The trim horizon is the oldest record kept.
            let horizon = self
                .trimmed_before
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or(0) as usize;
            let index = match at {
                At::TrimHorizon => horizon,
                At::Latest => records.len(),
                At::Sequence(s) => s.parse::<usize>().unwrap_or(1) - 1,
                At::After(s) => s.parse::<usize>().unwrap_or(0),
                At::Timestamp(_) if self.no_time_iterator.load(Ordering::Relaxed) => horizon,
                At::Timestamp(ms) => records
                    .iter()
                    .position(|r| r.time_ms >= *ms)
                    .unwrap_or(records.len()),
            };
            let trimmed = self
                .trimmed_before
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if trimmed.is_some_and(|t| (index as u64) < t) {
                return Err(ApiError {
                    call: "GetShardIterator",
                    failure: Failure::Trimmed,
                    message: "TrimmedDataAccessException: too old".into(),
                });
            }
            Ok(Some(format!("{shard}@{index}")))
        }

        async fn records(&self, iterator: &str, limit: i32) -> Result<Page, ApiError> {
            {
                let mut expiring = self.expiring.lock().unwrap_or_else(|e| e.into_inner());
                if *expiring > 0 {
                    *expiring -= 1;
                    return Err(ApiError {
                        call: "GetRecords",
                        failure: Failure::ExpiredIterator,
                        message: "ExpiredIteratorException: too old".into(),
                    });
                }
            }
            let (shard, index) = iterator.split_once('@').unwrap_or_default();
            let index: usize = index.parse().unwrap_or(0);
            let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
            let Some((info, records)) = shards.iter().find(|(s, _)| s.id == shard) else {
                return Ok(Page::default());
            };
            let limit = self
                .page_limit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map_or(limit as usize, |l| l.min(limit as usize));
            let end = (index + limit).min(records.len());
            let next = if info.closed && end == records.len() {
                None
            } else {
                Some(format!("{shard}@{end}"))
            };
            let caught_up = self
                .says_caught_up
                .load(std::sync::atomic::Ordering::Relaxed);
            Ok(Page {
                records: records[index.min(end)..end].to_vec(),
                next,
                behind_ms: caught_up.then_some(0),
            })
        }
    }

    fn source(fake: &Arc<Fake>, cap: u64, latest: bool) -> ShardSource {
        let options = ShardOptions {
            max_records_per_batch: cap,
            starting_position: if latest {
                StartingPosition::Latest
            } else {
                StartingPosition::TrimHorizon
            },
            ..ShardOptions::default()
        };
        let mut s = ShardSource::new(
            "t",
            Kind::Kinesis,
            "kinesis://s",
            "s",
            options,
            crate::clock::ManualClock::new(),
        );
        s.api = Some(Box::new(Arc::clone(fake)));
        s.stream = Some("s".into());
        s
    }

    /// Plans a batch and takes it, as the runner does after a commit:
    /// (shard, records) per range.
    async fn batch(s: &mut ShardSource) -> Result<Vec<(String, i64)>, StreamError> {
        let planned = s.plan().await?;
        s.taken(&planned.ranges);
        Ok(planned
            .ranges
            .iter()
            .filter(|r| r.last.is_some())
            .map(|r| (r.split.clone(), r.end - r.start))
            .collect())
    }

    /// A snapshot's first batch scans the table and skips the records its
    /// scan holds; a restart that replays that batch skips the same ones
    /// and does not scan again.
    #[tokio::test]
    async fn a_snapshot_skips_what_its_scan_holds_and_survives_a_restart() -> Result<(), StreamError>
    {
        let fake = Arc::new(Fake::default());
        // Created long before the snapshot.
        fake.add_shard("x", &[], 3, false);
        let snapshotting = |fake: &Arc<Fake>| {
            let mut s = source(fake, 100, false);
            s.options.snapshot = true;
            s.options.snapshot_segments = 3;
            s
        };
        let mut s = snapshotting(&fake);
        // A plan that is not taken (the checkpoint write failed, another
        // source failed) is made again as the same snapshot.
        let failed = s.plan().await?;
        let first = s.plan().await?;
        assert_eq!(failed.ranges, first.ranges);
        let marks: Vec<(Option<&str>, &str, i64)> = first
            .ranges
            .iter()
            .map(|r| (r.first.as_deref(), r.split.as_str(), r.end - r.start))
            .collect();
        assert!(marks.contains(&(Some(MARK_SKIP), "x", 3)), "{marks:?}");
        assert!(
            marks
                .iter()
                .any(|(m, _, n)| *m == Some(MARK_SNAPSHOT) && *n == 3),
            "{marks:?}"
        );
        let mut inputs = BatchInputs::default();
        s.bind(&first.ranges.iter().collect::<Vec<_>>(), &mut inputs)?;
        assert_eq!(inputs.shards.snapshots.get("kinesis://s"), Some(&3));
        assert_eq!(
            inputs
                .shards
                .by_location
                .get("kinesis://s")
                .map(|b| b.1.len()),
            Some(0),
            "skipped records are not read"
        );
        s.taken(&first.ranges);
        fake.append("x", 2);
        assert_eq!(batch(&mut s).await?, [("x".to_string(), 2)]);

        let mut restarted = snapshotting(&fake);
        restarted.taken(&first.ranges);
        let again = restarted.plan().await?;
        assert!(
            again
                .ranges
                .iter()
                .all(|r| r.first.as_deref() != Some(MARK_SNAPSHOT)),
            "a second scan"
        );
        assert_eq!(again.ranges.iter().map(|r| r.end - r.start).sum::<i64>(), 2);
        Ok(())
    }

    /// A shard that ages out between the listing and its iterator: one
    /// never read is left to the next listing (the run goes on); one read
    /// from a position lost what followed it (the run ends).
    #[tokio::test]
    async fn a_shard_gone_after_the_listing_ends_the_run_only_if_read_from()
    -> Result<(), StreamError> {
        let fake = Arc::new(Fake::default());
        fake.add_shard("x", &[], 3, false);
        fake.vanished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push("x".into());
        let mut s = source(&fake, 100, false);
        let failed = s.plan().await.err();
        assert!(failed.as_ref().is_some_and(|e| !e.is_fatal()), "{failed:?}");
        let mut s = source(&fake, 100, false);
        s.positions.insert("x".into(), format!("{:030}", 1));
        let failed = s.plan().await.err();
        assert!(
            failed.as_ref().is_some_and(StreamError::is_fatal),
            "{failed:?}"
        );
        Ok(())
    }

    /// A batch recorded by an earlier process whose records the stream
    /// trimmed before the re-run: the run ends there, saying they were
    /// lost, instead of failing on the executors batch after batch. A batch
    /// this process planned (or already prepared) is not probed.
    #[tokio::test]
    async fn a_recorded_batch_whose_records_were_trimmed_ends_the_run() -> Result<(), StreamError> {
        let fake = Arc::new(Fake::default());
        fake.add_shard("x", &[], 5, false);
        let mut s = source(&fake, 100, false);
        let planned = s.plan().await?;
        s.prepare(&planned.ranges, true).await?;
        *fake
            .trimmed_before
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(2);
        s.prepare(&planned.ranges, false).await?;
        let failed = s.prepare(&planned.ranges, true).await.err();
        assert!(failed.as_ref().is_some_and(StreamError::is_fatal));
        let err = failed.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("the recorded batch re-runs from sequence number")
                && err.contains("were lost"),
            "{err}"
        );
        Ok(())
    }

    /// With `on_trimmed 'snapshot'`, records trimmed before they were read
    /// make the next batch a snapshot instead of an error.
    #[tokio::test]
    async fn trimmed_records_can_be_replaced_by_a_snapshot() -> Result<(), StreamError> {
        let fake = Arc::new(Fake::default());
        fake.add_shard("x", &[], 5, false);
        *fake
            .trimmed_before
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(2);
        let mut s = source(&fake, 100, false);
        s.options.on_trimmed = OnTrimmed::Snapshot;
        s.started = true;
        s.positions.insert("x".into(), format!("{:030}", 1));
        let planned = s.plan().await?;
        let marks: Vec<(Option<&str>, i64)> = planned
            .ranges
            .iter()
            .map(|r| (r.first.as_deref(), r.end - r.start))
            .collect();
        assert!(marks.contains(&(Some(MARK_SNAPSHOT), 4)), "{marks:?}");
        // From the trim horizon (record 3) to the newest (5): skipped.
        assert!(marks.contains(&(Some(MARK_SKIP), 3)), "{marks:?}");
        s.taken(&planned.ranges);
        fake.append("x", 1);
        assert_eq!(batch(&mut s).await?, [("x".to_string(), 1)]);
        Ok(())
    }

    #[tokio::test]
    async fn latest_is_per_shard_and_recorded_with_the_next_batch() -> Result<(), StreamError> {
        let fake = Arc::new(Fake::default());
        fake.add_shard("x", &[], 3, false);
        fake.add_shard("y", &[], 4, false);
        let mut s = source(&fake, 100, true);
        let first = s.plan().await?;
        // Nothing to read yet, but where each shard starts is planned.
        assert!(first.ranges.iter().all(|r| r.last.is_none()));
        assert_eq!(first.ranges.len(), 2);
        fake.append("x", 2);
        let second = s.plan().await?;
        s.taken(&second.ranges);
        // The batch carries the marks too, so a restart from its plan
        // knows y starts at its newest record, not at its oldest.
        let mut restarted = source(&fake, 100, false);
        restarted.taken(&second.ranges);
        assert_eq!(
            batch(&mut restarted).await?,
            [],
            "y's older records are skipped"
        );
        // Arriving after the start (Kinesis goes on from its time).
        fake.append_at("y", 1, chrono::Utc::now().timestamp_millis() + 1_000);
        assert_eq!(batch(&mut restarted).await?, [("y".to_string(), 1)]);
        assert_eq!(batch(&mut s).await?, [("y".to_string(), 1)]);
        Ok(())
    }

    /// A shard started at `latest` with nothing read yet: a restart goes on
    /// from when the first process resolved it, so what arrived while it
    /// was down is read, and what was there before is not.
    #[tokio::test]
    async fn a_latest_kinesis_shard_goes_on_from_its_start_time_after_a_restart()
    -> Result<(), StreamError> {
        latest_goes_on_from_its_start_time(Kind::Kinesis).await
    }

    /// The same on DynamoDB Streams, which has no iterator by time: the
    /// reader skips from the trim horizon by creation time.
    #[tokio::test]
    async fn a_latest_dynamodb_shard_goes_on_from_its_start_time_after_a_restart()
    -> Result<(), StreamError> {
        latest_goes_on_from_its_start_time(Kind::DynamodbStream).await
    }

    async fn latest_goes_on_from_its_start_time(kind: Kind) -> Result<(), StreamError> {
        let fake = Arc::new(Fake::default());
        fake.no_time_iterator
            .store(kind == Kind::DynamodbStream, Ordering::Relaxed);
        let before = chrono::Utc::now().timestamp_millis() - 600_000;
        fake.add_shard("x", &[], 0, false);
        fake.append_at("x", 3, before);
        let source = |fake: &Arc<Fake>, cap: u64, latest: bool| {
            let mut s = source(fake, cap, latest);
            s.kind = kind;
            s
        };
        let mut first = source(&fake, 100, true);
        let planned = first.plan().await?;
        // Nothing to read: only the mark, with when `latest` was resolved.
        let mark = planned
            .ranges
            .iter()
            .find(|r| r.first.as_deref() == Some(MARK_LATEST))
            .cloned()
            .unwrap_or_default();
        let since = mark.modified_ms.unwrap_or_default();
        assert!(since > before, "{mark:?}");
        // The process dies; records arrive; a new one takes the recorded
        // start (as the runner replays `starts/`). The one created two
        // minutes before is older than the start even with the margin.
        fake.append_at("x", 1, since - 2 * CREATION_TIME_ROUNDING_MS - 1);
        fake.append_at("x", 2, since + 500);
        let mut restarted = source(&fake, 100, true);
        restarted.taken(&planned.ranges);
        assert_eq!(batch(&mut restarted).await?, [("x".to_string(), 2)]);
        // Its compacted state keeps the start too.
        let state = first.snapshot();
        let mut from_state = source(&fake, 100, true);
        from_state.restore(&state)?;
        assert_eq!(batch(&mut from_state).await?, [("x".to_string(), 2)]);
        Ok(())
    }

    /// A shard started at `latest` and never read that is gone from the
    /// listing (the stream was down past its retention) lost whatever was
    /// written to it after the start: the plan says so.
    #[tokio::test]
    async fn a_latest_shard_gone_unread_is_reported_lost() -> Result<(), StreamError> {
        let fake = Arc::new(Fake::default());
        fake.add_shard("y", &[], 1, false);
        let mut s = source(&fake, 100, true);
        s.started = true;
        s.start_latest.insert("x".into());
        s.latest_since.insert("x".into(), 1);
        let err = plan_error(&mut s).await;
        assert!(
            err.contains("shard x started at latest is no longer in the stream"),
            "{err}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_trimmed_parent_whose_child_has_a_position_is_not_lost() -> Result<(), StreamError> {
        let fake = Arc::new(Fake::default());
        fake.add_shard("c", &["p"], 2, false);
        let mut s = source(&fake, 100, false);
        s.positions.insert("p".into(), format!("{:030}", 9));
        s.positions.insert("c".into(), format!("{:030}", 1));
        assert_eq!(batch(&mut s).await?, [("c".to_string(), 1)]);
        assert!(!s.positions.contains_key("p"), "forgotten once gone");
        Ok(())
    }

    #[tokio::test]
    async fn a_split_parent_is_read_to_its_end_before_its_children_and_every_record_once()
    -> Result<(), StreamError> {
        let fake = Arc::new(Fake::default());
        fake.add_shard("p", &[], 5, true);
        fake.add_shard("a", &["p"], 3, false);
        fake.add_shard("b", &["p"], 2, false);
        let mut s = source(&fake, 1_000, false);
        assert_eq!(batch(&mut s).await?, [("p".to_string(), 5)]);
        // The parent is done; its children start in the same plan.
        assert_eq!(
            batch(&mut s).await?,
            [("a".to_string(), 3), ("b".to_string(), 2)]
        );
        assert_eq!(batch(&mut s).await?, []);
        fake.append("a", 4);
        assert_eq!(batch(&mut s).await?, [("a".to_string(), 4)]);
        Ok(())
    }

    #[tokio::test]
    async fn a_merge_waits_for_both_parents() -> Result<(), StreamError> {
        let fake = Arc::new(Fake::default());
        fake.add_shard("l", &[], 2, true);
        fake.add_shard("r", &[], 3, false);
        fake.add_shard("m", &["l", "r"], 4, false);
        let mut s = source(&fake, 1_000, false);
        assert_eq!(
            batch(&mut s).await?,
            [("l".to_string(), 2), ("r".to_string(), 3)]
        );
        // `r` is still open: `m` waits.
        assert_eq!(batch(&mut s).await?, []);
        fake.append("r", 1);
        fake.close("r");
        assert_eq!(batch(&mut s).await?, [("r".to_string(), 1)]);
        assert_eq!(batch(&mut s).await?, [("m".to_string(), 4)]);
        Ok(())
    }

    #[tokio::test]
    async fn the_cap_is_shared_between_shards_and_the_rest_waits_as_lag() -> Result<(), StreamError>
    {
        let fake = Arc::new(Fake::default());
        fake.add_shard("x", &[], 10, false);
        fake.add_shard("y", &[], 10, false);
        let mut s = source(&fake, 8, false);
        let planned = s.plan().await?;
        let counts: Vec<i64> = planned.ranges.iter().map(|r| r.end - r.start).collect();
        assert_eq!(counts, [4, 4]);
        assert_eq!(
            planned.lag.pending, 2,
            "one record seen beyond the cap per shard"
        );
        s.taken(&planned.ranges);
        let mut total = 8;
        for _ in 0..5 {
            total += batch(&mut s).await?.iter().map(|(_, n)| n).sum::<i64>();
        }
        assert_eq!(total, 20);
        Ok(())
    }

    /// A plan cut short by its page limit before the shard's tip (small
    /// pages, no `MillisBehindLatest` as with DynamoDB Streams) reports the
    /// age of where it stopped, so a `lag_age` alarm sees the backlog.
    #[tokio::test]
    async fn a_read_cut_short_before_the_tip_reports_its_age() -> Result<(), StreamError> {
        let fake = Arc::new(Fake::default());
        fake.add_shard("x", &[], 0, false);
        fake.append_at("x", 200, 1_000);
        *fake.page_limit.lock().unwrap_or_else(|e| e.into_inner()) = Some(1);
        let mut s = source(&fake, 1_000, false);
        let now = s.clock.wall().timestamp_millis();
        let planned = s.plan().await?;
        assert_eq!(planned.ranges[0].end, MAX_PAGES as i64);
        assert_eq!(planned.lag.age_ms, (now - 1_000) as u64);
        // Read to the tip: nothing waits, no age.
        *fake.page_limit.lock().unwrap_or_else(|e| e.into_inner()) = None;
        s.taken(&planned.ranges);
        let rest = s.plan().await?;
        assert_eq!(rest.ranges[0].end, 150);
        assert_eq!(rest.lag.age_ms, 0);
        Ok(())
    }

    /// A full page that says it is caught up is read on from: the plan
    /// takes the shard's records up to the cap, not one page of them.
    #[tokio::test]
    async fn full_pages_are_read_on_from_whatever_they_say_of_the_tip() -> Result<(), StreamError> {
        let fake = Arc::new(Fake::default());
        fake.add_shard("x", &[], 2_500, false);
        fake.says_caught_up
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut s = source(&fake, 10_000, false);
        let planned = s.plan().await?;
        // Pages of 1,000, 1,000 and 500: the last, not full, ends the read.
        assert_eq!(planned.ranges[0].end, 2_500);
        assert_eq!(planned.lag.pending, 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_restart_goes_on_from_the_checkpointed_positions() -> Result<(), StreamError> {
        let fake = Arc::new(Fake::default());
        fake.add_shard("x", &[], 6, false);
        let mut s = source(&fake, 4, false);
        let first = s.plan().await?;
        s.taken(&first.ranges);
        let saved = s.snapshot();
        let mut again = source(&fake, 4, false);
        again.restore(&saved)?;
        assert_eq!(batch(&mut again).await?, [("x".to_string(), 2)]);
        // Replaying a recorded plan (offsets/N) moves the position too.
        let mut replayed = source(&fake, 4, false);
        replayed.taken(&first.ranges);
        assert_eq!(batch(&mut replayed).await?, [("x".to_string(), 2)]);
        Ok(())
    }

    #[tokio::test]
    async fn latest_skips_what_was_there_and_keeps_its_place_until_records_come()
    -> Result<(), StreamError> {
        let fake = Arc::new(Fake::default());
        fake.add_shard("x", &[], 3, false);
        let mut s = source(&fake, 100, true);
        assert_eq!(batch(&mut s).await?, []);
        fake.append("x", 2);
        assert_eq!(batch(&mut s).await?, [("x".to_string(), 2)]);
        Ok(())
    }

    #[tokio::test]
    async fn an_executor_reads_exactly_the_planned_range_or_says_what_differs() {
        use crate::source::shards::{ShardRange, read_range};
        let fake = Arc::new(Fake::default());
        fake.add_shard("x", &[], 10, false);
        let seq = |n: u64| format!("{n:030}");
        let range = ShardRange {
            shard: "x".into(),
            first: seq(3),
            last: seq(7),
            count: 5,
        };
        let got = read_range(&fake, &range).await.unwrap_or_default();
        let seqs: Vec<String> = got.iter().map(|r| r.sequence.clone()).collect();
        assert_eq!(seqs, (3..=7).map(seq).collect::<Vec<_>>());
        let wrong = ShardRange {
            count: 6,
            ..range.clone()
        };
        let err = read_range(&fake, &wrong).await.err().unwrap_or_default();
        assert!(
            err.contains("read 5 records") && err.contains("counted 6"),
            "{err}"
        );
        // Expired iterators are renewed, a few times in a row at most.
        *fake.expiring.lock().unwrap_or_else(|e| e.into_inner()) = 2;
        let renewed = read_range(&fake, &range).await.unwrap_or_default();
        assert_eq!(renewed.len(), 5);
        *fake.expiring.lock().unwrap_or_else(|e| e.into_inner()) = u32::MAX;
        let err = read_range(&fake, &range).await.err().unwrap_or_default();
        assert!(
            err.contains("ExpiredIteratorException")
                && err.contains("renewed 5 times in a row without reading a page"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn lost_records_fail_the_plan_saying_so() {
        let fake = Arc::new(Fake::default());
        fake.add_shard("x", &[], 3, false);
        let mut s = source(&fake, 100, false);
        s.positions
            .insert("gone".into(), "000000000000000000000000000007".into());
        let failed = s.plan().await.err();
        // No retry brings lost records back: the run ends, `--every` or not.
        assert!(failed.as_ref().is_some_and(StreamError::is_fatal));
        let err = failed.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("shard gone is no longer in the stream") && err.contains("were lost"),
            "{err}"
        );
        let mut s = source(&fake, 100, false);
        *fake
            .trimmed_before
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(2);
        s.positions
            .insert("x".into(), "000000000000000000000000000001".into());
        let failed = s.plan().await.err();
        assert!(failed.as_ref().is_some_and(StreamError::is_fatal));
        let err = failed.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("TrimmedDataAccessException") && err.contains("were lost"),
            "{err}"
        );
        // How much: up to the oldest record the shard still keeps.
        assert!(
            err.contains("the oldest record shard x keeps was created at 1970-01-01T00:00:00Z"),
            "{err}"
        );
        // And from the last record read, when the checkpoint knows its time
        // (an hour before the oldest kept here).
        let mut s = source(&fake, 100, false);
        s.taken(&[Range {
            source: s.table.clone(),
            split: "x".into(),
            start: 0,
            end: 1,
            first: Some("000000000000000000000000000001".into()),
            last: Some("000000000000000000000000000001".into()),
            last_ms: Some(-3_600_000),
            ..Default::default()
        }]);
        let restored = s.snapshot();
        let mut s = source(&fake, 100, false);
        s.restore(&restored).unwrap();
        let err = plan_error(&mut s).await;
        assert!(
            err.contains("the last record read was created at 1969-12-31T23:00:00Z, so up to 1h of records are gone: the oldest record shard x keeps was created at 1970-01-01T00:00:00Z"),
            "{err}"
        );
    }

    /// Why `s`'s next plan failed ("" if it did not).
    async fn plan_error(s: &mut ShardSource) -> String {
        s.plan()
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    fn shard(id: &str, parents: &[&str]) -> ShardInfo {
        ShardInfo {
            id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            closed: false,
        }
    }

    #[test]
    fn parents_come_before_children_whatever_the_listing_order() {
        let listed = vec![
            shard("merged", &["left", "right"]),
            shard("right", &["root"]),
            shard("left", &["root"]),
            shard("root", &["trimmed-away"]),
        ];
        let order: Vec<String> = ShardSource::lineage(listed)
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(order, ["root", "right", "left", "merged"]);
    }
}
