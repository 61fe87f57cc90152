//! Cleanup of writes that will never commit: a failed or cancelled job's
//! uploads and staging ([`abandon`]), and `sluice clean`'s sweep of writes
//! whose client died ([`clean_abandoned`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use datafusion::common::Result;
use datafusion::execution::object_store::ObjectStoreRegistry;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use serde::Serialize;

use super::committer::abort_recorded;
use super::lock::LockState;
use super::spec::{STAGING_DIR, WriteFormat, WriteSpec};
use crate::error::SluiceError;
use crate::storage::s3::{SluiceObjectStores, is_s3, s3_store};

/// After a failed or cancelled job: aborts all of the write's uploads and
/// removes its staging. Nothing of the write was visible, and nothing stays.
pub async fn abandon(spec: &WriteSpec, store: &Arc<dyn ObjectStore>) -> Result<usize> {
    let url = spec.output_url()?;
    // A commit cut off after making files visible: settle it first.
    if let Some(done) = super::committer::settle(spec, store).await? {
        tracing::warn!(write_id = %spec.write_id, "{done}");
    }
    let aborted = if is_s3(&url) {
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
/// whose client died before its own cleanup. The write holding the output's
/// lock is live and left alone whatever its age, and so is a stream
/// batch's recorded commit (its stream publishes it, or takes it back);
/// committed output is untouched.
pub async fn clean_abandoned(
    output: &str,
    older_than: std::time::Duration,
) -> Result<Vec<CleanedWrite>> {
    let template = WriteSpec::new(output, WriteFormat::Parquet, false, BTreeMap::new())?;
    let store = SluiceObjectStores::default().get_store(&template.output_url()?)?;
    let staging = template.base_path()?.join(STAGING_DIR);
    let listed = store.list_with_delimiter(Some(&staging)).await?;
    let live = match template
        .lock(Arc::clone(&store), crate::clock::system())?
        .state()
        .await?
    {
        LockState::Held(g) => Some(g.holder),
        LockState::Free { .. } => None,
    };
    let now = chrono::Utc::now();
    let mut cleaned = vec![];
    for prefix in listed.common_prefixes {
        let Some(write_id) = prefix.filename().map(str::to_string) else {
            continue;
        };
        if let Some(holder) = live.as_ref().filter(|h| h.write_id == write_id) {
            tracing::info!(%write_id, %holder, "write is live (it holds the output lock): left alone");
            continue;
        }
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
        if super::committer::deferred_intent(&spec, &store).await? {
            // Its batch may be committed and waiting for its stream to
            // publish it: taking it back would lose the batch.
            tracing::warn!(%write_id, "a stream batch's recorded commit: left to its stream");
            continue;
        }
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

/// Removes the write's staging prefix. Local directories are removed with
/// the filesystem so half-written temporary files (which `object_store`'s
/// local listing hides) go too.
pub async fn remove_staging(
    spec: &WriteSpec,
    store: &Arc<dyn ObjectStore>,
) -> Result<(), SluiceError> {
    let url = spec.output_url()?;
    let fail = |reason: String| spec.commit_failed(reason);
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
        .map_err(|e| spec.store_failed("removing staging files".into(), e))?;
    Ok(())
}
