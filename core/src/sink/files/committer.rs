//! The commit algorithm: take every writer partition's report, make each
//! reported file visible (complete its upload, or rename it into place),
//! abort the uploads of attempts whose output was not taken, write the
//! manifest, and for an overwrite remove what earlier runs left, only after
//! the new files are in place.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use datafusion::common::{DataFusionError, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

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
        staged.push(Staged {
            task,
            dir: r.dir,
            staging_path: r.path,
            rows: r.rows,
            bytes: r.bytes,
            upload,
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

pub async fn commit(
    spec: &WriteSpec,
    store: Arc<dyn ObjectStore>,
    expected: usize,
    batches: &[RecordBatch],
) -> Result<CommitSummary> {
    let started = Instant::now();
    let fail = |reason: String| spec.commit_failed(reason);
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
    store
        .put(&base.clone().join(SUCCESS_FILE), body.into())
        .await
        .map_err(|e| spec.store_failed(format!("writing {SUCCESS_FILE}"), e))?;

    for old in previous.iter().filter(|p| !ours.contains(p.as_ref())) {
        store
            .delete(old)
            .await
            .map_err(|e| spec.store_failed(format!("removing earlier output {old}"), e))?;
    }
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
