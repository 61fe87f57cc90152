//! The commit algorithm. Take every writer partition's report and record
//! the commit's intent (a second attempt finishes the same commit); for an
//! overwrite remove the old `_SUCCESS`; make each reported file visible
//! (complete its upload, or rename it into place); abort the uploads of
//! attempts whose output was not taken; for an overwrite delete the earlier
//! files listed in the intent; write the new `_SUCCESS` last. So `_SUCCESS`
//! present means complete, and lists exactly this write's files. The output
//! lock ([`super::lock`]) is checked before anything becomes visible and
//! again before anything is deleted.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use datafusion::common::{DataFusionError, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use serde::{Deserialize, Serialize};

use super::clean::remove_staging;
use super::manifest::{CommittedFile, SuccessData, hostname};
use super::markers::{marker_name, recorded_uploads, stem_of_key};
use super::spec::{Committer, SUCCESS_FILE, WriteSpec};
use super::writer::WrittenFile;
use crate::error::SluiceError;
use crate::exec::Report;
use crate::storage::multipart::{PendingUpload, abort_uploads, complete_upload, list_open_uploads};
use crate::storage::s3::s3_store;

/// How many files the commit moves at once.
const COMMIT_CONCURRENCY: usize = 32;

#[derive(Debug, Clone)]
pub struct CommitSummary {
    pub files: Vec<CommittedFile>,
    pub rows: u64,
    pub bytes: u64,
    pub commit_ms: u64,
}

struct Staged {
    task: String,
    dir: String,
    staging_path: String,
    rows: u64,
    bytes: u64,
    upload: Option<PendingUpload>,
    splits: Option<BTreeMap<String, u64>>,
}

/// Reads the writer rows and insists on a report from exactly every writer
/// partition: a missing report would lose rows, an extra one duplicate them.
/// Only reported files are committed; anything else in staging (a lost
/// attempt's output) is deleted with the staging directory.
fn collect_staged(
    spec: &WriteSpec,
    expected: usize,
    batches: &[RecordBatch],
) -> Result<Vec<Staged>, SluiceError> {
    let fail = |reason: String| spec.commit_failed(reason);
    let mut staged: Vec<Staged> = Vec::new();
    let mut reported: HashSet<String> = HashSet::new();
    let reports = WrittenFile::from_batches(batches).map_err(|e| fail(e.to_string()))?;
    for WrittenFile { task, file: r } in reports {
        reported.insert(task.clone());
        if r.path.is_empty() {
            // A partitioned writer whose input was empty: no file.
            continue;
        }
        let upload = match r.upload_id {
            Some(upload_id) => {
                let parts = r
                    .parts
                    .as_deref()
                    .ok_or_else(|| fail(format!("upload {upload_id} reported without parts")))?;
                let part_ids: Vec<String> = serde_json::from_str(parts)
                    .map_err(|e| fail(format!("unreadable part list: {e}")))?;
                Some(PendingUpload {
                    key: r.path.clone(),
                    upload_id,
                    parts: part_ids,
                })
            }
            None => None,
        };
        let splits = match r.splits.as_deref() {
            Some(json) => Some(
                serde_json::from_str(json)
                    .map_err(|e| fail(format!("unreadable split counts: {e}")))?,
            ),
            None => None,
        };
        staged.push(Staged {
            task,
            dir: r.dir,
            staging_path: r.path,
            rows: r.rows,
            bytes: r.bytes,
            upload,
            splits,
        });
    }
    staged.sort_by(|a, b| a.staging_path.cmp(&b.staging_path));
    if let Some(dup) = staged
        .windows(2)
        .find(|w| w[0].staging_path == w[1].staging_path)
    {
        return Err(fail(format!(
            "staged file {} reported twice (task {})",
            dup[0].staging_path, dup[1].task
        )));
    }
    if reported.len() != expected {
        return Err(fail(format!(
            "expected a report from each of {expected} writer partitions, got {}",
            reported.len()
        )));
    }
    Ok(staged)
}

/// What a commit will do, recorded under the write's staging before it
/// changes anything visible. A second attempt of the commit (Ballista re-runs
/// the stage when the first one's executor is lost) finds it and finishes
/// this commit: the same files, the same deletions, whatever reports the
/// second attempt received.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Intent {
    publishes: Vec<Planned>,
    /// Data files of earlier writes, listed once before anything of this
    /// write was visible: the only files the commit may delete.
    previous: Vec<String>,
    /// The `_SUCCESS` the overwrite removes first, put back if publishing fails.
    previous_success: Option<String>,
    /// A micro-batch's write (`WriteSpec::defer_publish`): only its stream,
    /// which knows whether the batch committed, may take it back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deferred: bool,
    /// The output lock generation of the attempt that recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Planned {
    task: String,
    staging_path: String,
    upload: Option<PendingUpload>,
    /// Where the file becomes visible.
    target: String,
    rows: u64,
    bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    splits: Option<BTreeMap<String, u64>>,
}

impl Planned {
    fn committed(&self) -> CommittedFile {
        CommittedFile {
            path: self.target.clone(),
            rows: self.rows,
            bytes: self.bytes,
            writer: self.task.clone(),
            splits: self.splits.clone(),
        }
    }
}

/// How many times a delete of an earlier file is tried before the commit fails.
const DELETE_TRIES: u32 = 3;

pub async fn commit(
    spec: &WriteSpec,
    store: Arc<dyn ObjectStore>,
    expected: usize,
    batches: &[RecordBatch],
) -> Result<CommitSummary> {
    let started = Instant::now();
    let staged = collect_staged(spec, expected, batches)?;
    let base = spec.base_path()?;
    let success_path = base.clone().join(SUCCESS_FILE);

    // An earlier attempt of this commit finished: report what it committed.
    if let Some(done) = committed_by(spec, &store, &success_path, started).await? {
        return Ok(done);
    }
    spec.check_lock(&store).await?;
    let intent = record_intent(spec, &store, &base, &success_path, &staged).await?;
    if spec.defer_publish {
        let files: Vec<CommittedFile> = intent.publishes.iter().map(Planned::committed).collect();
        tracing::info!(
            files = files.len(),
            "commit recorded; the client publishes it with its batch"
        );
        return Ok(CommitSummary {
            rows: files.iter().map(|f| f.rows).sum(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            files,
            commit_ms: started.elapsed().as_millis() as u64,
        });
    }
    publish_intent(spec, &store, &intent, &success_path, started).await
}

/// Publishes a deferred write (`WriteSpec::defer_publish`) whose commit
/// task recorded its intent: run by the client once the write's batch is
/// committed, and again after a crash until it is done. `None`: there is
/// no intent left, because an earlier call finished (its staging, intent
/// included, goes last).
pub async fn finish(
    spec: &WriteSpec,
    store: &Arc<dyn ObjectStore>,
) -> Result<Option<CommitSummary>> {
    let started = Instant::now();
    let success_path = spec.base_path()?.join(SUCCESS_FILE);
    if let Some(done) = committed_by(spec, store, &success_path, started).await? {
        return Ok(Some(done));
    }
    let Some(intent) = read_intent(spec, store, &spec.intent_path()?).await? else {
        return Ok(None);
    };
    spec.check_lock(store).await?;
    publish_intent(spec, store, &intent, &success_path, started)
        .await
        .map(Some)
}

/// The commit, if `_SUCCESS` names this write (its staging is then removed).
async fn committed_by(
    spec: &WriteSpec,
    store: &Arc<dyn ObjectStore>,
    success_path: &Path,
    started: Instant,
) -> Result<Option<CommitSummary>> {
    let Some(done) = read_manifest(store, success_path).await? else {
        return Ok(None);
    };
    if done.job_id != spec.write_id {
        return Ok(None);
    }
    tracing::info!(write_id = %spec.write_id, "commit already done by an earlier attempt");
    remove_staging(spec, store).await?;
    Ok(Some(CommitSummary {
        rows: done.rows,
        bytes: done.bytes,
        files: done.files,
        commit_ms: started.elapsed().as_millis() as u64,
    }))
}

/// Makes the intent's files visible, deletes what an overwrite replaces,
/// and writes `_SUCCESS`. A deferred write's batch is already committed:
/// a failure here leaves the intent to be finished by the next call,
/// never takes the write back.
async fn publish_intent(
    spec: &WriteSpec,
    store: &Arc<dyn ObjectStore>,
    intent: &Intent,
    success_path: &Path,
    started: Instant,
) -> Result<CommitSummary> {
    let fail = |reason: String| spec.commit_failed(reason);
    // Names this attempt in the decision record. A deferred write's
    // publishes are one attempt however often they are retried.
    let attempt = if spec.defer_publish {
        "batch".to_string()
    } else {
        uuid::Uuid::new_v4().simple().to_string()
    };
    let store = Arc::clone(store);
    let success_path = success_path.clone();
    let intent = intent.clone();

    if spec.overwrite {
        // From here until the new `_SUCCESS`, the output has none: a reader
        // that trusts it never reads old and new rows together.
        match store.delete(&success_path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(spec
                    .store_failed(format!("removing the old {SUCCESS_FILE}"), e)
                    .into());
            }
        }
    }
    let multipart = spec.uses_multipart()?;
    let s3 = if multipart {
        Some(s3_store(&spec.output_url()?)?)
    } else {
        None
    };
    let in_place = spec.committer == Committer::RenameV2;
    let mut publishes = Vec::with_capacity(intent.publishes.len());
    for p in &intent.publishes {
        publishes.push(publish(Arc::clone(&store), s3.clone(), p, in_place));
    }
    // Hadoop's v1 job commit (`FileOutputCommitter.mergePaths`) moves the
    // files one after another from the driver; the comparison keeps that shape.
    let concurrency = match spec.committer {
        Committer::RenameV1 => 1,
        _ => COMMIT_CONCURRENCY,
    };
    let results: Vec<Result<CommittedFile, (String, object_store::Error)>> =
        futures::stream::iter(publishes)
            .buffered(concurrency)
            .collect()
            .await;
    let publish_ms = started.elapsed().as_millis();
    let mut files = Vec::with_capacity(results.len());
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(f) => files.push(f),
            Err((path, e)) => failures.push(format!("{path}: {e}")),
        }
    }
    if !failures.is_empty() {
        // A deferred write's batch is committed: it only goes forward.
        let outcome = if spec.defer_publish {
            "publish; the batch is committed, so its publish is tried again"
        } else {
            roll_back(
                spec,
                &store,
                s3.as_ref(),
                &intent,
                &success_path,
                &attempt,
                true,
            )
            .await?;
            "commit (the earlier output is left as it was)"
        };
        return Err(fail(format!(
            "{} of {} files failed to {outcome}: {}",
            failures.len(),
            intent.publishes.len(),
            failures.join("; ")
        ))
        .into());
    }
    // Uploads of attempts whose output the commit did not receive (lost
    // executors, retried tasks) are recorded but never completed: abort them.
    let aborted = match &s3 {
        Some(s3) => {
            let completed: HashSet<String> = intent
                .publishes
                .iter()
                .filter_map(|s| s.upload.as_ref().map(|u| u.upload_id.clone()))
                .collect();
            let known: HashSet<String> = intent
                .publishes
                .iter()
                .filter_map(|s| {
                    let key_stem = stem_of_key(&s.upload.as_ref()?.key)?;
                    Some(marker_name(&key_stem, &s.task))
                })
                .collect();
            abort_recorded(spec, &store, s3, &completed, &known).await?
        }
        None => 0,
    };

    // The delete step runs only while this write holds the output. A write
    // that lost it takes its files back but leaves `_SUCCESS` alone: it may
    // be the new holder's.
    if let Err(e) = spec.check_lock(&store).await {
        if spec.defer_publish {
            // The batch is committed: its next publish finishes this.
            return Err(e.into());
        }
        roll_back(
            spec,
            &store,
            s3.as_ref(),
            &intent,
            &success_path,
            &attempt,
            false,
        )
        .await?;
        return Err(e.into());
    }
    // One attempt decides to go forward into the delete step (or back):
    // another that finds the step taken waits for that one's `_SUCCESS`,
    // and fails without deleting if none comes.
    if let Some(done) = go_forward(spec, &store, &success_path, &attempt).await? {
        return Ok(CommitSummary {
            rows: done.rows,
            bytes: done.bytes,
            files: done.files,
            commit_ms: started.elapsed().as_millis() as u64,
        });
    }
    let (deleted, undeleted) = delete_previous(&store, &intent).await;
    if !undeleted.is_empty() && deleted == 0 && !spec.defer_publish {
        // Nothing of the earlier output is gone yet: going back leaves it
        // whole, as a failed write should.
        record_decision(spec, &store, Decision::Back, &attempt, true).await?;
        take_back(spec, &store, s3.as_ref(), &intent, &success_path, true).await;
        return Err(fail(format!(
            "{} earlier files could not be removed, so the write was taken back and the earlier output is left as it was: {}",
            undeleted.len(),
            undeleted.join("; ")
        ))
        .into());
    }
    if !undeleted.is_empty() {
        return Err(fail(format!(
            "the new files are in place but {} earlier files could not be removed, so {SUCCESS_FILE} was not written (run the write again): {}",
            undeleted.len(),
            undeleted.join("; ")
        ))
        .into());
    }

    let rows = files.iter().map(|f| f.rows).sum();
    let bytes = files.iter().map(|f| f.bytes).sum();
    let mut diagnostics = BTreeMap::new();
    diagnostics.insert("format".to_string(), format!("{:?}", spec.format));
    diagnostics.insert("overwrite".to_string(), spec.overwrite.to_string());
    diagnostics.insert("aborted_uploads".to_string(), aborted.to_string());
    diagnostics.insert("publish_ms".to_string(), publish_ms.to_string());
    diagnostics.insert(
        "removed_earlier_files".to_string(),
        intent.previous.len().to_string(),
    );
    diagnostics.insert(
        "commit_ms".to_string(),
        started.elapsed().as_millis().to_string(),
    );
    if let Some(generation) = spec.lock_generation {
        diagnostics.insert("lock_generation".to_string(), generation.to_string());
    }
    let now = chrono::Utc::now();
    let manifest = SuccessData {
        name: "org.apache.hadoop.fs.s3a.commit.files.SuccessData/1".to_string(),
        timestamp: now.timestamp_millis(),
        date: now.to_rfc3339(),
        hostname: hostname(),
        committer: match spec.committer_label()? {
            label @ ("multipart" | "staging") => format!("sluice-{label}"),
            label => label.to_string(),
        },
        description: format!("sluice write {} to {}", spec.write_id, spec.url),
        job_id: spec.write_id.clone(),
        job_id_source: "sluice.write_id".to_string(),
        filenames: files.iter().map(|f| format!("/{}", f.path)).collect(),
        files: files.clone(),
        rows,
        bytes,
        diagnostics,
    };
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| fail(e.to_string()))?;
    // A holder that stalled past its lease must not describe the output the
    // next holder is writing.
    spec.check_lock(&store).await?;
    store
        .put(&success_path, body.into())
        .await
        .map_err(|e| spec.store_failed(format!("writing {SUCCESS_FILE}"), e))?;

    let before_cleanup = started.elapsed().as_millis();
    remove_staging(spec, &store).await?;
    super::metrics::committed(spec, files.len(), rows, aborted, started.elapsed());
    tracing::info!(
        publish_ms,
        cleanup_ms = started.elapsed().as_millis() - before_cleanup,
        files = files.len(),
        rows,
        bytes,
        commit_ms = started.elapsed().as_millis() as u64,
        "committed"
    );
    Ok(CommitSummary {
        files,
        rows,
        bytes,
        commit_ms: started.elapsed().as_millis() as u64,
    })
}

/// Which way a commit goes once its files are visible: forward into the
/// delete step, or back (its files removed, the earlier `_SUCCESS` put
/// back). Recorded once per write under its staging, with a conditional
/// create, so two attempts (or an attempt and the client's cleanup) never
/// go opposite ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Decision {
    Forward,
    Back,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DecisionRecord {
    decision: Decision,
    attempt: String,
}

fn decision_path(spec: &WriteSpec) -> Result<Path> {
    Ok(spec.staging_prefix()?.join("decision.json"))
}

/// Records `want` unless a decision exists (`overwrite`: replace one this
/// attempt made); returns the decision that stands.
async fn record_decision(
    spec: &WriteSpec,
    store: &Arc<dyn ObjectStore>,
    want: Decision,
    attempt: &str,
    overwrite: bool,
) -> Result<DecisionRecord> {
    let path = decision_path(spec)?;
    let record = DecisionRecord {
        decision: want,
        attempt: attempt.to_string(),
    };
    let body = serde_json::to_vec(&record).map_err(|e| spec.commit_failed(e.to_string()))?;
    let mode = if overwrite {
        PutMode::Overwrite
    } else {
        PutMode::Create
    };
    let opts = PutOptions {
        mode,
        ..Default::default()
    };
    match store.put_opts(&path, body.into(), opts).await {
        Ok(_) => Ok(record),
        Err(object_store::Error::AlreadyExists { .. }) => {
            read_record(spec, store, &path, "commit decision")
                .await?
                .ok_or_else(|| {
                    spec.commit_failed("the commit decision vanished".into())
                        .into()
                })
        }
        Err(e) => Err(spec
            .store_failed("recording the commit decision".into(), e)
            .into()),
    }
}

/// Goes forward into the delete step. `None`: this attempt deletes. If
/// another attempt went forward, waits up to the lock's ttl for its
/// `_SUCCESS` and returns it; fails, having deleted nothing, without one or
/// if the write was taken back.
async fn go_forward(
    spec: &WriteSpec,
    store: &Arc<dyn ObjectStore>,
    success_path: &Path,
    attempt: &str,
) -> Result<Option<SuccessData>> {
    let standing = record_decision(spec, store, Decision::Forward, attempt, false).await?;
    match standing.decision {
        Decision::Forward if standing.attempt == attempt => return Ok(None),
        Decision::Back => {
            return Err(spec
                .commit_failed("the write was taken back (its cleanup or another attempt of its commit decided so)".into())
                .into());
        }
        Decision::Forward => {}
    }
    tracing::warn!(write_id = %spec.write_id, "another attempt of this commit is deleting the earlier files; waiting for it");
    let wait = std::time::Duration::from_millis(spec.lock_ttl_ms.min(3_600_000));
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(done) = read_manifest(store, success_path).await?
            && done.job_id == spec.write_id
        {
            return Ok(Some(done));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Err(spec
        .commit_failed(
            "another attempt of this commit started deleting the earlier files and did not finish; the new files are in place, without _SUCCESS (run the write again)".into(),
        )
        .into())
}

/// Takes the write back unless another attempt went forward (then it is
/// that attempt's to finish, and this one touches nothing).
async fn roll_back(
    spec: &WriteSpec,
    store: &Arc<dyn ObjectStore>,
    s3: Option<&Arc<AmazonS3>>,
    intent: &Intent,
    success_path: &Path,
    attempt: &str,
    restore_success: bool,
) -> Result<()> {
    let standing = record_decision(spec, store, Decision::Back, attempt, false).await?;
    if standing.decision == Decision::Forward {
        return Err(spec
            .commit_failed("another attempt of this commit is finishing it".into())
            .into());
    }
    take_back(spec, store, s3, intent, success_path, restore_success).await;
    Ok(())
}

/// Deletes the earlier files the intent lists (never this write's own);
/// returns how many went and what could not be deleted.
async fn delete_previous(store: &Arc<dyn ObjectStore>, intent: &Intent) -> (usize, Vec<String>) {
    let ours: HashSet<&str> = intent.publishes.iter().map(|p| p.target.as_str()).collect();
    let (mut deleted, mut undeleted) = (0, vec![]);
    for old in intent
        .previous
        .iter()
        .filter(|p| !ours.contains(p.as_str()))
    {
        match delete_with_retries(store, &Path::from(old.as_str())).await {
            Ok(()) => deleted += 1,
            Err(e) => undeleted.push(format!("{old}: {e}")),
        }
    }
    (deleted, undeleted)
}

/// After a failed or cancelled job whose commit may have started: settles
/// the write one way. If no attempt went forward, its visible files are
/// taken back and the earlier `_SUCCESS` put back; if one did, the earlier
/// files it listed are deleted (the new output is then complete, without
/// `_SUCCESS`). Returns what it did, for the log.
pub(super) async fn settle(
    spec: &WriteSpec,
    store: &Arc<dyn ObjectStore>,
) -> Result<Option<&'static str>> {
    let path = spec.intent_path()?;
    let Some(intent) = read_intent(spec, store, &path).await? else {
        return Ok(None);
    };
    let success_path = spec.base_path()?.join(SUCCESS_FILE);
    let standing = record_decision(spec, store, Decision::Back, "cleanup", false).await?;
    match standing.decision {
        Decision::Back => {
            // A deferred write never touched `_SUCCESS`: the one there may
            // be a later write's.
            take_back(spec, store, None, &intent, &success_path, !intent.deferred).await;
            Ok(Some(if intent.deferred {
                "took back the commit it recorded (its batch did not commit)"
            } else {
                "took back the files its commit had made visible"
            }))
        }
        Decision::Forward => {
            let (_, undeleted) = delete_previous(store, &intent).await;
            if !undeleted.is_empty() {
                tracing::warn!(write_id = %spec.write_id, files = undeleted.len(), "earlier files could not be removed");
            }
            Ok(Some(
                "finished deleting the earlier files; the new output has no _SUCCESS",
            ))
        }
    }
}

/// Whether the write has a recorded, unpublished micro-batch commit: only
/// its stream may settle that (publish it, or take it back when the batch
/// did not commit).
pub(super) async fn deferred_intent(
    spec: &WriteSpec,
    store: &Arc<dyn ObjectStore>,
) -> Result<bool> {
    Ok(read_intent(spec, store, &spec.intent_path()?)
        .await?
        .is_some_and(|i| i.deferred))
}

/// Whether the write still has a recorded commit to publish.
pub async fn unpublished(spec: &WriteSpec, store: &Arc<dyn ObjectStore>) -> Result<bool> {
    Ok(read_intent(spec, store, &spec.intent_path()?)
        .await?
        .is_some())
}

/// The manifest at `path`, if there is a readable one.
async fn read_manifest(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<Option<SuccessData>> {
    match store.get(path).await {
        Ok(got) => {
            let body = got.bytes().await?;
            Ok(serde_json::from_slice(&body).ok())
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Records this commit's intent, or reads the one an earlier attempt
/// recorded (the conditional create lets exactly one attempt decide).
async fn record_intent(
    spec: &WriteSpec,
    store: &Arc<dyn ObjectStore>,
    base: &Path,
    success_path: &Path,
    staged: &[Staged],
) -> Result<Intent> {
    let path = spec.intent_path()?;
    let mut mode = PutMode::Create;
    if let Some(intent) = read_intent(spec, store, &path).await? {
        // A deferred intent publishes nothing: one an attempt under an
        // earlier lock generation recorded (a job the scheduler lost, whose
        // commit task ran after the re-run's cleanup) names files that
        // cleanup removed, and is replaced. One a later generation recorded
        // is the live attempt's: this one is fenced off.
        let (recorded, ours) = (
            intent.generation.unwrap_or(0),
            spec.lock_generation.unwrap_or(0),
        );
        if !spec.defer_publish || recorded == ours {
            tracing::warn!(write_id = %spec.write_id, "finishing the commit an earlier attempt started");
            return Ok(intent);
        }
        if recorded > ours {
            return Err(spec
                .commit_failed(format!(
                    "a later attempt (lock generation {recorded}) recorded this write's commit; this one (generation {ours}) stops"
                ))
                .into());
        }
        tracing::warn!(write_id = %spec.write_id, "replacing a deferred commit an earlier lock generation recorded");
        mode = PutMode::Overwrite;
    }
    let (previous, previous_success) = if spec.overwrite {
        let previous = list_data_files(store, base)
            .await?
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        let success = match store.get(success_path).await {
            Ok(got) => Some(String::from_utf8_lossy(&got.bytes().await?).into_owned()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        (previous, success)
    } else {
        (vec![], None)
    };
    let mut publishes = Vec::with_capacity(staged.len());
    for (index, s) in staged.iter().enumerate() {
        let target = match &s.upload {
            Some(upload) => upload.key.clone(),
            None if spec.committer == Committer::RenameV2 => s.staging_path.clone(),
            None => spec.final_path(&s.dir, index)?.to_string(),
        };
        publishes.push(Planned {
            task: s.task.clone(),
            staging_path: s.staging_path.clone(),
            upload: s.upload.clone(),
            target,
            rows: s.rows,
            bytes: s.bytes,
            splits: s.splits.clone(),
        });
    }
    let intent = Intent {
        publishes,
        previous,
        previous_success,
        deferred: spec.defer_publish,
        generation: spec.lock_generation,
    };
    let body = serde_json::to_vec(&intent).map_err(|e| spec.commit_failed(e.to_string()))?;
    let opts = PutOptions {
        mode,
        ..Default::default()
    };
    match store.put_opts(&path, body.into(), opts).await {
        Ok(_) => Ok(intent),
        Err(object_store::Error::AlreadyExists { .. }) => {
            read_intent(spec, store, &path).await?.ok_or_else(|| {
                spec.commit_failed("the commit record vanished".into())
                    .into()
            })
        }
        Err(e) => Err(spec.store_failed("recording the commit".into(), e).into()),
    }
}

async fn read_intent(
    spec: &WriteSpec,
    store: &Arc<dyn ObjectStore>,
    path: &Path,
) -> Result<Option<Intent>> {
    read_record(spec, store, path, "commit record").await
}

/// A JSON record of the commit under the write's staging, if it is there.
async fn read_record<T: serde::de::DeserializeOwned>(
    spec: &WriteSpec,
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    what: &str,
) -> Result<Option<T>> {
    match store.get(path).await {
        Ok(got) => {
            let body = got.bytes().await?;
            let record = serde_json::from_slice(&body)
                .map_err(|e| spec.commit_failed(format!("unreadable {what}: {e}")))?;
            Ok(Some(record))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(spec.store_failed(format!("reading the {what}"), e).into()),
    }
}

/// Removes what of this write became visible, aborts its uploads and (with
/// `restore_success`) puts the earlier `_SUCCESS` back, so the output is
/// what it was before the write.
async fn take_back(
    spec: &WriteSpec,
    store: &Arc<dyn ObjectStore>,
    s3: Option<&Arc<AmazonS3>>,
    intent: &Intent,
    success_path: &Path,
    restore_success: bool,
) {
    for p in &intent.publishes {
        let _ = store.delete(&Path::from(p.target.as_str())).await;
    }
    if let Some(s3) = s3 {
        let _ = abort_recorded(spec, store, s3, &HashSet::new(), &HashSet::new()).await;
    }
    if let Some(old) = intent.previous_success.as_ref().filter(|_| restore_success)
        && let Err(e) = store
            .put(success_path, old.clone().into_bytes().into())
            .await
    {
        tracing::warn!(error = %e, "could not put the earlier _SUCCESS back");
    }
}

/// Whether `target` is there with the size this write recorded for it.
async fn already_visible(store: &Arc<dyn ObjectStore>, target: &Path, bytes: u64) -> bool {
    matches!(store.head(target).await, Ok(meta) if meta.size == bytes)
}

async fn delete_with_retries(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
) -> Result<(), object_store::Error> {
    let mut tries = 0;
    loop {
        tries += 1;
        match store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) if tries >= DELETE_TRIES => return Err(e),
            Err(e) => {
                tracing::warn!(%path, error = %e, "delete failed; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(200 << tries)).await;
            }
        }
    }
}

/// Makes one file visible: completes its upload, or renames the staged
/// file. Idempotent: a file an earlier attempt already made visible (the
/// upload completed, the staged file gone and the target of the recorded
/// size present) counts as done.
async fn publish(
    store: Arc<dyn ObjectStore>,
    s3: Option<Arc<AmazonS3>>,
    planned: &Planned,
    already_in_place: bool,
) -> Result<CommittedFile, (String, object_store::Error)> {
    let target = Path::from(planned.target.as_str());
    match (&planned.upload, s3) {
        (None, _) if already_in_place => {}
        (Some(upload), Some(s3)) => {
            if let Err(e) = complete_upload(&s3, upload, planned.bytes).await
                && !already_visible(&store, &target, planned.bytes).await
            {
                return Err((upload.key.clone(), e));
            }
        }
        (Some(upload), None) => {
            return Err((
                upload.key.clone(),
                object_store::Error::NotSupported {
                    source: "a multipart upload reported for a store without multipart uploads"
                        .into(),
                },
            ));
        }
        (None, _) => {
            if let Err(e) = store
                .rename(&Path::from(planned.staging_path.as_str()), &target)
                .await
                && !already_visible(&store, &target, planned.bytes).await
            {
                return Err((planned.staging_path.clone(), e));
            }
        }
    }
    Ok(planned.committed())
}

/// Aborts every recorded upload of this write not in `keep`; returns how many.
/// `known`: stems of uploads the caller completed (their markers need not
/// be read).
pub(super) async fn abort_recorded(
    spec: &WriteSpec,
    store: &Arc<dyn ObjectStore>,
    s3: &Arc<AmazonS3>,
    keep: &HashSet<String>,
    known: &HashSet<String>,
) -> Result<usize> {
    let recorded = recorded_uploads(store, spec, known).await?;
    let mut stale: Vec<PendingUpload> = recorded
        .into_iter()
        .map(|(_, u)| u)
        .filter(|u| !keep.contains(&u.upload_id))
        .collect();
    // A task that died between starting an upload and recording it left an
    // upload no marker names: find this write's uploads by key.
    let short = spec.file_tag();
    let tag = format!("-{short}.");
    let prefix = format!("{}/", spec.base_path()?);
    // Best effort: without s3:ListBucketMultipartUploads the recorded
    // uploads are still aborted, and a write must not fail over this.
    let open_uploads = match list_open_uploads(&spec.output_url()?, &prefix).await {
        Ok(open) => open,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list multipart uploads; aborting recorded ones only");
            vec![]
        }
    };
    for open in open_uploads {
        if open.key.contains(&tag)
            && !keep.contains(&open.upload_id)
            && !stale.iter().any(|s| s.upload_id == open.upload_id)
        {
            stale.push(open);
        }
    }
    if !stale.is_empty() {
        tracing::info!(
            uploads = stale.len(),
            "aborting uploads of lost or failed attempts"
        );
    }
    abort_uploads(s3, stale).await
}

/// Data files directly in or below `base`, skipping the manifest and hidden
/// entries (staging, `_temporary`, dot files).
async fn list_data_files(store: &Arc<dyn ObjectStore>, base: &Path) -> Result<Vec<Path>> {
    let base_len = base.parts().count();
    let listed: Vec<_> = store.list(Some(base)).try_collect().await.map_err(|e| {
        DataFusionError::External(Box::new(SluiceError::Commit {
            write_id: String::new(),
            url: base.to_string(),
            reason: format!("listing earlier output: {e}"),
        }))
    })?;
    Ok(listed
        .into_iter()
        .map(|m| m.location)
        .filter(|p| {
            p.parts().skip(base_len).all(|part| {
                let s = part.as_ref();
                !s.starts_with('_') && !s.starts_with('.')
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use futures::stream::BoxStream;
    use object_store::local::LocalFileSystem;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
        PutMultipartOptions, PutPayload, PutResult, RenameOptions,
    };

    use super::*;
    use crate::sink::files::output::Written;
    use crate::sink::files::spec::WriteFormat;

    /// A local store whose renames after the first `after` never finish:
    /// a commit run over it is cut off mid-publish, like a killed executor.
    #[derive(Debug)]
    struct Stall {
        inner: Arc<dyn ObjectStore>,
        after: usize,
        renames: AtomicUsize,
    }

    impl std::fmt::Display for Stall {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Stall({})", self.inner)
        }
    }

    #[async_trait]
    impl ObjectStore for Stall {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }

        async fn rename_opts(
            &self,
            from: &Path,
            to: &Path,
            options: RenameOptions,
        ) -> object_store::Result<()> {
            if self.renames.fetch_add(1, Ordering::SeqCst) >= self.after {
                futures::future::pending::<()>().await;
            }
            self.inner.rename_opts(from, to, options).await
        }
    }

    /// Runs a commit of `expected` writers' `batch` that stalls after
    /// publishing `after` files, dropping it there as a killed task would;
    /// true if it stalled.
    async fn cut_off(
        spec: &WriteSpec,
        local: &Arc<dyn ObjectStore>,
        batch: &RecordBatch,
        expected: usize,
        after: usize,
    ) -> bool {
        let stall: Arc<dyn ObjectStore> = Arc::new(Stall {
            inner: Arc::clone(local),
            after,
            renames: AtomicUsize::new(0),
        });
        tokio::time::timeout(
            std::time::Duration::from_millis(500),
            commit(spec, stall, expected, std::slice::from_ref(batch)),
        )
        .await
        .is_err()
    }

    /// An NDJSON overwrite of `out/` in a fresh temporary directory.
    fn overwrite_in_tempdir() -> Result<(tempfile::TempDir, WriteSpec)> {
        let dir = tempfile::tempdir().map_err(|e| DataFusionError::External(Box::new(e)))?;
        let out = dir.path().join("out").display().to_string();
        let spec = WriteSpec::new(&out, WriteFormat::Json, true, BTreeMap::new())?;
        Ok((dir, spec))
    }

    /// Stages one NDJSON file of `rows` rows per writer (`None`: reported
    /// but never staged) and returns the writers' reports.
    async fn stage(
        spec: &WriteSpec,
        store: &Arc<dyn ObjectStore>,
        writers: &[Option<u64>],
    ) -> Result<RecordBatch> {
        let mut reports = vec![];
        for (i, rows) in writers.iter().enumerate() {
            let path = spec.staging_path(&format!("p{i:05}"))?;
            let body = "{\"new\":1}\n".repeat(rows.unwrap_or(1) as usize);
            if rows.is_some() {
                store.put(&path, body.clone().into()).await?;
            }
            reports.push(WrittenFile {
                task: format!("t{i}"),
                file: Written {
                    dir: String::new(),
                    path: path.to_string(),
                    rows: rows.unwrap_or(1),
                    bytes: body.len() as u64,
                    upload_id: None,
                    parts: None,
                    splits: None,
                },
            });
        }
        WrittenFile::to_batch(&reports)
    }

    async fn data_files(store: &Arc<dyn ObjectStore>, base: &Path) -> Result<Vec<String>> {
        let mut files: Vec<String> = list_data_files(store, base)
            .await?
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        files.sort();
        Ok(files)
    }

    #[tokio::test]
    async fn a_second_commit_attempt_finishes_the_first_ones_commit() -> Result<()> {
        let (dir, spec) = overwrite_in_tempdir()?;
        let out = dir.path().join("out");
        let local: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
        let base = spec.base_path()?;
        // An earlier write's output.
        let old: Vec<Path> = (0..2)
            .map(|i| base.clone().join(format!("part-old-{i}.json")))
            .collect();
        for p in &old {
            local.put(p, "{\"old\":1}\n".into()).await?;
        }
        local
            .put(&base.clone().join(SUCCESS_FILE), "{}".into())
            .await?;
        // Four writers staged their files.
        let batch = stage(&spec, &local, &[Some(1), Some(2), Some(3), Some(4)]).await?;

        // The first attempt is cut off after publishing two files.
        assert!(
            cut_off(&spec, &local, &batch, 4, 2).await,
            "the first attempt should have stalled"
        );
        // Mid-commit: the old manifest is gone, so nobody trusts a mix.
        assert!(local.head(&base.clone().join(SUCCESS_FILE)).await.is_err());
        assert_eq!(data_files(&local, &base).await?.len(), 4);

        // The second attempt finishes the same commit.
        let done = commit(&spec, Arc::clone(&local), 4, std::slice::from_ref(&batch)).await?;
        assert_eq!(done.rows, 10);
        assert_eq!(done.files.len(), 4);
        let mut committed: Vec<String> = done.files.iter().map(|f| f.path.clone()).collect();
        committed.sort();
        assert_eq!(data_files(&local, &base).await?, committed);
        let manifest: SuccessData = serde_json::from_slice(
            &local
                .get(&base.clone().join(SUCCESS_FILE))
                .await?
                .bytes()
                .await?,
        )
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
        assert_eq!(manifest.job_id, spec.write_id);
        assert_eq!(manifest.rows, 10);
        assert!(
            !out.join(crate::sink::files::spec::STAGING_DIR)
                .join(&spec.write_id)
                .exists()
        );

        // A third attempt, after the commit: the same answer, nothing removed.
        let again = commit(&spec, Arc::clone(&local), 4, std::slice::from_ref(&batch)).await?;
        assert_eq!(again.files, done.files);
        assert_eq!(data_files(&local, &base).await?, committed);
        Ok(())
    }

    #[tokio::test]
    async fn a_deferred_commit_publishes_nothing_until_finished_and_only_goes_forward() -> Result<()>
    {
        let (dir, mut spec) = overwrite_in_tempdir()?;
        spec.defer_publish = true;
        let local: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
        let base = spec.base_path()?;
        let old = base.clone().join("part-old-0.json");
        local.put(&old, "{\"old\":1}\n".into()).await?;
        let success = base.clone().join(SUCCESS_FILE);
        local.put(&success, "{}".into()).await?;
        let batch = stage(&spec, &local, &[Some(1), Some(2)]).await?;

        // The commit task records the intent and reports the files.
        let recorded = commit(&spec, Arc::clone(&local), 2, std::slice::from_ref(&batch)).await?;
        assert_eq!((recorded.rows, recorded.files.len()), (3, 2));
        // Nothing changed in the output: the old file and manifest stand.
        assert_eq!(data_files(&local, &base).await?, [old.to_string()]);
        assert_eq!(&local.get(&success).await?.bytes().await?[..], b"{}");

        // The batch committed: the client publishes.
        let done = finish(&spec, &local).await?.map(|c| c.rows);
        assert_eq!(done, Some(3));
        let mut published: Vec<String> = recorded.files.iter().map(|f| f.path.clone()).collect();
        published.sort();
        assert_eq!(data_files(&local, &base).await?, published);
        let manifest: SuccessData =
            serde_json::from_slice(&local.get(&success).await?.bytes().await?)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
        assert_eq!(manifest.job_id, spec.write_id);
        // Again (a restart publishing the last batch once more): the same
        // commit, nothing moved.
        assert_eq!(finish(&spec, &local).await?.map(|c| c.rows), Some(3));
        assert_eq!(data_files(&local, &base).await?, published);
        drop(dir);

        // A deferred write whose batch never committed is taken back by
        // the re-run's cleanup: nothing of it becomes visible.
        let (dir, mut spec) = overwrite_in_tempdir()?;
        spec.defer_publish = true;
        let base = spec.base_path()?;
        let batch = stage(&spec, &local, &[Some(4)]).await?;
        commit(&spec, Arc::clone(&local), 1, std::slice::from_ref(&batch)).await?;
        crate::sink::files::abandon(&spec, &local).await?;
        assert!(data_files(&local, &base).await?.is_empty());
        assert!(finish(&spec, &local).await?.is_none());
        assert!(data_files(&local, &base).await?.is_empty());

        // A commit task of a lost job (an earlier lock generation) recorded
        // its intent after the re-run's cleanup: the re-run's commit
        // replaces it rather than finishing it.
        let success = base.clone().join(SUCCESS_FILE);
        spec.lock_generation = Some(1);
        let late = stage(&spec, &local, &[Some(7)]).await?;
        let staged = collect_staged(&spec, 1, std::slice::from_ref(&late))?;
        record_intent(&spec, &local, &base, &success, &staged).await?;
        spec.lock_generation = Some(2);
        let rerun = stage(&spec, &local, &[Some(2), Some(3)]).await?;
        let staged = collect_staged(&spec, 2, std::slice::from_ref(&rerun))?;
        let intent = record_intent(&spec, &local, &base, &success, &staged).await?;
        assert_eq!((intent.publishes.len(), intent.generation), (2, Some(2)));
        // A second attempt under the same generation finishes that one.
        let staged = collect_staged(&spec, 1, std::slice::from_ref(&late))?;
        let again = record_intent(&spec, &local, &base, &success, &staged).await?;
        assert_eq!(again.publishes.len(), 2);
        // The lost job's task, resuming after the re-run recorded its
        // intent, is fenced off and leaves that intent alone.
        spec.lock_generation = Some(1);
        let fenced = record_intent(&spec, &local, &base, &success, &staged).await;
        assert!(
            fenced.is_err_and(|e| e.to_string().contains("lock generation 2")),
            "an older attempt replaced a newer intent"
        );
        spec.lock_generation = Some(2);
        let kept = record_intent(&spec, &local, &base, &success, &staged).await?;
        assert_eq!(kept.publishes.len(), 2);
        spec.lock_generation = None;
        assert_eq!(finish(&spec, &local).await?.map(|c| c.rows), Some(5));
        assert_eq!(data_files(&local, &base).await?.len(), 2);
        drop(dir);
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_publish_leaves_the_earlier_output_and_its_manifest() -> Result<()> {
        let (_dir, spec) = overwrite_in_tempdir()?;
        let local: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
        let base = spec.base_path()?;
        let old = base.clone().join("part-old-0.json");
        local.put(&old, "{\"old\":1}\n".into()).await?;
        local
            .put(&base.clone().join(SUCCESS_FILE), "{\"old\":true}".into())
            .await?;
        // One writer reported a file that is not there: its publish fails.
        let batch = stage(&spec, &local, &[Some(1), None]).await?;
        let err = commit(&spec, Arc::clone(&local), 2, &[batch])
            .await
            .err()
            .map(|e| crate::error::render(&e))
            .unwrap_or_default();
        assert!(err.contains("1 of 2 files failed to commit"), "{err}");
        assert_eq!(data_files(&local, &base).await?, vec![old.to_string()]);
        let manifest = local
            .get(&base.clone().join(SUCCESS_FILE))
            .await?
            .bytes()
            .await?;
        assert_eq!(&manifest[..], b"{\"old\":true}");
        Ok(())
    }

    #[tokio::test]
    async fn an_attempt_finding_the_delete_step_claimed_deletes_nothing() -> Result<()> {
        let (_dir, mut spec) = overwrite_in_tempdir()?;
        spec.lock_ttl_ms = 1_000;
        let local: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
        let base = spec.base_path()?;
        let old = base.clone().join("part-old-0.json");
        local.put(&old, "{\"old\":1}\n".into()).await?;
        let batch = stage(&spec, &local, &[Some(1)]).await?;
        // Another attempt claimed the delete step, then vanished.
        local
            .put(
                &spec.staging_prefix()?.join("decision.json"),
                "{\"decision\":\"Forward\",\"attempt\":\"other\"}".into(),
            )
            .await?;
        let err = commit(&spec, Arc::clone(&local), 1, &[batch])
            .await
            .err()
            .map(|e| crate::error::render(&e))
            .unwrap_or_default();
        assert!(
            err.contains("another attempt of this commit started deleting"),
            "{err}"
        );
        assert!(
            local.head(&old).await.is_ok(),
            "an earlier file was deleted"
        );
        Ok(())
    }

    #[tokio::test]
    async fn the_cleanup_of_a_commit_cut_off_mid_publish_restores_the_earlier_output() -> Result<()>
    {
        let (_dir, spec) = overwrite_in_tempdir()?;
        let local: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
        let base = spec.base_path()?;
        let old = base.clone().join("part-old-0.json");
        local.put(&old, "{\"old\":1}\n".into()).await?;
        let success = base.clone().join(SUCCESS_FILE);
        local.put(&success, "{\"old\":true}".into()).await?;
        let batch = stage(&spec, &local, &[Some(1), Some(2), Some(3)]).await?;
        // Cut off (a cancelled task) after publishing one file.
        assert!(
            cut_off(&spec, &local, &batch, 3, 1).await,
            "the commit should have stalled"
        );
        assert_eq!(data_files(&local, &base).await?.len(), 2);
        // The client's cleanup of the failed job takes the write back.
        crate::sink::files::abandon(&spec, &local).await?;
        assert_eq!(data_files(&local, &base).await?, vec![old.to_string()]);
        let manifest = local.get(&success).await?.bytes().await?;
        assert_eq!(&manifest[..], b"{\"old\":true}");
        Ok(())
    }
}
