//! The rename-free S3 committer's moving parts.
//!
//! A write task streams its file straight to the final key as a multipart
//! upload and never completes it: its output row carries the pending upload
//! (key, upload id, part ids). Nothing is visible until the commit step
//! completes the uploads the commit received, one per writer partition.
//!
//! Every upload is also recorded, right after it is created, as a small marker
//! object under the write's staging prefix. An upload whose task died with its
//! executor is known only from its marker: the commit aborts every recorded
//! upload it did not complete, and a failed or cancelled job aborts them all,
//! so no upload outlives its job (`object_store` cannot list uploads).

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock, Mutex};

use bytes::{Bytes, BytesMut};
use datafusion::common::{DataFusionError, Result};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::errors::ParquetError;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::Instrument;
use url::Url;

use super::spec::WriteSpec;
use crate::error::SluiceError;
use crate::session::build_s3;

/// S3's minimum for every part but the last.
pub const PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts in flight per file while encoding continues: bounds memory to
/// about `(MAX_IN_FLIGHT + 1) * PART_SIZE` per writer.
const MAX_IN_FLIGHT: usize = 2;
/// Uploads the commit completes (or aborts) at once.
pub const COMPLETE_CONCURRENCY: usize = 32;

static S3_STORES: LazyLock<Mutex<std::collections::HashMap<String, Arc<AmazonS3>>>> =
    LazyLock::new(Default::default);

/// The concrete S3 store for a bucket (the object store registry only hands
/// out `dyn ObjectStore`, which has no multipart API). Built once per bucket
/// per process from the standard AWS environment.
pub fn s3_store(url: &Url) -> Result<Arc<AmazonS3>> {
    let bucket = url.host_str().unwrap_or_default().to_string();
    let mut stores = S3_STORES
        .lock()
        .map_err(|_| DataFusionError::Internal("S3 store cache poisoned".into()))?;
    if let Some(store) = stores.get(&bucket) {
        return Ok(Arc::clone(store));
    }
    let store = Arc::new(build_s3(url)?);
    stores.insert(bucket, Arc::clone(&store));
    Ok(store)
}

/// Whether writes to `url` go through multipart uploads.
pub fn is_multipart(url: &Url) -> bool {
    matches!(url.scheme(), "s3" | "s3a")
}

/// A started, not yet completed, upload: what the commit needs to finish it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    #[serde(default)]
    pub parts: Vec<String>,
}

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
    known: &std::collections::HashSet<String>,
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

/// The stem a writer named an upload's key and marker after
/// (`part-<stem>-<write id>.<ext>` → `<stem>`).
pub fn stem_of_key(key: &str) -> Option<String> {
    let name = key.rsplit('/').next()?;
    let rest = name.strip_prefix("part-")?;
    let (stem, _) = rest.rsplit_once('-')?;
    Some(stem.to_string())
}

/// Open multipart uploads whose key starts with `prefix`
/// (`ListMultipartUploads`, signed with the store's own credentials:
/// `object_store` has no call for it). The backstop for uploads created
/// but never recorded, when their task died between the two.
pub async fn list_open_uploads(url: &Url, prefix: &str) -> Result<Vec<PendingUpload>> {
    let s3 = s3_store(url)?;
    let bucket = url.host_str().unwrap_or_default();
    let region = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|_| "us-east-1".to_string());
    let base =
        match std::env::var("AWS_ENDPOINT_URL_S3").or_else(|_| std::env::var("AWS_ENDPOINT_URL")) {
            Ok(endpoint) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            Err(_) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        };
    let credential = s3.credentials().get_credential().await?;
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let mut out = vec![];
    let mut markers: Option<(String, String)> = None;
    loop {
        let target = format!(
            "{base}/?uploads&{}",
            uploads_query(prefix, markers.as_ref())
        );
        let mut request = http::Request::builder()
            .method(http::Method::GET)
            .uri(&target)
            .body(object_store::client::HttpRequestBody::empty())
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        object_store::aws::AwsAuthorizer::new(&credential, "s3", &region)
            .authorize(&mut request, None);
        let mut send = client.get(&target);
        for (name, value) in request.headers() {
            send = send.header(name.as_str(), value.as_bytes());
        }
        let response = send
            .send()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        if !status.is_success() {
            return Err(DataFusionError::Execution(format!(
                "listing multipart uploads under {prefix}: HTTP {status}: {body}"
            )));
        }
        for upload in xml_values(&body, "Upload") {
            if let (Some(key), Some(upload_id)) = (
                xml_values(&upload, "Key").pop(),
                xml_values(&upload, "UploadId").pop(),
            ) {
                out.push(PendingUpload {
                    key,
                    upload_id,
                    parts: vec![],
                });
            }
        }
        let truncated = xml_values(&body, "IsTruncated")
            .pop()
            .is_some_and(|v| v == "true");
        let next = (
            xml_values(&body, "NextKeyMarker").pop(),
            xml_values(&body, "NextUploadIdMarker").pop(),
        );
        match next {
            (Some(k), Some(i)) if truncated => markers = Some((k, i)),
            _ => break,
        }
    }
    Ok(out)
}

fn uploads_query(prefix: &str, markers: Option<&(String, String)>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some((key, id)) = markers {
        query.append_pair("key-marker", key);
        query.append_pair("upload-id-marker", id);
    }
    query.append_pair("prefix", prefix);
    query.finish()
}

fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(open.as_str())
        .skip(1)
        .filter_map(|rest| rest.split_once(close.as_str()).map(|(v, _)| v.to_string()))
        .collect()
}

/// Aborts uploads; an upload already gone (completed or aborted) is fine.
pub async fn abort_uploads(
    s3: &Arc<AmazonS3>,
    uploads: impl IntoIterator<Item = PendingUpload>,
) -> Result<usize> {
    let aborted = futures::stream::iter(uploads.into_iter().map(|u| {
        let s3 = Arc::clone(s3);
        async move {
            let key = Path::from(u.key.as_str());
            let span = tracing::debug_span!("s3.abort_multipart", key = %key);
            match s3
                .abort_multipart(&key, &u.upload_id)
                .instrument(span)
                .await
            {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }))
    .buffer_unordered(COMPLETE_CONCURRENCY)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(aborted.len())
}

/// Completes one upload. A completion retried after it already went through
/// finds no upload; the object at the key with the expected size is success.
pub async fn complete_upload(
    s3: &Arc<AmazonS3>,
    upload: &PendingUpload,
    expected_bytes: u64,
) -> Result<(), object_store::Error> {
    let key = Path::from(upload.key.as_str());
    let parts = upload
        .parts
        .iter()
        .map(|p| PartId {
            content_id: p.clone(),
        })
        .collect();
    let span =
        tracing::debug_span!("s3.complete_multipart", key = %key, parts = upload.parts.len());
    match s3
        .complete_multipart(&key, &upload.upload_id, parts)
        .instrument(span)
        .await
    {
        Ok(_) => Ok(()),
        Err(err) => match s3.head(&key).await {
            Ok(meta) if meta.size == expected_bytes => Ok(()),
            _ => Err(err),
        },
    }
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
    if let Err(e) = store
        .put(&marker_path(spec, &key_stem, task)?, body.into())
        .await
    {
        // Unrecorded, it could never be cleaned up: abort it now.
        let _ = s3.abort_multipart(key, &upload_id).await;
        return Err(e.into());
    }
    Ok(upload_id)
}

/// An `AsyncFileWriter` that sends each full part while encoding goes on and,
/// at `complete`, sends the last part but leaves the upload open.
pub struct MultipartFileWriter {
    s3: Arc<AmazonS3>,
    key: Path,
    upload_id: String,
    buffer: BytesMut,
    in_flight: VecDeque<JoinHandle<Result<PartId, object_store::Error>>>,
    parts: Vec<String>,
    next_part: usize,
    bytes: u64,
}

impl MultipartFileWriter {
    pub fn new(s3: Arc<AmazonS3>, key: Path, upload_id: String) -> Self {
        Self {
            s3,
            key,
            upload_id,
            buffer: BytesMut::new(),
            in_flight: VecDeque::new(),
            parts: vec![],
            next_part: 0,
            bytes: 0,
        }
    }

    /// The upload after `complete`: key, id and part ids in order.
    pub fn pending(&self) -> PendingUpload {
        PendingUpload {
            key: self.key.to_string(),
            upload_id: self.upload_id.clone(),
            parts: self.parts.clone(),
        }
    }

    /// Bytes held in memory: the unsent buffer and parts in flight.
    pub fn buffered(&self) -> usize {
        self.buffer.len() + self.in_flight.len() * PART_SIZE
    }

    fn send(&mut self, data: Bytes) {
        let s3 = Arc::clone(&self.s3);
        let key = self.key.clone();
        let id = self.upload_id.clone();
        let idx = self.next_part;
        self.next_part += 1;
        self.in_flight.push_back(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let span =
                tracing::debug_span!("s3.put_part", key = %key, part = idx, bytes = data.len());
            let part = s3
                .put_part(&key, &id, idx, PutPayload::from(data))
                .instrument(span)
                .await;
            if part.is_ok() {
                crate::metrics::part_uploaded(started.elapsed());
            }
            part
        }));
    }

    async fn finish_oldest(&mut self) -> Result<(), ParquetError> {
        if let Some(handle) = self.in_flight.pop_front() {
            let part = handle
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))?
                .map_err(|e| ParquetError::External(Box::new(e)))?;
            self.parts.push(part.content_id);
        }
        Ok(())
    }
}

impl Drop for MultipartFileWriter {
    fn drop(&mut self) {
        // A failed or cancelled task must not leave parts uploading.
        for handle in &self.in_flight {
            handle.abort();
        }
    }
}

impl AsyncFileWriter for MultipartFileWriter {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, Result<(), ParquetError>> {
        async move {
            self.bytes += bs.len() as u64;
            self.buffer.extend_from_slice(&bs);
            while self.buffer.len() >= PART_SIZE {
                let part = self.buffer.split_to(PART_SIZE).freeze();
                self.send(part);
                while self.in_flight.len() > MAX_IN_FLIGHT {
                    self.finish_oldest().await?;
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn complete(&mut self) -> BoxFuture<'_, Result<(), ParquetError>> {
        async move {
            // S3 needs at least one part, and the last may be short.
            if !self.buffer.is_empty() || self.next_part == 0 {
                let rest = self.buffer.split().freeze();
                self.send(rest);
            }
            while !self.in_flight.is_empty() {
                self.finish_oldest().await?;
            }
            Ok(())
        }
        .boxed()
    }
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
