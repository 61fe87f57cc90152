//! Upload markers: every multipart upload a writer starts is recorded, right
//! after it is created and before any byte is sent, as a small object under
//! the write's staging prefix. An upload whose task died with its executor is
//! known only from its marker: the commit aborts every recorded upload it did
//! not complete, and a failed or cancelled job aborts them all, so no upload
//! outlives its job (`object_store` cannot list uploads).

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tracing::Instrument;

use super::spec::WriteSpec;
use crate::error::SluiceError;
use crate::storage::multipart::{COMPLETE_CONCURRENCY, PendingUpload};

/// Where the marker of an upload lives: named by the key's stem and the
/// attempt (`task`), since attempts of one partition upload to the same key.
pub fn marker_path(spec: &WriteSpec, key_stem: &str, task: &str) -> Result<Path, SluiceError> {
    Ok(spec
        .uploads_prefix()?
        .join(format!("{}.json", marker_name(key_stem, task))))
}

/// A marker's name without `.json`; what [`recorded_uploads`]' `known` holds.
pub fn marker_name(key_stem: &str, task: &str) -> String {
    format!("{key_stem}.{task}")
}

/// The uploads recorded for this write, except those whose marker is named
/// by a stem in `known` (uploads the caller already has): reading a marker is
/// a request, and after a clean run every marker is known.
pub async fn recorded_uploads(
    store: &Arc<dyn ObjectStore>,
    spec: &WriteSpec,
    known: &HashSet<String>,
) -> Result<Vec<(Path, PendingUpload)>> {
    let prefix = spec.uploads_prefix()?;
    let markers: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    let unknown = markers.into_iter().filter(|m| {
        m.location
            .filename()
            .and_then(|f| f.strip_suffix(".json"))
            .is_none_or(|stem| !known.contains(stem))
    });
    futures::stream::iter(unknown.map(|meta| {
        let store = Arc::clone(store);
        async move {
            let body = store.get(&meta.location).await?.bytes().await?;
            let upload: PendingUpload = serde_json::from_slice(&body).map_err(|e| {
                DataFusionError::External(Box::new(SluiceError::Write {
                    path: meta.location.to_string(),
                    reason: format!("unreadable upload marker: {e}"),
                }))
            })?;
            Ok::<_, DataFusionError>((meta.location, upload))
        }
    }))
    .buffer_unordered(COMPLETE_CONCURRENCY)
    .try_collect()
    .await
}

/// Starts an upload for `key` and records it, as `task`'s, before any byte
/// is sent.
pub async fn start_upload(
    s3: &Arc<AmazonS3>,
    store: &Arc<dyn ObjectStore>,
    spec: &WriteSpec,
    task: &str,
    key: &Path,
) -> Result<String> {
    let key_stem = stem_of_key(key.as_ref()).ok_or_else(|| {
        DataFusionError::Internal(format!("{key} is not named like a written file"))
    })?;
    let upload_id = s3
        .create_multipart(key)
        .instrument(tracing::debug_span!("s3.create_multipart", key = %key))
        .await?;
    let marker = PendingUpload {
        key: key.to_string(),
        upload_id: upload_id.clone(),
        parts: vec![],
    };
    let body = serde_json::to_vec(&marker).map_err(|e| DataFusionError::External(Box::new(e)))?;
    let marker = marker_path(spec, &key_stem, task)?;
    if let Err(e) = store.put(&marker, body.into()).await {
        // Unrecorded, it could never be cleaned up: abort it now.
        let _ = s3.abort_multipart(key, &upload_id).await;
        return Err(e.into());
    }
    // Checked after the upload exists: if the write had already ended, its
    // client's cleanup may have swept before this upload began, so it is
    // this task's to abort. If the lock was still held, the upload began
    // before the write ended and the client's sweep after the end finds it.
    if let Err(e) = spec.check_lock_present(store).await {
        let _ = s3.abort_multipart(key, &upload_id).await;
        let _ = store.delete(&marker).await;
        return Err(e.into());
    }
    Ok(upload_id)
}

/// The stem a writer named an upload's key and marker after
/// (`part-<stem>-<write id>.<ext>` → `<stem>`).
pub fn stem_of_key(key: &str) -> Option<String> {
    let name = key.rsplit('/').next()?;
    let rest = name.strip_prefix("part-")?;
    let (stem, _) = rest.rsplit_once('-')?;
    Some(stem.to_string())
}

#[cfg(test)]
mod tests {
    use super::stem_of_key;

    #[test]
    fn keys_name_their_stem() {
        assert_eq!(
            stem_of_key("out/k=1/part-s001.0-t000002.0-p0003-f0004-0123456789ab.parquet")
                .as_deref(),
            Some("s001.0-t000002.0-p0003-f0004")
        );
        assert_eq!(
            stem_of_key("out/part-p00042-f0001-0123456789ab.parquet").as_deref(),
            Some("p00042-f0001")
        );
        assert_eq!(stem_of_key("out/_SUCCESS"), None);
    }
}
