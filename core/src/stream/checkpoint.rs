//! A stream's checkpoint, a directory (local or `s3://`):
//!
//! - `metadata.json`: the stream's id, fixed at its first start (write ids
//!   of its batches are made from it)
//! - `offsets/N.json`: batch N's ranges, written before it runs
//! - `commits/N.json`: batch N's report, written once its writes recorded
//!   their commits and before any of them is published: the batch's commit.
//!   It lists those writes, so a restart publishes what a crash left
//!   unpublished
//! - `starts/N-*.json`: where sources start (a resolved `latest` or time, a
//!   new partition), recorded when a plan found nothing to read yet, so a
//!   restart before batch N does not resolve them again and skip what
//!   arrived meanwhile (Spark writes its sources' initial offsets at once
//!   for the same reason)
//! - `state/N.json`: every source's position after batch N, written every
//!   few batches; offsets before it and commits older than the last
//!   `retain` are then deleted, so the checkpoint does not grow with the
//!   stream's age (Spark's `_spark_metadata` does)
//! - `_sluice_lock/`: the claim of the one process running the stream
//!
//! Records are created with a conditional create: a second writer of the
//! same batch fails instead of overwriting.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::StreamError;
use super::info::BatchInfo;
use super::source::Range;
use crate::clock::Clock;
use crate::sink::files::WriteSpec;
use crate::sink::files::lock::OutputLock;

/// `commits/N.json`: the batch's report and the writes it commits.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CommitRecord {
    #[serde(flatten)]
    info: BatchInfo,
    /// Writes whose recorded commits are published after this record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    publishes: Vec<WriteSpec>,
}

/// How long one checkpoint call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    pub id: String,
    pub job: String,
    pub created: DateTime<Utc>,
}

/// What a batch reads, recorded before it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchPlan {
    pub batch_id: u64,
    pub planned_at: DateTime<Utc>,
    /// When the trigger wanted the batch to start.
    pub due_at: DateTime<Utc>,
    pub ranges: Vec<Range>,
    #[serde(default)]
    pub lag: Vec<super::source::SourceLag>,
    /// CRC-32 of the job's text and variables: a re-run of the batch must
    /// be the same job, since its writes are named by the job's lines.
    /// Absent in checkpoints older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_digest: Option<String>,
}

impl BatchPlan {
    /// The ranges one source's table reads in this batch.
    pub fn ranges_of(&self, table: &str) -> Vec<&Range> {
        self.ranges.iter().filter(|r| r.source == table).collect()
    }

    /// The batch's tables in the order their first range comes: how its
    /// per-range counts are laid out (`SplitInput`s), whatever order a
    /// (changed) job declares its sources in.
    pub fn tables(&self) -> Vec<&str> {
        let mut tables: Vec<&str> = Vec::new();
        for r in &self.ranges {
            if !tables.contains(&r.source.as_str()) {
                tables.push(&r.source);
            }
        }
        tables
    }
}

/// Every source's position after a committed batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub batch_id: u64,
    pub sources: BTreeMap<String, serde_json::Value>,
}

/// Sources' starting positions recorded before batch `before_batch` (see
/// the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Starts {
    pub before_batch: u64,
    pub ranges: Vec<Range>,
}

/// A batch that may run under another job than the one it was planned
/// with: the run ended on it with its writes taken back (`failed_under`,
/// the job's digest then), and a later start took it up under a changed
/// job (`runs_under`). `retakes/<batch>-<n>.json`, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Retake {
    pub batch_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_under: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_under: Option<String>,
    pub at: DateTime<Utc>,
}

/// What a restarted stream finds.
#[derive(Debug, Default)]
pub struct Recovered {
    pub state: Option<State>,
    /// Starts recorded after the state, oldest first (applied before the
    /// replayed batches).
    pub starts: Vec<Starts>,
    /// Committed batches after the state, oldest first.
    pub replay: Vec<BatchPlan>,
    /// A planned batch without a commit: it runs again over its ranges.
    /// Its `job_digest` is the job it runs under (a retake's, if any).
    pub pending: Option<BatchPlan>,
    /// The pending batch failed under that job and nothing of it stayed:
    /// a changed job may take it up.
    pub pending_taken_back: bool,
    pub next_batch: u64,
    pub last_commit: Option<BatchInfo>,
    /// The last committed batch's writes: published again (a no-op for
    /// those already published) in case a crash cut their publish short.
    pub last_publishes: Vec<WriteSpec>,
}

#[derive(Clone)]
pub struct Checkpoint {
    store: Arc<dyn ObjectStore>,
    base: Path,
    url: String,
}

impl Checkpoint {
    pub fn new(store: Arc<dyn ObjectStore>, url: &url::Url) -> Result<Self, StreamError> {
        let base = Path::from_url_path(url.path()).map_err(|e| StreamError::Corrupt {
            url: url.to_string(),
            path: url.path().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            store,
            base,
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The claim of the process running the stream.
    pub fn lock(&self, clock: Arc<dyn Clock>) -> OutputLock {
        OutputLock::new(Arc::clone(&self.store), &self.base, &self.url, clock)
    }

    fn failed(&self, what: String) -> impl FnOnce(object_store::Error) -> StreamError + '_ {
        move |e| StreamError::Checkpoint {
            url: self.url.clone(),
            what,
            source: Box::new(e),
        }
    }

    fn timed_out(&self, what: &str) -> StreamError {
        StreamError::Checkpoint {
            url: self.url.clone(),
            what: format!("{what} took over {CALL_TIMEOUT:?}"),
            source: Box::new(object_store::Error::Generic {
                store: "checkpoint",
                source: "timed out".into(),
            }),
        }
    }

    fn entry(&self, dir: &str, id: u64) -> Path {
        self.base.clone().join(dir).join(format!("{id:020}.json"))
    }

    async fn create<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), StreamError> {
        let body = serde_json::to_vec_pretty(value).map_err(|e| StreamError::Corrupt {
            url: self.url.clone(),
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let put = self.store.put_opts(path, body.into(), opts);
        tokio::time::timeout(CALL_TIMEOUT, put)
            .await
            .map_err(|_| self.timed_out("writing a record"))?
            .map_err(self.failed(format!("writing {path}")))?;
        Ok(())
    }

    async fn read<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>, StreamError> {
        let get = async {
            match self.store.get(path).await {
                Ok(got) => got.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let Some(bytes) = tokio::time::timeout(CALL_TIMEOUT, get)
            .await
            .map_err(|_| self.timed_out("reading a record"))?
            .map_err(self.failed(format!("reading {path}")))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StreamError::Corrupt {
                url: self.url.clone(),
                path: path.to_string(),
                reason: e.to_string(),
            })
    }

    /// The batch ids with a record in `dir`, ascending.
    async fn ids(&self, dir: &str) -> Result<Vec<u64>, StreamError> {
        let prefix = self.base.clone().join(dir);
        let list = self.store.list(Some(&prefix)).try_collect::<Vec<_>>();
        let metas = tokio::time::timeout(CALL_TIMEOUT, list)
            .await
            .map_err(|_| self.timed_out("listing records"))?
            .map_err(self.failed(format!("listing {prefix}")))?;
        let mut ids: Vec<u64> = metas
            .iter()
            .filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The records of `dir` named `<batch>-<suffix>.json` (`starts/`,
    /// `retakes/`): (batch, path), by batch then name.
    async fn listed(&self, dir: &str) -> Result<Vec<(u64, Path)>, StreamError> {
        let prefix = self.base.clone().join(dir);
        let list = self.store.list(Some(&prefix)).try_collect::<Vec<_>>();
        let metas = tokio::time::timeout(CALL_TIMEOUT, list)
            .await
            .map_err(|_| self.timed_out("listing records"))?
            .map_err(self.failed(format!("listing {prefix}")))?;
        let mut out: Vec<(u64, Path)> = metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.strip_suffix(".json")?;
                let id = name.split('-').next()?.parse().ok()?;
                Some((id, m.location))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        Ok(out)
    }

    /// Records a retake of batch `batch_id` (see [`Retake`]).
    pub async fn write_retake(&self, retake: &Retake) -> Result<(), StreamError> {
        let n = self
            .listed("retakes")
            .await?
            .iter()
            .filter(|(id, _)| *id == retake.batch_id)
            .count();
        let name = format!("{:020}-{n:06}.json", retake.batch_id);
        self.create(&self.base.clone().join("retakes").join(name), retake)
            .await
    }

    /// Records where sources start, before batch `before_batch`.
    pub async fn write_starts(
        &self,
        before_batch: u64,
        ranges: &[Range],
    ) -> Result<(), StreamError> {
        let name = format!("{before_batch:020}-{}.json", uuid::Uuid::new_v4().simple());
        let record = Starts {
            before_batch,
            ranges: ranges.to_vec(),
        };
        self.create(&self.base.clone().join("starts").join(name), &record)
            .await
    }

    /// The stream's metadata, if it ever started.
    pub async fn existing_metadata(&self) -> Result<Option<Metadata>, StreamError> {
        self.read(&self.base.clone().join("metadata.json")).await
    }

    /// The stream's metadata, created on its first start.
    pub async fn metadata(&self, job: &str) -> Result<Metadata, StreamError> {
        let path = self.base.clone().join("metadata.json");
        if let Some(m) = self.read(&path).await? {
            return Ok(m);
        }
        let fresh = Metadata {
            id: uuid::Uuid::new_v4().simple().to_string(),
            job: job.to_string(),
            created: Utc::now(),
        };
        match self.create(&path, &fresh).await {
            Ok(()) => Ok(fresh),
            // Two first starts raced; the lock decides which runs, and both
            // must use the one id.
            Err(StreamError::Checkpoint { source, .. })
                if matches!(*source, object_store::Error::AlreadyExists { .. }) =>
            {
                self.read(&path).await?.ok_or_else(|| StreamError::Corrupt {
                    url: self.url.clone(),
                    path: path.to_string(),
                    reason: "vanished after it was created".into(),
                })
            }
            Err(e) => Err(e),
        }
    }

    pub async fn write_plan(&self, plan: &BatchPlan) -> Result<(), StreamError> {
        self.create(&self.entry("offsets", plan.batch_id), plan)
            .await
    }

    pub async fn read_plan(&self, batch_id: u64) -> Result<Option<BatchPlan>, StreamError> {
        self.read(&self.entry("offsets", batch_id)).await
    }

    /// Commits the batch: its report and the writes to publish after it.
    pub async fn write_commit(
        &self,
        info: &BatchInfo,
        publishes: &[WriteSpec],
    ) -> Result<(), StreamError> {
        let record = CommitRecord {
            info: info.clone(),
            publishes: publishes.to_vec(),
        };
        self.create(&self.entry("commits", info.batch_id), &record)
            .await
    }

    /// Whether batch `batch_id`'s commit record is there.
    pub async fn committed(&self, batch_id: u64) -> Result<bool, StreamError> {
        Ok(self
            .read::<CommitRecord>(&self.entry("commits", batch_id))
            .await?
            .is_some())
    }

    /// The last `n` batch reports, oldest first.
    pub async fn recent(&self, n: usize) -> Result<Vec<BatchInfo>, StreamError> {
        let ids = self.ids("commits").await?;
        let mut out = Vec::new();
        for id in ids.iter().rev().take(n).rev() {
            if let Some(info) = self.read(&self.entry("commits", *id)).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Reads what a restarted stream continues from.
    pub async fn recover(&self) -> Result<Recovered, StreamError> {
        let offsets = self.ids("offsets").await?;
        let commits = self.ids("commits").await?;
        let states = self.ids("state").await?;
        let last_commit_id = commits.last().copied();
        let state: Option<State> = match states.last() {
            Some(id) => self.read(&self.entry("state", *id)).await?,
            None => None,
        };
        let after = state.as_ref().map(|s| s.batch_id);
        let mut out = Recovered {
            state,
            ..Default::default()
        };
        for (id, path) in self.listed("starts").await? {
            if after.is_some_and(|a| id <= a) {
                continue;
            }
            if let Some(starts) = self.read::<Starts>(&path).await? {
                out.starts.push(starts);
            }
        }
        for id in &offsets {
            if after.is_some_and(|a| *id <= a) {
                continue;
            }
            let Some(plan) = self.read::<BatchPlan>(&self.entry("offsets", *id)).await? else {
                continue;
            };
            if last_commit_id.is_some_and(|c| *id <= c) {
                out.replay.push(plan);
            } else {
                out.pending = Some(plan);
            }
        }
        out.next_batch = offsets
            .last()
            .copied()
            .max(last_commit_id)
            .max(after)
            .map_or(0, |n| n + 1);
        if let Some(p) = &mut out.pending {
            out.next_batch = p.batch_id;
            for (id, path) in self.listed("retakes").await? {
                if id != p.batch_id {
                    continue;
                }
                let Some(r) = self.read::<Retake>(&path).await? else {
                    continue;
                };
                if r.failed_under.is_some() && r.failed_under == p.job_digest {
                    out.pending_taken_back = true;
                }
                if r.runs_under.is_some() {
                    p.job_digest = r.runs_under;
                    out.pending_taken_back = false;
                }
            }
        }
        if let Some(id) = last_commit_id
            && let Some(record) = self
                .read::<CommitRecord>(&self.entry("commits", id))
                .await?
        {
            out.last_commit = Some(record.info);
            out.last_publishes = record.publishes;
        }
        Ok(out)
    }

    /// Saves the sources' positions after `batch_id` and deletes what that
    /// makes unneeded: offsets up to it, commits but the last `retain`,
    /// older states.
    pub async fn compact(&self, state: &State, retain: u64) -> Result<usize, StreamError> {
        let id = state.batch_id;
        let path = self.entry("state", id);
        match self.create(&path, state).await {
            Ok(()) => {}
            Err(StreamError::Checkpoint { source, .. })
                if matches!(*source, object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        let mut doomed = Vec::new();
        for old in self.ids("state").await? {
            if old < id {
                doomed.push(self.entry("state", old));
            }
        }
        for old in self.ids("offsets").await? {
            if old <= id {
                doomed.push(self.entry("offsets", old));
            }
        }
        // The state holds the positions these recorded.
        for (before, path) in self.listed("starts").await? {
            if before <= id {
                doomed.push(path);
            }
        }
        for (batch, path) in self.listed("retakes").await? {
            if batch <= id {
                doomed.push(path);
            }
        }
        for old in self.ids("commits").await? {
            if old + retain <= id {
                doomed.push(self.entry("commits", old));
            }
        }
        for path in &doomed {
            let deleted = tokio::time::timeout(CALL_TIMEOUT, self.store.delete(path))
                .await
                .map_err(|_| self.timed_out(&format!("deleting {path}")))?;
            match deleted {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.failed(format!("deleting {path}"))(e)),
            }
        }
        Ok(doomed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn plan(id: u64) -> BatchPlan {
        BatchPlan {
            batch_id: id,
            planned_at: Utc::now(),
            due_at: Utc::now(),
            ranges: vec![Range {
                source: "src".into(),
                split: format!("f{id}.json"),
                start: 0,
                end: 1,
                modified_ms: Some(id as i64),
                ..Default::default()
            }],
            lag: vec![],
            job_digest: None,
        }
    }

    fn committed(id: u64) -> BatchInfo {
        BatchInfo {
            batch_id: id,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn recovery_replays_commits_and_reruns_the_uncommitted_batch()
    -> Result<(), Box<dyn std::error::Error>> {
        let url = url::Url::parse("memory:///ck/")?;
        let c = Checkpoint::new(Arc::new(InMemory::new()), &url)?;
        let fresh = c.recover().await?;
        assert_eq!(fresh.next_batch, 0);
        assert!(fresh.pending.is_none());
        for id in 0..3 {
            c.write_plan(&plan(id)).await?;
            c.write_commit(&committed(id), &[]).await?;
        }
        c.write_plan(&plan(3)).await?;
        // The same batch cannot be planned twice.
        assert!(c.write_plan(&plan(3)).await.is_err());
        let r = c.recover().await?;
        assert_eq!(r.replay.len(), 3);
        assert_eq!(r.pending.as_ref().map(|p| p.batch_id), Some(3));
        assert_eq!(r.next_batch, 3);
        c.write_commit(&committed(3), &[]).await?;
        let r = c.recover().await?;
        assert!(r.pending.is_none());
        assert_eq!(r.next_batch, 4);
        assert_eq!(r.last_commit.map(|b| b.batch_id), Some(3));
        Ok(())
    }

    #[tokio::test]
    async fn compaction_keeps_the_checkpoint_bounded() -> Result<(), Box<dyn std::error::Error>> {
        let url = url::Url::parse("memory:///ck/")?;
        let store = Arc::new(InMemory::new());
        let c = Checkpoint::new(store.clone(), &url)?;
        for id in 0..50 {
            c.write_plan(&plan(id)).await?;
            c.write_commit(&committed(id), &[]).await?;
            if id % 10 == 9 {
                let state = State {
                    batch_id: id,
                    sources: BTreeMap::from([("src".into(), serde_json::json!({"seen": {}}))]),
                };
                c.compact(&state, 5).await?;
            }
        }
        let objects = store.list(None).try_collect::<Vec<_>>().await?;
        // The last 5 commits and one state.
        assert!(objects.len() <= 6, "{}", objects.len());
        let r = c.recover().await?;
        assert_eq!(r.next_batch, 50);
        assert_eq!(r.state.map(|s| s.batch_id), Some(49));
        assert!(r.replay.is_empty());
        assert_eq!(c.recent(100).await?.len(), 5);
        Ok(())
    }

    /// Starts recorded before any batch are what a restart finds, until a
    /// state holds them.
    #[tokio::test]
    async fn starts_are_recovered_until_a_state_holds_them()
    -> Result<(), Box<dyn std::error::Error>> {
        let url = url::Url::parse("memory:///ck/")?;
        let c = Checkpoint::new(Arc::new(InMemory::new()), &url)?;
        let start = Range {
            source: "ev".into(),
            split: "0".into(),
            start: 42,
            end: 42,
            ..Default::default()
        };
        c.write_starts(0, std::slice::from_ref(&start)).await?;
        c.write_starts(0, std::slice::from_ref(&start)).await?;
        let r = c.recover().await?;
        assert_eq!(r.next_batch, 0);
        assert_eq!(r.starts.len(), 2);
        assert_eq!(r.starts[0].ranges, vec![start]);
        c.write_plan(&plan(0)).await?;
        c.write_commit(&committed(0), &[]).await?;
        let state = State {
            batch_id: 0,
            sources: BTreeMap::new(),
        };
        c.compact(&state, 5).await?;
        assert!(c.recover().await?.starts.is_empty());
        Ok(())
    }

    /// A batch the run ended on with its writes taken back may run under
    /// a changed job, once: then it is that job's, and only a failure
    /// under it lets another job take it up.
    #[tokio::test]
    async fn a_batch_taken_back_may_be_taken_up_by_a_changed_job()
    -> Result<(), Box<dyn std::error::Error>> {
        let url = url::Url::parse("memory:///ck/")?;
        let c = Checkpoint::new(Arc::new(InMemory::new()), &url)?;
        let mut p = plan(0);
        p.job_digest = Some("a".into());
        c.write_plan(&p).await?;
        let state = |r: &Recovered| {
            let digest = r.pending.as_ref().and_then(|p| p.job_digest.clone());
            (digest, r.pending_taken_back)
        };
        assert_eq!(state(&c.recover().await?), (Some("a".into()), false));
        let retake = |failed: Option<&str>, runs: Option<&str>| Retake {
            batch_id: 0,
            failed_under: failed.map(String::from),
            runs_under: runs.map(String::from),
            at: Utc::now(),
        };
        c.write_retake(&retake(Some("a"), None)).await?;
        assert_eq!(state(&c.recover().await?), (Some("a".into()), true));
        c.write_retake(&retake(None, Some("b"))).await?;
        assert_eq!(state(&c.recover().await?), (Some("b".into()), false));
        // A failure under the job it no longer runs under says nothing.
        c.write_retake(&retake(Some("a"), None)).await?;
        assert_eq!(state(&c.recover().await?), (Some("b".into()), false));
        c.write_retake(&retake(Some("b"), None)).await?;
        assert_eq!(state(&c.recover().await?), (Some("b".into()), true));
        // Committed and compacted, its retakes go with its offsets.
        c.write_commit(&committed(0), &[]).await?;
        let state0 = State {
            batch_id: 0,
            sources: BTreeMap::new(),
        };
        c.compact(&state0, 5).await?;
        assert!(c.listed("retakes").await?.is_empty());
        Ok(())
    }
}
