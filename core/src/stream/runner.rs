//! The stream loop: claims the checkpoint, finds the job's sources, replays
//! the checkpoint, then per batch: plans the sources' ranges, records them
//! (`offsets/N`), runs the job file once over them through the client's
//! [`JobRunner`] (each write named by the batch, so a re-run finds what an
//! earlier attempt committed), records the commit (`commits/N`), reports,
//! and checks the alarms. A failed batch is retried over the same ranges
//! with backoff (`--every`) or fails the run (`--once`, `--available-now`);
//! a source failure no retry mends (`StreamError::SourceFatal`: records
//! lost, a stream gone) fails the run under `--every` too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use metrics::counter;
use serde::Serialize;
use tracing::Instrument;

use super::alarm::{AlarmEvent, AlarmRule, AlarmState, Notifier};
use super::checkpoint::{BatchPlan, Checkpoint, Retake, State};
use super::error::StreamError;
use super::files::{FileSource, FileSourceOptions};
use super::info::{BatchInfo, BatchWrite, RejectedRecord, SplitInput};
use super::isolate::{Outcome, Probe, Records, isolate};
use super::source::{BatchInputs, Picks, Range, Source};
use super::trigger::Trigger;
use crate::client::job::{Action, classify, split_statements, substitute};
use crate::client::{BatchWrites, DeferredWrite, Interrupter, JobReport, JobRunner};
use crate::clock::Clock;
use crate::error::{SluiceError, render};
use crate::sink::files::WriteSpec;
use crate::sink::files::lock::{Holder, LockError, LockGuard};
use crate::sink::files::manifest::hostname;

/// The longest wait between retries of a failing batch.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How many times a batch's commit record is tried before the run ends.
const COMMIT_RECORD_TRIES: u32 = 5;
/// What a stream source's error says when a batch's range holds more bad
/// records than `max_bad_records` (`source::shards`, `source::kafka`; not
/// a directory table's, whose files a fix can replace).
const OVER_BAD_RECORD_LIMIT: [&str; 2] = [
    " bad records in this batch's range",
    ", over max_bad_records ",
];
/// Job variables (`SET stream.alarm.x = '...'`) that add alarm rules.
const ALARM_VAR: &str = "stream.alarm";

#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The checkpoint directory (local path or `s3://`).
    pub checkpoint: String,
    pub trigger: Trigger,
    pub files: FileSourceOptions,
    /// How long the checkpoint's claim outlives a process that stopped.
    pub lock_ttl: Duration,
    /// Alarm rules (see `alarm`), with those the job sets.
    pub alarms: Vec<String>,
    pub webhook: Option<String>,
    pub alarm_command: Option<String>,
    /// Compact the checkpoint every this many batches.
    pub compact_every: u64,
    /// Batch reports kept in the checkpoint for `sluice stream status`.
    pub retain: u64,
    /// A batch running longer is cancelled and fails (then runs again).
    pub batch_timeout: Option<Duration>,
}

impl StreamOptions {
    pub fn new(checkpoint: &str, trigger: Trigger) -> Self {
        Self {
            checkpoint: checkpoint.to_string(),
            trigger,
            files: FileSourceOptions::default(),
            lock_ttl: crate::sink::files::lock::DEFAULT_TTL,
            alarms: vec![],
            webhook: None,
            alarm_command: None,
            compact_every: 10,
            retain: 100,
            batch_timeout: None,
        }
    }
}

/// What the loop tells whoever shows it.
pub trait StreamObserver: Send + Sync {
    fn started(&self, _stream_id: &str, _resuming: Option<u64>, _next_batch: u64) {}
    fn batch_started(&self, _batch_id: u64, _splits: usize, _resumed: bool) {}
    fn batch_done(&self, _info: &BatchInfo) {}
    fn idle(&self, _next_due: Option<DateTime<Utc>>) {}
    fn batch_failed(&self, _batch_id: u64, _error: &str, _retry_in: Option<Duration>) {}
    fn alarm(&self, _event: &AlarmEvent) {}
}

/// Logs an alarm's change and hands it to the observer and the notifier.
fn raise(observer: &dyn StreamObserver, notifier: &Notifier, event: &AlarmEvent) {
    match event.state {
        super::alarm::Change::Firing => {
            tracing::warn!(alarm = %event.alarm, value = event.value, threshold = event.threshold, "stream alarm firing")
        }
        super::alarm::Change::Cleared => {
            tracing::info!(alarm = %event.alarm, value = event.value, "stream alarm cleared")
        }
    }
    observer.alarm(event);
    notifier.notify(event);
}

/// How a run ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamSummary {
    pub stream_id: String,
    pub checkpoint: String,
    pub batches: u64,
    pub last_batch_id: Option<u64>,
    pub input_rows: u64,
    pub rows_written: u64,
    pub files_written: u64,
    pub bytes_written: u64,
    /// Stopped by a signal (a batch it interrupted runs again next time).
    pub stopped: bool,
}

pub struct StreamRunner {
    runner: JobRunner,
    file: String,
    source: String,
    vars: HashMap<String, String>,
    options: StreamOptions,
    observer: Arc<dyn StreamObserver>,
    clock: Arc<dyn Clock>,
}

impl StreamRunner {
    pub fn new(
        runner: JobRunner,
        file: &str,
        source: &str,
        vars: HashMap<String, String>,
        options: StreamOptions,
        observer: Arc<dyn StreamObserver>,
    ) -> Self {
        Self {
            runner,
            file: file.to_string(),
            source: source.to_string(),
            vars,
            options,
            observer,
            clock: crate::clock::system(),
        }
    }

    /// Interrupts the batch that is running (its job is cancelled and its
    /// writes cleaned up; it runs again on the next start).
    pub fn interrupter(&self) -> Interrupter {
        self.runner.interrupter()
    }

    /// Runs until the trigger says stop, `stop` turns true, or a batch
    /// fails where the trigger does not retry.
    pub async fn run(
        mut self,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<StreamSummary, StreamError> {
        let ctx = self.runner.context().clone();
        let url = crate::sink::files::normalize_output_url(&self.options.checkpoint)?;
        let store = ctx
            .runtime_env()
            .object_store_registry
            .get_store(&url)
            .map_err(|e| StreamError::Setting(format!("checkpoint {url}: {e}")))?;
        let checkpoint = Checkpoint::new(store, &url)?;
        let meta = checkpoint.metadata(&self.file).await?;
        let holder = Holder {
            write_id: format!("stream {}", meta.id),
            job: self.file.clone(),
            host: hostname(),
            pid: std::process::id(),
            since: Utc::now(),
            ttl_ms: self.options.lock_ttl.as_millis() as u64,
        };
        // A claim of a process of this machine that died (its pid is gone)
        // is taken over at once; a live holder, or one on another machine
        // (until its claim lapses), refuses the start.
        let lock = checkpoint
            .lock(Arc::clone(&self.clock))
            .taking_over_earlier_attempts();
        let claimed = LockGuard::acquire(lock, holder, Duration::ZERO).await;
        let guard = claimed.map_err(|e| match e {
            LockError::Busy { url, holder, .. } => StreamError::InUse {
                url,
                ttl_s: holder.ttl_ms / 1000,
                holder,
            },
            other => other.into(),
        })?;
        let result = self
            .run_claimed(&ctx, &checkpoint, &meta.id, &guard, stop)
            .await;
        if let Err(e) = guard.release().await {
            tracing::warn!(error = %e, "releasing the checkpoint's claim failed; it expires");
        }
        result
    }

    /// CRC-32 of the job's text and its command-line variables, recorded
    /// with each planned batch.
    fn job_digest(&self) -> String {
        let mut h = crc32fast::Hasher::new();
        h.update(self.source.as_bytes());
        let mut vars: Vec<_> = self.vars.iter().collect();
        vars.sort();
        for (k, v) in vars {
            for part in [k.as_bytes(), b"\0", v.as_bytes(), b"\0"] {
                h.update(part);
            }
        }
        format!("{:08x}", h.finalize())
    }

    /// The job's streaming sources: its directory tables, and the alarm
    /// rules it sets.
    async fn discover(
        &self,
        ctx: &SessionContext,
    ) -> Result<(Vec<Box<dyn Source>>, Vec<String>), StreamError> {
        let mut vars = self.vars.clone();
        let mut sources: Vec<Box<dyn Source>> = Vec::new();
        let mut alarms = Vec::new();
        let mut writes: Vec<String> = Vec::new();
        let mut file_dirs: Vec<(String, String)> = Vec::new();
        for raw in split_statements(&self.source) {
            let text = substitute(&raw.text, &vars, &self.file, raw.line)?;
            match classify(&text, &self.file, raw.line)? {
                Action::SetVar { key, value } => {
                    if key.to_ascii_lowercase().starts_with(ALARM_VAR) {
                        alarms.push(value.clone());
                    }
                    if !self.vars.contains_key(&key) {
                        vars.insert(key, value);
                    }
                }
                Action::Sql(sql) => {
                    let Ok(parsed) = DFParser::parse_sql(&sql) else {
                        continue;
                    };
                    let Some(DfStatement::CreateExternalTable(cmd)) = parsed.front() else {
                        continue;
                    };
                    let [location] = cmd.locations.as_slice() else {
                        continue;
                    };
                    let format = cmd.file_type.to_ascii_uppercase();
                    if let Some(kind) = crate::source::shards::Kind::from_stored_as(&format) {
                        let bad = |e: datafusion::error::DataFusionError| StreamError::Source {
                            table: cmd.name.to_string(),
                            location: location.clone(),
                            what: e.to_string(),
                        };
                        let name =
                            crate::source::shards::parse_location(kind, location).map_err(bad)?;
                        let options = crate::source::shards::ShardOptions::parse(
                            kind,
                            &option_texts(&cmd.options),
                        )
                        .map_err(bad)?;
                        let fixed = crate::source::shards::fixed_fields(options.format);
                        // Named as SQL folds them: quoted names keep their case.
                        let declared = cmd
                            .columns
                            .iter()
                            .map(|c| match c.name.quote_style {
                                Some(_) => c.name.value.clone(),
                                None => c.name.value.to_ascii_lowercase(),
                            })
                            .filter(|n| !fixed.iter().any(|f| f.name() == n))
                            .collect();
                        sources.push(Box::new(
                            super::shards::ShardSource::new(
                                &cmd.name.to_string(),
                                kind,
                                location,
                                &name,
                                options,
                                Arc::clone(&self.clock),
                            )
                            .with_declared(declared),
                        ));
                        continue;
                    }
                    if format == crate::source::kafka::KAFKA {
                        let bad = |e: datafusion::error::DataFusionError| StreamError::Source {
                            table: cmd.name.to_string(),
                            location: location.clone(),
                            what: e.to_string(),
                        };
                        let parsed =
                            crate::source::kafka::KafkaLocation::parse(location).map_err(bad)?;
                        let options =
                            crate::source::kafka::KafkaOptions::parse(&option_texts(&cmd.options))
                                .map_err(bad)?;
                        sources.push(Box::new(super::kafka::KafkaSource::new(
                            &cmd.name.to_string(),
                            parsed,
                            options,
                            Arc::clone(&self.clock),
                        )));
                        continue;
                    }
                    let Ok(url) = ListingTableUrl::parse(location) else {
                        continue;
                    };
                    if !url.is_collection()
                        || !["PARQUET", "CSV", "JSON", "ARROW"].contains(&format.as_str())
                    {
                        continue;
                    }
                    let store =
                        ctx.runtime_env()
                            .object_store(url.object_store())
                            .map_err(|e| StreamError::Source {
                                table: cmd.name.to_string(),
                                location: location.clone(),
                                what: e.to_string(),
                            })?;
                    sources.push(Box::new(FileSource::new(
                        &cmd.name.to_string(),
                        location,
                        &format,
                        store,
                        self.options.files.clone(),
                        Arc::clone(&self.clock),
                    )?));
                    file_dirs.push((cmd.name.to_string(), url.as_str().to_string()));
                }
                Action::Write { url, .. } => writes.push(url),
            }
        }
        // A file source takes every file under its directory: the stream's
        // own checkpoint or output there would be read back as input.
        let under = |location: &str, dir: &str| {
            ListingTableUrl::parse(location)
                .map(|u| format!("{}/", u.as_str().trim_end_matches('/')).starts_with(dir))
                .unwrap_or(false)
        };
        let own = std::iter::once(("checkpoint", self.options.checkpoint.as_str()))
            .chain(writes.iter().map(|w| ("output", w.as_str())));
        for (what, location) in own {
            if let Some((table, dir)) = file_dirs.iter().find(|(_, dir)| under(location, dir)) {
                return Err(StreamError::Setting(format!(
                    "{}: the {what} {location} is under the directory of file source {table} ({dir}): the stream would read its own {what} back as input",
                    self.file
                )));
            }
        }
        if sources.is_empty() {
            return Err(StreamError::Setting(format!(
                "{}: the job reads no streaming table (CREATE EXTERNAL TABLE ... STORED AS PARQUET|CSV|JSON LOCATION 'dir/', STORED AS KAFKA LOCATION 'kafka://host:port/topic', STORED AS DYNAMODB_STREAM LOCATION 'dynamodb://table' or STORED AS KINESIS LOCATION 'kinesis://stream'), so there is nothing to stream",
                self.file
            )));
        }
        Ok((sources, alarms))
    }

    /// Runs the loop, then lets the alarm notifications it queued go out
    /// (within a bound), so an alarm raised just before the end is not lost.
    async fn run_claimed(
        &mut self,
        ctx: &SessionContext,
        checkpoint: &Checkpoint,
        stream_id: &str,
        guard: &LockGuard,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<StreamSummary, StreamError> {
        let notifier = Notifier::start(
            self.options.webhook.clone(),
            self.options.alarm_command.clone(),
        )?;
        let result = self
            .run_loop(ctx, checkpoint, stream_id, guard, stop, &notifier)
            .await;
        notifier.finish().await;
        result
    }

    async fn run_loop(
        &mut self,
        ctx: &SessionContext,
        checkpoint: &Checkpoint,
        stream_id: &str,
        guard: &LockGuard,
        mut stop: tokio::sync::watch::Receiver<bool>,
        notifier: &Notifier,
    ) -> Result<StreamSummary, StreamError> {
        let (mut sources, job_alarms) = self.discover(ctx).await?;
        let interval = self.options.trigger.interval();
        let rules = self
            .options
            .alarms
            .iter()
            .chain(&job_alarms)
            .map(|text| AlarmRule::parse(text, interval))
            .collect::<Result<Vec<_>, _>>()?;
        let mut alarms = AlarmState::new(rules, stream_id, checkpoint.url());
        let recovered = checkpoint.recover().await?;
        if let Some(state) = &recovered.state {
            for s in &mut sources {
                if let Some(v) = state.sources.get(s.table()) {
                    s.restore(v)?;
                }
            }
        }
        // In batch order: the starts recorded before batch N, then N.
        let mut starts = recovered.starts.iter().peekable();
        for plan in &recovered.replay {
            while let Some(st) = starts.next_if(|st| st.before_batch <= plan.batch_id) {
                for s in &mut sources {
                    s.taken(&st.ranges);
                }
            }
            for s in &mut sources {
                s.taken(&plan.ranges);
            }
        }
        for st in starts {
            for s in &mut sources {
                s.taken(&st.ranges);
            }
        }
        if self.options.trigger == Trigger::AvailableNow {
            for s in &mut sources {
                s.freeze().await?;
            }
        }
        let digest = self.job_digest();
        if let Some(p) = &recovered.pending {
            if p.job_digest.as_ref().is_some_and(|d| *d != digest) {
                // The changed job must read what the batch recorded.
                let reads_it = p
                    .ranges
                    .iter()
                    .all(|r| sources.iter().any(|s| s.table() == r.source));
                if !recovered.pending_taken_back || !reads_it {
                    return Err(StreamError::JobChanged {
                        url: checkpoint.url().to_string(),
                        file: self.file.clone(),
                        batch_id: p.batch_id,
                    });
                }
                // The run ended on it and took its writes back: the changed
                // job (a fixed job, a raised limit) takes it up.
                tracing::warn!(
                    batch_id = p.batch_id,
                    "the batch the last run ended on runs under the changed job"
                );
            }
            // Taken up by a changed job or back by the same one, the batch
            // is this job's: what it writes now is not taken back, so no
            // other job may take the batch up after this attempt.
            if recovered.pending_taken_back {
                checkpoint
                    .write_retake(&Retake {
                        batch_id: p.batch_id,
                        failed_under: None,
                        runs_under: Some(digest.clone()),
                        at: self.clock.wall(),
                    })
                    .await?;
            }
        }
        // The batch this start took up (or back) after a run ended on it:
        // stopped again before it fails, it stays open to a changed job.
        let retaken = recovered
            .pending
            .as_ref()
            .filter(|_| recovered.pending_taken_back)
            .map(|p| p.batch_id);
        let mut pending = recovered.pending;
        // The batch an earlier process recorded: its sources check it once
        // (it may have waited past the stream's retention), not on every
        // retry of this process.
        let mut probe = pending.as_ref().map(|p| p.batch_id);
        // The last committed batch's writes: a crash may have cut their
        // publish short.
        let mut unpublished: Option<(u64, Vec<WriteSpec>)> = recovered
            .last_commit
            .as_ref()
            .map(|c| c.batch_id)
            .filter(|_| !recovered.last_publishes.is_empty())
            .map(|id| (id, recovered.last_publishes.clone()));
        let mut next_id = recovered.next_batch;
        self.observer
            .started(stream_id, pending.as_ref().map(|p| p.batch_id), next_id);
        let mut summary = StreamSummary {
            stream_id: stream_id.to_string(),
            checkpoint: checkpoint.url().to_string(),
            ..Default::default()
        };
        let mut last_commit = self.clock.now();
        let mut previous_start = recovered.last_commit.map(|b| b.started_at);
        let mut due = self.clock.wall();
        let mut failures: u32 = 0;
        // The records of a batch its job fails on alone, found by a search
        // (read as bad records when it runs again), and the batch an
        // attempt of which published a write before failing (nothing takes
        // that back).
        let mut rejected: Option<(u64, Vec<RejectedRecord>)> = None;
        // With the write prefix that attempt used: later attempts keep it,
        // to find that write.
        let mut early: Option<(u64, String)> = None;

        loop {
            if *stop.borrow() {
                summary.stopped = true;
                break;
            }
            if guard.lost() {
                return Err(StreamError::LostCheckpoint {
                    url: checkpoint.url().to_string(),
                });
            }
            for e in alarms.on_time(self.clock.now() - last_commit, self.clock.wall()) {
                self.alarm(notifier, &e);
            }
            if let Some((batch_id, specs)) = unpublished.take() {
                let writes = specs.iter().cloned().map(DeferredWrite::recorded).collect();
                // A cancelled batch's interrupt would refuse the locks.
                let interrupter = self.interrupter();
                interrupter.reset();
                if *stop.borrow() {
                    interrupter.interrupt();
                }
                if let Err(e) = self.runner.publish(writes).await {
                    unpublished = Some((batch_id, specs));
                    let e = StreamError::Unpublished {
                        batch_id,
                        source: Box::new(e),
                    };
                    match self.failed(batch_id, e, &mut failures, &mut stop).await? {
                        true => continue,
                        false => {
                            summary.stopped = true;
                            break;
                        }
                    }
                }
                tracing::info!(
                    batch_id,
                    writes = specs.len(),
                    "published the committed batch's writes"
                );
            }
            let now = self.clock.wall();
            if due > now {
                let wait = (due - now).to_std().unwrap_or_default();
                // Wake for no_commit alarms at least every few seconds.
                let wait = wait.min(Duration::from_secs(5));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let started = self.clock.wall();
            let t0 = self.clock.now();
            let planned = match pending.take() {
                Some(p) => Ok(Some((p, true))),
                None => self.plan(&mut sources, checkpoint, next_id, due).await,
            };
            let (plan, resumed) = match planned {
                Ok(Some(p)) => p,
                Ok(None) => {
                    if interval.is_none() {
                        break;
                    }
                    // Caught up: `no_commit` measures a stall, not a quiet
                    // source.
                    last_commit = self.clock.now();
                    for e in alarms.on_caught_up(self.clock.wall()) {
                        self.alarm(notifier, &e);
                    }
                    due = self.options.trigger.after_idle(due, self.clock.wall());
                    self.observer.idle(Some(due));
                    continue;
                }
                Err(e) => {
                    // The batch was not recorded: it is planned afresh.
                    match self.failed(next_id, e, &mut failures, &mut stop).await? {
                        true => continue,
                        false => {
                            summary.stopped = true;
                            break;
                        }
                    }
                }
            };
            let planning_ms = (self.clock.now() - t0).as_millis() as u64;
            self.observer
                .batch_started(plan.batch_id, plan.ranges.len(), resumed);
            let batch_id = plan.batch_id;
            let mut timed_out = false;
            let mut attempt_prefix = String::new();
            let mut ran = Ok(());
            let recorded_earlier = probe == Some(batch_id);
            for s in &mut sources {
                match s.prepare(&plan.ranges, recorded_earlier).await {
                    Ok(()) => {}
                    Err(e) if e.is_fatal() => return Err(self.ended(batch_id, e)),
                    Err(e) => {
                        ran = Err(SluiceError::Layer(Box::new(e)));
                        break;
                    }
                }
            }
            let prepared = ran.is_ok();
            self.runner.forget_early_publish();
            let picks = Picks {
                window: None,
                rejected: rejected
                    .iter()
                    .filter(|(id, _)| *id == batch_id)
                    .flat_map(|(_, found)| found)
                    .map(|r| {
                        let why = format!("the job failed on this record alone: {}", r.error);
                        (r.source.clone(), r.split.clone(), r.place, why)
                    })
                    .collect(),
            };
            if ran.is_ok() {
                probe = None;
            }
            let ran = match ran {
                Ok(()) => {
                    // The batch borrows the runner; the alarm check beside
                    // it needs only the clock and the observer.
                    let watch = self.watch(batch_id);
                    let prefix = match &early {
                        Some((id, prefix)) if *id == batch_id => prefix.clone(),
                        _ => write_prefix(stream_id, batch_id, &picks),
                    };
                    attempt_prefix = prefix.clone();
                    let batch = self.run_batch(ctx, &sources, &plan, resumed, prefix, picks);
                    let (r, over) = watch
                        .run(batch, &mut stop, &mut alarms, notifier, last_commit)
                        .await;
                    timed_out = over;
                    r
                }
                Err(e) => Err(e),
            };
            let (report, split_rows) = match ran {
                Ok(r) => r,
                Err(e) => {
                    if self.runner.published_early()
                        && early.as_ref().is_none_or(|(id, _)| *id != batch_id)
                    {
                        early = Some((batch_id, attempt_prefix.clone()));
                    }
                    let kept = early.as_ref().is_some_and(|(id, _)| *id == batch_id);
                    // The source's own count, over the same records each
                    // time (the message is the sources', through Ballista's
                    // text).
                    if prepared && !timed_out && {
                        let text = render(&e);
                        OVER_BAD_RECORD_LIMIT.iter().all(|t| text.contains(t))
                    } {
                        let e = StreamError::OverBadRecordLimit {
                            batch_id,
                            source: Box::new(e),
                        };
                        self.taken_back(checkpoint, batch_id, kept).await;
                        return Err(self.ended(batch_id, e));
                    }
                    // Not again once found: the batch then runs with them
                    // read as bad records, and a failure of that is retried.
                    let searched = rejected.as_ref().is_some_and(|(id, _)| *id == batch_id);
                    if prepared && !timed_out && !*stop.borrow() && !searched {
                        tracing::warn!(batch_id, error = %render(&e), "batch failed; looking for records its job fails on alone");
                        // Each probe is bounded by `--batch-timeout`, not
                        // the search.
                        let mut watch = self.watch(batch_id);
                        watch.timeout = None;
                        let probe_stop = stop.clone();
                        let search = self.isolate(ctx, &sources, &plan, &probe_stop);
                        let (found, _) = watch
                            .run(search, &mut stop, &mut alarms, notifier, last_commit)
                            .await;
                        match found {
                            // Searched again on the next failure.
                            Ok(Searched::CutShort | Searched::Nothing) => {}
                            Ok(Searched::Found(found)) => {
                                for r in &found {
                                    tracing::warn!(batch_id, record = %r, "the job fails on this record alone; it is read as a bad record");
                                }
                                rejected = Some((batch_id, found));
                                pending = Some(plan);
                                continue;
                            }
                            Err(e) => {
                                self.taken_back(checkpoint, batch_id, kept).await;
                                return Err(self.ended(batch_id, e));
                            }
                        }
                    }
                    pending = Some(plan);
                    let e = match self.options.batch_timeout {
                        // The timeout's cancel is what failed it.
                        Some(after) if timed_out => StreamError::BatchTimedOut { batch_id, after },
                        _ => StreamError::Batch {
                            batch_id,
                            source: Box::new(e),
                        },
                    };
                    if *stop.borrow() {
                        summary.stopped = true;
                        break;
                    }
                    match self.failed(batch_id, e, &mut failures, &mut stop).await? {
                        true => {
                            due = self.clock.wall();
                            continue;
                        }
                        false => {
                            summary.stopped = true;
                            break;
                        }
                    }
                }
            };
            let c0 = self.clock.now();
            // Writes count rows by split value only: accounts are kept when
            // one source of the batch names its splits in its rows.
            let counted: Vec<&str> = sources
                .iter()
                .filter(|s| s.split_column().is_some())
                .map(|s| s.table())
                .collect();
            let counted = match counted.as_slice() {
                [one] => Some(*one),
                _ => None,
            };
            let mut info = batch_info(&plan, &report, split_rows, stream_id, resumed, counted);
            if let Some((_, found)) = rejected.take().filter(|(id, _)| *id == batch_id) {
                counter!("sluice_stream_records_rejected_total").increment(found.len() as u64);
                info.rejected = found;
            }
            // Before anything of the batch is committed: a batch that does
            // not account for its records is taken back, and no retry of
            // the same job would account for them.
            if let Some((table, what)) = unaccounted(&sources, counted, &info) {
                self.runner.discard_deferred().await;
                let kept = self.runner.published_early()
                    || early.as_ref().is_some_and(|(id, _)| *id == batch_id);
                self.taken_back(checkpoint, batch_id, kept).await;
                let e = StreamError::Unaccounted {
                    batch_id,
                    table,
                    what,
                    kept,
                };
                return Err(self.ended(batch_id, e));
            }
            info.input_bytes = plan
                .ranges
                .iter()
                .filter_map(|r| sources.iter().find(|s| s.table() == r.source)?.bytes(r))
                .sum();
            info.started_at = started;
            info.planning_ms = planning_ms;
            info.input_rows_per_sec = match (info.input_rows, previous_start) {
                (Some(rows), Some(prev)) => {
                    let secs = (started - prev).num_milliseconds() as f64 / 1000.0;
                    (secs > 0.0).then(|| rows as f64 / secs)
                }
                _ => None,
            };
            info.committed_at = self.clock.wall();
            let ms = |d: chrono::TimeDelta| d.num_milliseconds().max(0) as u64;
            info.scheduling_delay_ms = ms(started - plan.due_at);
            info.processing_delay_ms = ms(info.committed_at - started);
            info.total_delay_ms = info.scheduling_delay_ms + info.processing_delay_ms;
            info.processed_rows_per_sec = info.input_rows.and_then(|rows| {
                let secs = info.processing_delay_ms as f64 / 1000.0;
                (secs > 0.0).then(|| rows as f64 / secs)
            });
            let writes = self.runner.take_deferred();
            let specs: Vec<WriteSpec> = writes.iter().map(|w| w.spec.clone()).collect();
            // Once its writes are recorded, the batch is not run again in
            // this process: the re-run would take them back, and a record
            // that landed late (its call timed out) would then leave a
            // committed batch with nothing to publish. The same record is
            // tried until it is written; if it cannot be, the run ends and
            // the restart finds the batch committed or not.
            let mut tries = 0;
            loop {
                match checkpoint.write_commit(&info, &specs).await {
                    Ok(()) => break,
                    // An earlier try's record landed although it timed out.
                    Err(e) if e.already_exists() => break,
                    Err(e) => {
                        tries += 1;
                        if tries >= COMMIT_RECORD_TRIES || *stop.borrow() {
                            return Err(e);
                        }
                        let wait = Duration::from_secs(1 << tries);
                        tracing::warn!(batch_id, error = %render(&e), retry_in = ?wait, "recording the batch's commit failed; trying again");
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            _ = stop.changed() => {}
                        }
                    }
                }
            }
            // Committed: from here its writes only go forward.
            let published = self.runner.publish(writes).await;
            // The record's and the publish's time, in the report the loop shows.
            info.committing_ms += (self.clock.now() - c0).as_millis() as u64;
            failures = 0;
            for s in &mut sources {
                s.taken(&plan.ranges);
            }
            if self.options.compact_every > 0 && (batch_id + 1) % self.options.compact_every == 0 {
                let state = State {
                    batch_id,
                    sources: sources
                        .iter()
                        .map(|s| (s.table().to_string(), s.snapshot()))
                        .collect(),
                };
                match checkpoint.compact(&state, self.options.retain.max(1)).await {
                    Ok(n) => tracing::debug!(batch_id, removed = n, "compacted the checkpoint"),
                    Err(e) => {
                        tracing::warn!(batch_id, error = %e, "compacting the checkpoint failed; it is tried again later")
                    }
                }
            }
            info.record_metrics();
            self.observer.batch_done(&info);
            for e in alarms.on_batch(&info, self.clock.wall()) {
                self.alarm(notifier, &e);
            }
            last_commit = self.clock.now();
            previous_start = Some(started);
            next_id = batch_id + 1;
            summary.batches += 1;
            summary.last_batch_id = Some(batch_id);
            summary.input_rows += info.input_rows.unwrap_or(0);
            summary.rows_written += info.rows_written;
            summary.files_written += info.files_written;
            summary.bytes_written += info.bytes_written;
            if let Err(e) = published {
                // Tried again before the next batch, or by a restart.
                unpublished = Some((batch_id, specs));
                let e = StreamError::Unpublished {
                    batch_id,
                    source: Box::new(e),
                };
                match self.failed(batch_id, e, &mut failures, &mut stop).await? {
                    true => {}
                    false => {
                        summary.stopped = true;
                        break;
                    }
                }
            }
            if self.options.trigger == Trigger::Once {
                break;
            }
            // A batch planned by an earlier process (or retried) was due
            // long ago: the schedule goes on from now, not from then.
            let from = if resumed {
                self.clock.wall()
            } else {
                plan.due_at
            };
            due = self.options.trigger.after_batch(from, self.clock.wall());
        }
        // Stopped before the batch this start took up failed again: its
        // writes were taken back, and a changed job may still take it up.
        if let Some(p) = &pending
            && retaken == Some(p.batch_id)
        {
            let kept = early.as_ref().is_some_and(|(id, _)| *id == p.batch_id);
            self.taken_back(checkpoint, p.batch_id, kept).await;
        }
        Ok(summary)
    }

    fn alarm(&self, notifier: &Notifier, event: &AlarmEvent) {
        raise(self.observer.as_ref(), notifier, event);
    }

    /// After a failure: with `--every`, waits (doubling up to a minute) and
    /// says to go on (`Ok(true)`), or to stop when asked to meanwhile
    /// (`Ok(false)`); otherwise, or when no retry can mend the failure
    /// (records lost, a source gone), the failure ends the run.
    async fn failed(
        &self,
        batch_id: u64,
        error: StreamError,
        failures: &mut u32,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<bool, StreamError> {
        if self.options.trigger.interval().is_none() || error.is_fatal() {
            return Err(self.ended(batch_id, error));
        }
        counter!("sluice_stream_batch_failures_total").increment(1);
        *failures += 1;
        let backoff = Duration::from_secs(1u64 << (*failures - 1).min(6)).min(MAX_BACKOFF);
        tracing::warn!(batch_id, error = %render(&error), retry_in = ?backoff, "batch failed; retrying");
        self.observer
            .batch_failed(batch_id, &render(&error), Some(backoff));
        tokio::select! {
            () = tokio::time::sleep(backoff) => Ok(!*stop.borrow()),
            _ = stop.changed() => Ok(false),
        }
    }

    /// A failure that ends the run: counted, said, and given back.
    fn ended(&self, batch_id: u64, error: StreamError) -> StreamError {
        counter!("sluice_stream_batch_failures_total").increment(1);
        if error.is_fatal() {
            tracing::error!(batch_id, error = %render(&error), "no retry can mend this: the stream stops");
        }
        self.observer.batch_failed(batch_id, &render(&error), None);
        error
    }

    /// What watches batch `batch_id`'s work.
    fn watch(&self, batch_id: u64) -> Watch {
        Watch {
            clock: Arc::clone(&self.clock),
            observer: Arc::clone(&self.observer),
            interrupter: self.interrupter(),
            timeout: self.options.batch_timeout,
            batch_id,
        }
    }

    /// The run ends on batch `batch_id`, whose failed attempt took its
    /// writes back: a restart with a changed job may take it up (a
    /// [`Retake`]). Not when a write of it was published before the
    /// failure, which nothing takes back.
    async fn taken_back(&self, checkpoint: &Checkpoint, batch_id: u64, kept: bool) {
        if kept {
            tracing::warn!(
                batch_id,
                "a write of this batch was published before it failed: only the job it was planned with can run it again"
            );
            return;
        }
        let retake = Retake {
            batch_id,
            failed_under: Some(self.job_digest()),
            runs_under: None,
            at: self.clock.wall(),
        };
        match checkpoint.write_retake(&retake).await {
            Ok(()) => tracing::info!(
                batch_id,
                "the batch's writes were taken back: a changed job may take it up"
            ),
            Err(e) => {
                tracing::warn!(batch_id, error = %render(&e), "recording that the batch's writes were taken back failed: a changed job cannot take it up")
            }
        }
    }

    /// After batch `plan` failed: looks for records its job fails on alone
    /// (`isolate`). `Found`: the batch runs again with them read as bad
    /// records; `Nothing` (none to blame) or `CutShort` (a stop, the
    /// batch's timeout): the usual retry; `Err`: more than may be bad, and
    /// the run ends.
    async fn isolate(
        &self,
        ctx: &SessionContext,
        sources: &[Box<dyn Source>],
        plan: &BatchPlan,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<Searched, StreamError> {
        let batch_id = plan.batch_id;
        let records = Records::of(&plan.ranges, sources);
        if records.total() == 0 {
            return Ok(Searched::Nothing);
        }
        let limit = sources
            .iter()
            .map(|s| s.failing_record_limit())
            .max()
            .unwrap_or(0);
        let mut probe = BatchProbe {
            stream: self,
            ctx,
            sources,
            plan,
            records: &records,
            stop: stop.clone(),
            stopped: false,
            timeout: self.options.batch_timeout,
            interrupter: self.interrupter(),
        };
        let span = tracing::info_span!("sluice.isolate", batch_id, records = records.total());
        let outcome = isolate(&mut probe, records.total(), limit)
            .instrument(span)
            .await;
        if probe.stopped {
            return Ok(Searched::CutShort);
        }
        let (found, too_many) = match outcome {
            Outcome::Reject(found) => (found, false),
            Outcome::TooMany(found) => (found, true),
            Outcome::NotFound(why) => {
                tracing::info!(
                    batch_id,
                    why,
                    "no record of the batch to blame for its failure"
                );
                return Ok(Searched::Nothing);
            }
        };
        let named = name_records(sources, plan, &records, found).await;
        let over = sources.iter().find(|s| {
            let n = named.iter().filter(|r| r.source == s.table()).count() as u64;
            n > s.failing_record_limit()
        });
        let why = match over {
            Some(s) => format!(
                "more than max_failing_records ({}) of table {}; no retry mends this: fix the job, or raise max_failing_records to read such records as bad records (`_error` set) for the job's error output, and start the stream again: the changed job takes the batch up, unless a write of it was published before it failed (the log says which)",
                s.failing_record_limit(),
                s.table()
            ),
            None if too_many => format!(
                "more than {} in one batch are not looked for; no retry mends this: fix the job and start the stream again (the changed job takes the batch up, unless a write of it was published before it failed)",
                super::isolate::MOST
            ),
            None => return Ok(Searched::Found(named)),
        };
        Err(StreamError::RecordsFail {
            batch_id,
            records: named,
            why,
        })
    }

    /// Plans batch `batch_id` from every source and records it; `None` when
    /// no source has anything new.
    async fn plan(
        &self,
        sources: &mut [Box<dyn Source>],
        checkpoint: &Checkpoint,
        batch_id: u64,
        due: DateTime<Utc>,
    ) -> Result<Option<(BatchPlan, bool)>, StreamError> {
        let mut ranges = Vec::new();
        let mut lag = Vec::new();
        for s in sources.iter_mut() {
            let planned = s.plan().await?;
            ranges.extend(planned.ranges);
            lag.push(planned.lag);
        }
        // Empty ranges only record where a source starts: no batch, but
        // the starts are recorded at once (a restart before the next batch
        // would resolve `latest` again and skip what arrived meanwhile).
        if ranges.iter().all(|r| r.end <= r.start) {
            if !ranges.is_empty() {
                checkpoint.write_starts(batch_id, &ranges).await?;
                for s in sources.iter_mut() {
                    s.taken(&ranges);
                }
            }
            return Ok(None);
        }
        let plan = BatchPlan {
            batch_id,
            planned_at: self.clock.wall(),
            due_at: due,
            ranges,
            lag,
            job_digest: Some(self.job_digest()),
        };
        match checkpoint.write_plan(&plan).await {
            Ok(()) => Ok(Some((plan, false))),
            // An earlier attempt's write landed although it timed out: run
            // what it recorded.
            Err(e) if e.already_exists() => match checkpoint.read_plan(batch_id).await? {
                Some(recorded) => Ok(Some((recorded, true))),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Runs the job file once over the batch's ranges; counts the input
    /// meanwhile.
    async fn run_batch(
        &mut self,
        ctx: &SessionContext,
        sources: &[Box<dyn Source>],
        plan: &BatchPlan,
        resumed: bool,
        prefix: String,
        picks: Picks,
    ) -> Result<(JobReport, Vec<Option<u64>>), SluiceError> {
        let span = tracing::info_span!("sluice.batch", batch_id = plan.batch_id, resumed);
        bind_inputs(ctx, sources, plan, picks)?;
        let mut count_by: Vec<String> = Vec::new();
        for column in sources.iter().filter_map(|s| s.split_column()) {
            if !count_by.iter().any(|c| c == column) {
                count_by.push(column.to_string());
            }
        }
        self.runner.set_batch(Some(BatchWrites {
            prefix,
            resuming: resumed,
            count_by,
        }));
        let counting = async {
            let mut rows = Vec::with_capacity(plan.ranges.len());
            for table in plan.tables() {
                let ranges = plan.ranges_of(table);
                match sources.iter().find(|s| s.table() == table) {
                    Some(s) => rows.extend(s.rows(&ranges).await),
                    None => rows.extend(ranges.iter().map(|_| None)),
                }
            }
            rows
        };
        let run = self.runner.run(&self.file, &self.source, &self.vars);
        let (report, rows) = futures::future::join(run, counting).instrument(span).await;
        // Ranges are reported in the plan's order, grouped by source.
        Ok((report?, rows))
    }
}

/// What watches a batch's work (its run, or the search for the records it
/// fails on) while it goes: a batch that hangs (its job queued with no
/// executor, a stuck task) is the stall `no_commit` is for, so the alarm
/// is checked every second, not only between batches; past
/// `--batch-timeout`, or on a stop, the work is interrupted.
struct Watch {
    clock: Arc<dyn Clock>,
    observer: Arc<dyn StreamObserver>,
    interrupter: Interrupter,
    timeout: Option<Duration>,
    batch_id: u64,
}

impl Watch {
    /// `work`'s outcome, and whether the timeout cut it short.
    async fn run<T>(
        self,
        work: impl std::future::Future<Output = T>,
        stop: &mut tokio::sync::watch::Receiver<bool>,
        alarms: &mut AlarmState,
        notifier: &Notifier,
        last_commit: std::time::Instant,
    ) -> (T, bool) {
        let Self {
            clock,
            observer,
            interrupter,
            timeout,
            batch_id,
        } = self;
        // An earlier batch's timeout interrupted the runner; a stop asked
        // for meanwhile still interrupts this one.
        interrupter.reset();
        // A stop sets `stop` before it interrupts: one that came before the
        // reset is not lost.
        if *stop.borrow() {
            interrupter.interrupt();
        }
        let mut stop_seen = false;
        let mut timed_out = false;
        let started_at = clock.now();
        tokio::pin!(work);
        loop {
            tokio::select! {
                r = &mut work => return (r, timed_out),
                changed = stop.changed(), if !stop_seen => {
                    stop_seen = true;
                    if changed.is_err() || *stop.borrow() {
                        interrupter.interrupt();
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    let stalled = clock.now() - last_commit;
                    for e in alarms.on_time(stalled, clock.wall()) {
                        raise(observer.as_ref(), notifier, &e);
                    }
                    if let Some(limit) = timeout
                        && !timed_out
                        && clock.now() - started_at >= limit
                    {
                        tracing::warn!(batch_id, timeout = ?limit, "the batch ran over --batch-timeout; cancelling it");
                        timed_out = true;
                        interrupter.interrupt();
                    }
                }
            }
        }
    }
}

/// A source's `max_filtered_records` broken by batch `info` (the source,
/// and how): more of its records than that neither written nor
/// dead-lettered, or no way to tell (a write that does not count its rows
/// by the split, or another source's split counted). A batch without
/// records of the source has nothing to account for.
fn unaccounted(
    sources: &[Box<dyn Source>],
    counted: Option<&str>,
    info: &BatchInfo,
) -> Option<(String, String)> {
    sources.iter().find_map(|s| {
        let limit = s.filtered_record_limit()?;
        let read_some = info
            .splits
            .iter()
            .any(|x| x.source == s.table() && x.rows != Some(0));
        if !read_some {
            return None;
        }
        let column = s.split_column().unwrap_or("its split column");
        // Writes an earlier attempt committed may lack counts (their files
        // found, their manifest not): left out, so as not to blank the
        // others' accounts. This attempt's must all have them.
        let exempt = |w: &BatchWrite| w.earlier && w.rows_by_split.is_none();
        let uncounted = info
            .writes
            .iter()
            .find(|w| w.rows_by_split.is_none() && !w.earlier);
        let writes: Vec<BatchWrite> = info.writes.iter().filter(|w| !exempt(w)).cloned().collect();
        let splits: Vec<SplitInput> = info
            .splits
            .iter()
            .filter(|x| x.source == s.table())
            .cloned()
            .collect();
        let what = if counted != Some(s.table()) {
            Some(
                "max_filtered_records needs the batch's writes to count rows by one source's split, and this job reads several sources that have one".to_string(),
            )
        } else if let Some(w) = uncounted {
            Some(if w.output.starts_with("dynamodb://") {
                format!(
                    "max_filtered_records cannot count the rows of the write to {} (DynamoDB items are not counted by {column})",
                    w.output
                )
            } else {
                format!(
                    "max_filtered_records needs every write to count its rows by {column}, and the write to {} does not: select {column} into it (not as a PARTITIONED BY column)",
                    w.output
                )
            })
        } else if writes.is_empty() {
            // Every write found committed by an earlier attempt, counts
            // unknown: nothing to check. No write at all: nothing holds
            // the records.
            (!info.writes.iter().any(exempt)).then(|| {
                "max_filtered_records is set, and the job writes none of the source's records (no write)".to_string()
            })
        } else {
            super::info::unaccounted(&super::info::accounts(&splits, &writes), limit)
        }?;
        Some((s.table().to_string(), what))
    })
}

/// What the batch's write ids start with: the stream, the batch, and the
/// records read as bad records (`picks`).
fn write_prefix(stream_id: &str, batch_id: u64, picks: &Picks) -> String {
    let id = stream_id.get(..12).unwrap_or(stream_id);
    let mut prefix = format!("{id}b{batch_id}");
    // Records read as bad records change what the batch writes: its
    // writes are others than an attempt without them committed (the
    // runner keeps an attempt's prefix once one of its writes was
    // published, to find it).
    if !picks.rejected.is_empty() {
        let mut h = crc32fast::Hasher::new();
        for (table, split, place, _) in &picks.rejected {
            h.update(format!("{table}\0{split}\0{place}\0").as_bytes());
        }
        prefix.push_str(&format!("r{:08x}", h.finalize()));
    }
    prefix
}

/// Tells the session what each source's table reads in this batch (the
/// job's `CREATE` statements then run again over it).
fn bind_inputs(
    ctx: &SessionContext,
    sources: &[Box<dyn Source>],
    plan: &BatchPlan,
    picks: Picks,
) -> Result<(), SluiceError> {
    drop_tables(ctx)?;
    let mut inputs = BatchInputs {
        picks,
        ..Default::default()
    };
    inputs.shards.due_ms = Some(plan.due_at.timestamp_millis());
    for s in sources {
        s.bind(&plan.ranges_of(s.table()), &mut inputs)
            .map_err(|e| SluiceError::Layer(Box::new(e)))?;
    }
    let state = ctx.state_ref();
    let mut state = state.write();
    let config = state.config_mut();
    config.set_extension(Arc::new(inputs.files));
    config.set_extension(Arc::new(inputs.kafka));
    config.set_extension(Arc::new(inputs.shards));
    Ok(())
}

/// How the search for the records a batch fails on ended.
enum Searched {
    Found(Vec<RejectedRecord>),
    Nothing,
    CutShort,
}

/// Runs the job's queries, writing nothing, over some of a batch's records
/// (`isolate`).
struct BatchProbe<'a> {
    stream: &'a StreamRunner,
    ctx: &'a SessionContext,
    sources: &'a [Box<dyn Source>],
    plan: &'a BatchPlan,
    records: &'a Records,
    /// A stop asked for, or the batch's timeout, ends the search (a probe
    /// then fails, and what it found is not used).
    stop: tokio::sync::watch::Receiver<bool>,
    stopped: bool,
    /// `--batch-timeout`, for each probe: one is at most a batch's work.
    timeout: Option<Duration>,
    interrupter: Interrupter,
}

impl BatchProbe<'_> {
    fn picks(&self, from: u64, to: u64, rejected: &[(u64, String)]) -> Picks {
        Picks {
            window: Some(self.records.window(from, to)),
            rejected: rejected
                .iter()
                .filter_map(|(i, why)| {
                    let (table, split, place) = self.records.locate(*i)?;
                    Some((table.to_string(), split.to_string(), place, why.clone()))
                })
                .collect(),
        }
    }
}

#[async_trait::async_trait]
impl Probe for BatchProbe<'_> {
    async fn run(&mut self, from: u64, to: u64, rejected: &[(u64, String)]) -> Result<(), String> {
        if self.stopped || *self.stop.borrow() || self.stream.runner.interrupted() {
            self.stopped = true;
            return Err("stopped".into());
        }
        bind_inputs(
            self.ctx,
            self.sources,
            self.plan,
            self.picks(from, to, rejected),
        )
        .map_err(|e| render(&e))?;
        let stream = self.stream;
        let probe = stream
            .runner
            .probe(&stream.file, &stream.source, &stream.vars);
        tokio::pin!(probe);
        let probed = match self.timeout {
            Some(limit) => tokio::select! {
                r = &mut probe => r,
                () = tokio::time::sleep(limit) => {
                    tracing::warn!(timeout = ?limit, "a probe ran over --batch-timeout; cancelling it");
                    self.interrupter.interrupt();
                    probe.await
                }
            },
            None => probe.await,
        };
        // Cut short (a stop, `--batch-timeout`): its failure is not the
        // records'.
        if stream.runner.interrupted() {
            self.stopped = true;
        }
        probed.map_err(|e| super::isolate::why(&e))
    }
}

/// The records found (batch number, why) with their source, split, place
/// and, where the source tells, their own name.
async fn name_records(
    sources: &[Box<dyn Source>],
    plan: &BatchPlan,
    records: &Records,
    found: Vec<(u64, String)>,
) -> Vec<RejectedRecord> {
    let mut out: Vec<RejectedRecord> = found
        .into_iter()
        .filter_map(|(i, error)| {
            let (source, split, place) = records.locate(i)?;
            Some(RejectedRecord {
                source: source.to_string(),
                split: split.to_string(),
                place,
                record: None,
                error,
            })
        })
        .collect();
    for r in &plan.ranges {
        let mine: Vec<usize> = (0..out.len())
            .filter(|i| out[*i].source == r.source && out[*i].split == r.split)
            .collect();
        let Some(source) = sources.iter().find(|s| s.table() == r.source) else {
            continue;
        };
        if mine.is_empty() {
            continue;
        }
        let places: Vec<u64> = mine.iter().map(|i| out[*i].place).collect();
        let names = source.name_records(r, &places).await;
        for (i, name) in mine.into_iter().zip(names) {
            out[i].record = name;
        }
    }
    out
}

/// A parsed statement's `OPTIONS`, as the texts the table factory sees.
fn option_texts(
    options: &[(String, datafusion::sql::sqlparser::ast::Value)],
) -> HashMap<String, String> {
    use datafusion::sql::sqlparser::ast::Value;
    options
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect()
}

/// Deregisters the tables the previous batch's statements created, so the
/// job's `CREATE` statements run again over the new batch.
fn drop_tables(ctx: &SessionContext) -> Result<(), SluiceError> {
    let state = ctx.state();
    let default = &state.config_options().catalog;
    let Some(catalog) = ctx.catalog(&default.default_catalog) else {
        return Ok(());
    };
    for name in catalog.schema_names() {
        if name == "information_schema" {
            continue;
        }
        let Some(schema) = catalog.schema(&name) else {
            continue;
        };
        for table in schema.table_names() {
            schema
                .deregister_table(&table)
                .map_err(|e| SluiceError::Layer(Box::new(e)))?;
        }
    }
    Ok(())
}

/// The batch's report from its plan and the job's outcome.
fn batch_info(
    plan: &BatchPlan,
    report: &JobReport,
    split_rows: Vec<Option<u64>>,
    stream_id: &str,
    resumed: bool,
    counted: Option<&str>,
) -> BatchInfo {
    // `run_batch` counted rows table by table, in `plan.tables()` order;
    // match them back to the ranges the same way.
    let ordered: Vec<&Range> = plan
        .tables()
        .into_iter()
        .flat_map(|t| plan.ranges_of(t))
        .collect();
    let splits: Vec<SplitInput> = ordered
        .iter()
        .zip(split_rows.iter().chain(std::iter::repeat(&None)))
        .map(|(r, rows)| SplitInput {
            source: r.source.clone(),
            split: r.split.clone(),
            start: r.start,
            end: r.end,
            rows: *rows,
        })
        .collect();
    let input_rows = splits.iter().map(|s| s.rows).sum::<Option<u64>>();
    let writes: Vec<BatchWrite> = report
        .statements
        .iter()
        .filter_map(|s| s.write.as_ref())
        .map(BatchWrite::from)
        .collect();
    let commit_ms: u64 = writes.iter().map(|w| w.commit_ms).sum();
    let accounts = match counted {
        Some(source) => {
            let of_source: Vec<SplitInput> = splits
                .iter()
                .filter(|s| s.source == source)
                .cloned()
                .collect();
            super::info::accounts(&of_source, &writes)
        }
        None => vec![],
    };
    for a in accounts.iter().filter(|a| a.overcount().is_some()) {
        tracing::warn!(
            source = %a.source,
            split = %a.split,
            read = ?a.read,
            written = ?a.written,
            dead_lettered = ?a.dead_lettered,
            "a split's rows written outnumber its records read: rows were written twice, unless the job makes several rows of one record"
        );
    }
    BatchInfo {
        batch_id: plan.batch_id,
        stream_id: stream_id.to_string(),
        due_at: plan.due_at,
        input_splits: splits.len() as u64,
        input_rows,
        rows_written: report.rows_written,
        files_written: report.files_written,
        bytes_written: report.bytes_written,
        rows_dead_lettered: writes
            .iter()
            .filter(|w| w.dead_letter)
            .map(|w| w.rows)
            .sum(),
        running_ms: report.duration_ms.saturating_sub(commit_ms),
        committing_ms: commit_ms,
        resumed,
        splits,
        lag: plan.lag.clone(),
        writes,
        accounts,
        job_ids: report.job_ids.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch with records read as bad records writes under ids of its
    /// own, the same for the same records.
    #[test]
    fn rejected_records_give_the_batch_write_ids_of_its_own() {
        let picks = |place: u64| Picks {
            window: None,
            rejected: vec![("k".into(), "shard-0".into(), place, "why".into())],
        };
        let plain = write_prefix("0123456789abcdef", 7, &Picks::default());
        assert_eq!(plain, "0123456789abb7");
        let own = write_prefix("0123456789abcdef", 7, &picks(3));
        assert!(own.starts_with("0123456789abb7r") && own.len() == plain.len() + 9);
        assert_eq!(own, write_prefix("0123456789abcdef", 7, &picks(3)));
        assert_ne!(own, write_prefix("0123456789abcdef", 7, &picks(4)));
    }

    /// `max_filtered_records` is checked only for a batch holding records
    /// of the source, against every write this attempt made.
    #[test]
    fn the_filtered_record_limit_is_checked_where_the_source_has_records() {
        let location =
            crate::source::kafka::KafkaLocation::parse("kafka://127.0.0.1:9/ev").unwrap();
        let options = crate::source::kafka::KafkaOptions {
            max_filtered_records: Some(0),
            ..Default::default()
        };
        let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
        let sources: Vec<Box<dyn Source>> = vec![Box::new(crate::stream::kafka::KafkaSource::new(
            "ev", location, options, clock,
        ))];
        let split = |source: &str, rows: u64| SplitInput {
            source: source.into(),
            split: "0".into(),
            rows: Some(rows),
            ..Default::default()
        };
        let write = |output: &str, counts: Option<u64>, earlier: bool| BatchWrite {
            output: output.into(),
            rows_by_split: counts.map(|n| [("0".to_string(), n)].into()),
            earlier,
            ..Default::default()
        };
        let check = |splits: Vec<SplitInput>, writes: Vec<BatchWrite>| {
            let info = BatchInfo {
                accounts: crate::stream::info::accounts(&splits, &writes),
                splits,
                writes,
                ..Default::default()
            };
            unaccounted(&sources, Some("ev"), &info).map(|(_, what)| what)
        };
        // Only another source's records (new files): nothing to check.
        assert_eq!(
            check(
                vec![split("files", 5)],
                vec![write("s3://b/o/", None, false)]
            ),
            None
        );
        // Every record written.
        assert_eq!(
            check(
                vec![split("ev", 3)],
                vec![write("s3://b/o/", Some(3), false)]
            ),
            None
        );
        // One short.
        let why = check(
            vec![split("ev", 3)],
            vec![write("s3://b/o/", Some(2), false)],
        )
        .unwrap();
        assert!(
            why.contains("1 of its records were neither written"),
            "{why}"
        );
        // A write that does not count, and a DynamoDB one.
        let why = check(
            vec![split("ev", 3)],
            vec![
                write("s3://b/o/", Some(3), false),
                write("s3://b/x/", None, false),
            ],
        )
        .unwrap();
        assert!(why.contains("the write to s3://b/x/ does not"), "{why}");
        let why = check(
            vec![split("ev", 3)],
            vec![write("dynamodb://t", None, false)],
        )
        .unwrap();
        assert!(
            why.contains("cannot count the rows of the write to dynamodb://t"),
            "{why}"
        );
        // An earlier attempt's write without counts is not held against it,
        // nor does it hide a short count of this attempt's.
        assert_eq!(
            check(
                vec![split("ev", 3)],
                vec![
                    write("s3://b/o/", Some(3), false),
                    write("s3://b/x/", None, true)
                ],
            ),
            None
        );
        let why = check(
            vec![split("ev", 3)],
            vec![
                write("s3://b/o/", Some(2), false),
                write("s3://b/x/", None, true),
            ],
        )
        .unwrap();
        assert!(
            why.contains("1 of its records were neither written nor dead-lettered"),
            "{why}"
        );
        // Only such writes: nothing to check; no write at all: said.
        assert_eq!(
            check(vec![split("ev", 3)], vec![write("s3://b/x/", None, true)]),
            None
        );
        let why = check(vec![split("ev", 3)], vec![]).unwrap();
        assert!(why.contains("writes none of the source's records"), "{why}");
    }
}
