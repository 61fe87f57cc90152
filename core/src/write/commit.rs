//! `CommitExec`: the single task after the write stage. It checks that every
//! input partition reported exactly one staged file, moves the staged files to
//! their final names, writes the `_SUCCESS` manifest, and for an overwrite
//! removes what earlier runs left, only after the new files are in place.
//! Until it runs nothing of the write is visible in the output directory.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::UInt64Type;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use object_store::aws::AmazonS3;

use super::logical::write_result_schema;
use super::multipart::{
    PendingUpload, abort_uploads, complete_upload, is_multipart, list_open_uploads, marker_name,
    recorded_uploads, s3_store, stem_of_key,
};
use super::spec::{Committer, STAGING_DIR, SUCCESS_FILE, WriteSpec};
use crate::error::SluiceError;

/// How many files the commit moves at once.
const COMMIT_CONCURRENCY: usize = 32;

#[derive(Debug)]
pub struct CommitExec {
    input: Arc<dyn ExecutionPlan>,
    spec: WriteSpec,
    properties: Arc<PlanProperties>,
}

impl CommitExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, spec: WriteSpec) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(write_result_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            spec,
            properties: Arc::new(properties),
        }
    }

    pub fn spec(&self) -> &WriteSpec {
        &self.spec
    }

    /// How many writer partitions must report: the input under the
    /// coalesce that gathers them (a shuffle reader once Ballista cut the
    /// stage), which is never narrowed to a task's slice.
    fn writer_partitions(&self) -> usize {
        match self.input.downcast_ref::<CoalescePartitionsExec>() {
            Some(coalesce) => coalesce.input().output_partitioning().partition_count(),
            None => self.input.output_partitioning().partition_count(),
        }
    }
}

impl DisplayAs for CommitExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SluiceCommitExec: url={}, overwrite={}, write_id={}",
            self.spec.url, self.spec.overwrite, self.spec.write_id
        )
    }
}

impl ExecutionPlan for CommitExec {
    crate::write::single_input_plan!("SluiceCommitExec");

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        crate::write::only_partition_zero("SluiceCommitExec", partition)?;
        let expected = self.writer_partitions();
        let input = self.input.execute(0, Arc::clone(&context))?;
        let spec = self.spec.clone();
        let span = tracing::info_span!("sluice.commit", write_id = %spec.write_id, url = %spec.url);
        let fut = async move {
            let staged: Vec<RecordBatch> = input.try_collect().await?;
            let store = context
                .runtime_env()
                .object_store_registry
                .get_store(&spec.output_url()?)?;
            let summary = commit(&spec, store, expected, &staged).await?;
            summary.to_batch(&spec)
        }
        .instrument(span);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            write_result_schema(),
            futures::stream::once(fut),
        )))
    }
}

/// One committed file, as the manifest lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommittedFile {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// The writer partition (task attempt and partition) that wrote it.
    #[serde(default)]
    pub writer: String,
}

/// The `_SUCCESS` manifest: Hadoop S3A's SuccessData fields plus per-file
/// rows and bytes, so readers and tests can check what a write committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SuccessData {
    pub name: String,
    pub timestamp: i64,
    pub date: String,
    pub hostname: String,
    pub committer: String,
    pub description: String,
    pub job_id: String,
    pub job_id_source: String,
    pub filenames: Vec<String>,
    pub files: Vec<CommittedFile>,
    pub rows: u64,
    pub bytes: u64,
    pub diagnostics: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct CommitSummary {
    pub files: Vec<CommittedFile>,
    pub rows: u64,
    pub bytes: u64,
    pub commit_ms: u64,
}

impl CommitSummary {
    fn to_batch(&self, spec: &WriteSpec) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            write_result_schema(),
            vec![
                Arc::new(UInt64Array::from(vec![self.rows])),
                Arc::new(UInt64Array::from(vec![self.files.len() as u64])),
                Arc::new(UInt64Array::from(vec![self.bytes])),
                Arc::new(StringArray::from(vec![spec.write_id.clone()])),
                Arc::new(StringArray::from(vec![spec.url.clone()])),
                Arc::new(UInt64Array::from(vec![self.commit_ms])),
            ],
        )?)
    }
}

struct Staged {
    task: String,
    dir: String,
    staging_path: String,
    rows: u64,
    bytes: u64,
    upload: Option<PendingUpload>,
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
    let fail = |reason: String| SluiceError::Commit {
        write_id: spec.write_id.clone(),
        url: spec.url.clone(),
        reason,
    };
    let mut staged: Vec<Staged> = Vec::new();
    let mut reported: HashSet<String> = HashSet::new();
    for batch in batches {
        let col = |i: usize| batch.column(i);
        let tasks = col(0).as_string::<i32>();
        let dirs = col(1).as_string::<i32>();
        let paths = col(2).as_string::<i32>();
        let rows = col(3).as_primitive::<UInt64Type>();
        let bytes = col(4).as_primitive::<UInt64Type>();
        let upload_ids = col(5).as_string::<i32>();
        let parts = col(6).as_string::<i32>();
        for i in 0..batch.num_rows() {
            reported.insert(tasks.value(i).to_string());
            if paths.value(i).is_empty() {
                // A partitioned writer whose input was empty: no file.
                continue;
            }
            let upload = if upload_ids.is_valid(i) {
                let part_ids: Vec<String> = serde_json::from_str(parts.value(i))
                    .map_err(|e| fail(format!("unreadable part list: {e}")))?;
                Some(PendingUpload {
                    key: paths.value(i).to_string(),
                    upload_id: upload_ids.value(i).to_string(),
                    parts: part_ids,
                })
            } else {
                None
            };
            staged.push(Staged {
                task: tasks.value(i).to_string(),
                dir: dirs.value(i).to_string(),
                staging_path: paths.value(i).to_string(),
                rows: rows.value(i),
                bytes: bytes.value(i),
                upload,
            });
        }
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

pub async fn commit(
    spec: &WriteSpec,
    store: Arc<dyn ObjectStore>,
    expected: usize,
    batches: &[RecordBatch],
) -> Result<CommitSummary> {
    let started = Instant::now();
    let fail = |reason: String| SluiceError::Commit {
        write_id: spec.write_id.clone(),
        url: spec.url.clone(),
        reason,
    };
    let staged = collect_staged(spec, expected, batches)?;
    let base = spec.base_path()?;

    // Files of earlier runs, listed before ours land so they cannot be confused.
    let previous: Vec<Path> = if spec.overwrite {
        list_data_files(&store, &base).await?
    } else {
        vec![]
    };

    let multipart = spec.uses_multipart()?;
    let s3 = if multipart {
        Some(s3_store(&spec.output_url()?)?)
    } else {
        None
    };
    let mut publishes = Vec::with_capacity(staged.len());
    for (index, s) in staged.iter().enumerate() {
        publishes.push(publish(
            Arc::clone(&store),
            s3.clone(),
            s,
            spec.final_path(&s.dir, index)?,
            spec.committer == Committer::RenameV2,
        ));
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
        // Take back what did land so the failed write leaves nothing visible.
        for f in &files {
            let _ = store.delete(&Path::from(f.path.as_str())).await;
        }
        if let Some(s3) = &s3 {
            let _ = abort_recorded(spec, &store, s3, &HashSet::new(), &HashSet::new()).await;
        }
        return Err(fail(format!(
            "{} of {} files failed to commit: {}",
            failures.len(),
            staged.len(),
            failures.join("; ")
        ))
        .into());
    }
    // Uploads of attempts whose output the commit did not receive (lost
    // executors, retried tasks) are recorded but never completed: abort them.
    let aborted = match &s3 {
        Some(s3) => {
            let completed: HashSet<String> = staged
                .iter()
                .filter_map(|s| s.upload.as_ref().map(|u| u.upload_id.clone()))
                .collect();
            let known: HashSet<String> = staged
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

    let rows = files.iter().map(|f| f.rows).sum();
    let bytes = files.iter().map(|f| f.bytes).sum();
    let ours: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let mut diagnostics = BTreeMap::new();
    diagnostics.insert("format".to_string(), format!("{:?}", spec.format));
    diagnostics.insert("overwrite".to_string(), spec.overwrite.to_string());
    diagnostics.insert("aborted_uploads".to_string(), aborted.to_string());
    diagnostics.insert("publish_ms".to_string(), publish_ms.to_string());
    diagnostics.insert(
        "commit_ms".to_string(),
        started.elapsed().as_millis().to_string(),
    );
    let now = chrono::Utc::now();
    let manifest = SuccessData {
        name: "org.apache.hadoop.fs.s3a.commit.files.SuccessData/1".to_string(),
        timestamp: now.timestamp_millis(),
        date: now.to_rfc3339(),
        hostname: hostname(),
        committer: match spec.committer {
            Committer::Auto if multipart => "sluice-multipart",
            Committer::Auto => "sluice-staging",
            Committer::RenameV1 => "rename-v1",
            Committer::RenameV2 => "rename-v2",
        }
        .to_string(),
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
    store
        .put(&base.clone().join(SUCCESS_FILE), body.into())
        .await
        .map_err(|e| fail(format!("writing {SUCCESS_FILE}: {e}")))?;

    for old in previous.iter().filter(|p| !ours.contains(p.as_ref())) {
        store
            .delete(old)
            .await
            .map_err(|e| fail(format!("removing earlier output {old}: {e}")))?;
    }
    let before_cleanup = started.elapsed().as_millis();
    remove_staging(spec, &store).await?;
    crate::metrics::committed(spec, files.len(), rows, aborted, started.elapsed());
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

/// Makes one file visible: completes its upload, or renames the staged file.
async fn publish(
    store: Arc<dyn ObjectStore>,
    s3: Option<Arc<AmazonS3>>,
    staged: &Staged,
    local_target: Path,
    already_in_place: bool,
) -> Result<CommittedFile, (String, object_store::Error)> {
    let path = match (&staged.upload, s3) {
        (None, _) if already_in_place => staged.staging_path.clone(),
        (Some(upload), Some(s3)) => {
            complete_upload(&s3, upload, staged.bytes)
                .await
                .map_err(|e| (upload.key.clone(), e))?;
            upload.key.clone()
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
            store
                .rename(&Path::from(staged.staging_path.as_str()), &local_target)
                .await
                .map_err(|e| (staged.staging_path.clone(), e))?;
            local_target.to_string()
        }
    };
    Ok(CommittedFile {
        path,
        rows: staged.rows,
        bytes: staged.bytes,
        writer: staged.task.clone(),
    })
}

/// Aborts every recorded upload of this write not in `keep`; returns how many.
/// `known`: stems of uploads the caller completed (their markers need not
/// be read).
async fn abort_recorded(
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
    let short = spec.write_id.get(..12).unwrap_or(&spec.write_id);
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

/// After a failed or cancelled job: aborts all of the write's uploads and
/// removes its staging. Nothing of the write was visible, and nothing stays.
pub async fn abandon(spec: &WriteSpec, store: &Arc<dyn ObjectStore>) -> Result<usize> {
    let url = spec.output_url()?;
    let aborted = if is_multipart(&url) {
        // Also for the rename committers: a marker-free prefix lists nothing.
        let s3 = s3_store(&url)?;
        abort_recorded(spec, store, &s3, &HashSet::new(), &HashSet::new()).await?
    } else {
        0
    };
    remove_staging(spec, store).await?;
    Ok(aborted)
}

/// What `clean_abandoned` did for one write.
#[derive(Debug, Clone, Serialize)]
pub struct CleanedWrite {
    pub write_id: String,
    pub aborted_uploads: usize,
    pub removed_objects: usize,
}

/// Aborts the recorded uploads and removes the staging of every write to
/// `output` whose newest staged object is older than `older_than`: writes
/// whose client died before its own cleanup. Committed output is untouched.
pub async fn clean_abandoned(
    output: &str,
    older_than: std::time::Duration,
) -> Result<Vec<CleanedWrite>> {
    let template = WriteSpec::new(output, super::WriteFormat::Parquet, false, BTreeMap::new())?;
    let store = crate::session::runtime_env()?
        .object_store_registry
        .get_store(&template.output_url()?)?;
    let staging = template.base_path()?.join(STAGING_DIR);
    let listed = store.list_with_delimiter(Some(&staging)).await?;
    let now = chrono::Utc::now();
    let mut cleaned = vec![];
    for prefix in listed.common_prefixes {
        let Some(write_id) = prefix.filename().map(str::to_string) else {
            continue;
        };
        let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
        let newest = objects.iter().map(|o| o.last_modified).max();
        if newest
            .is_some_and(|t| now.signed_duration_since(t).to_std().unwrap_or_default() < older_than)
        {
            continue;
        }
        let spec = WriteSpec {
            write_id: write_id.clone(),
            ..template.clone()
        };
        let aborted_uploads = abandon(&spec, &store).await?;
        tracing::info!(%write_id, aborted_uploads, "cleaned abandoned write");
        cleaned.push(CleanedWrite {
            write_id,
            aborted_uploads,
            removed_objects: objects.len(),
        });
    }
    Ok(cleaned)
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

/// Removes the write's staging prefix. Local directories are removed with
/// the filesystem so half-written temporary files (which `object_store`'s
/// local listing hides) go too.
pub async fn remove_staging(
    spec: &WriteSpec,
    store: &Arc<dyn ObjectStore>,
) -> Result<(), SluiceError> {
    let url = spec.output_url()?;
    let fail = |reason: String| SluiceError::Commit {
        write_id: spec.write_id.clone(),
        url: spec.url.clone(),
        reason,
    };
    if url.scheme() == "file" {
        let dir = url
            .to_file_path()
            .map_err(|_| fail("not a local path".into()))?
            .join(STAGING_DIR);
        let ours = dir.join(&spec.write_id);
        match tokio::fs::remove_dir_all(&ours).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(format!("removing {}: {e}", ours.display()))),
        }
        // Only succeeds when no other write is staging here.
        let _ = tokio::fs::remove_dir(&dir).await;
        return Ok(());
    }
    let prefix = spec.staging_prefix()?;
    let paths = store.list(Some(&prefix)).map_ok(|m| m.location).boxed();
    store
        .delete_stream(paths)
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| fail(format!("removing staging files: {e}")))?;
    Ok(())
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
