//! `sluice stream status CHECKPOINT`: what a stream's checkpoint says about
//! it, read without claiming it: who runs it, the batch it would run next,
//! and its last batches' reports.

use serde::Serialize;

use super::checkpoint::Checkpoint;
use super::error::StreamError;
use super::info::BatchInfo;
use crate::sink::files::lock::{Holder, LockState};
use crate::storage::s3::SluiceObjectStores;

#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub checkpoint: String,
    pub stream_id: Option<String>,
    pub job: Option<String>,
    /// The live process running the stream, if any.
    pub running: Option<Holder>,
    /// A batch planned and not committed (it runs again on the next start).
    pub pending_batch: Option<u64>,
    pub next_batch: u64,
    pub batches: Vec<BatchInfo>,
}

pub async fn status(checkpoint: &str, last: usize) -> Result<StreamStatus, StreamError> {
    use datafusion::execution::object_store::ObjectStoreRegistry;
    let url = crate::sink::files::normalize_output_url(checkpoint)?;
    let store = SluiceObjectStores::default()
        .get_store(&url)
        .map_err(|e| StreamError::Setting(format!("checkpoint {url}: {e}")))?;
    let c = Checkpoint::new(store, &url)?;
    let meta = c.existing_metadata().await?;
    let Some(meta) = meta else {
        return Err(StreamError::Setting(format!(
            "{url} is not a stream checkpoint (no metadata.json)"
        )));
    };
    let running = match c.lock(crate::clock::system()).state().await? {
        LockState::Held(g) => Some(g.holder),
        LockState::Free { .. } => None,
    };
    let recovered = c.recover().await?;
    Ok(StreamStatus {
        checkpoint: url.to_string(),
        stream_id: Some(meta.id),
        job: Some(meta.job),
        running,
        pending_batch: recovered.pending.map(|p| p.batch_id),
        next_batch: recovered.next_batch,
        batches: c.recent(last).await?,
    })
}
