//! S3 multipart uploads, the calls the rename-free committer is made of:
//! an `AsyncFileWriter` that streams a file as parts and leaves the upload
//! open, completion (idempotent on retry), aborts, and
//! `ListMultipartUploads`, which `object_store` has no call for.
//! Which uploads belong to a write, and when to complete or abort them, is
//! the committer's business (`sink::files`).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use datafusion::common::{DataFusionError, Result};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::errors::ParquetError;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::Instrument;
use url::Url;

use super::s3::{S3Endpoint, s3_store, xml_values};

/// S3's minimum for every part but the last.
pub const PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts in flight per file while encoding continues: bounds memory to
/// about `(MAX_IN_FLIGHT + 1) * PART_SIZE` per writer.
const MAX_IN_FLIGHT: usize = 2;
/// Uploads the commit completes (or aborts) at once.
pub const COMPLETE_CONCURRENCY: usize = 32;

/// A started, not yet completed, upload: what the commit needs to finish it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    #[serde(default)]
    pub parts: Vec<String>,
}

/// Open multipart uploads whose key starts with `prefix`
/// (`ListMultipartUploads`, signed with the store's own credentials:
/// `object_store` has no call for it). The backstop for uploads created
/// but never recorded, when their task died between the two.
pub async fn list_open_uploads(url: &Url, prefix: &str) -> Result<Vec<PendingUpload>> {
    let s3 = s3_store(url)?;
    let bucket = url.host_str().unwrap_or_default();
    let at = S3Endpoint::from_env();
    let region = at.region.clone();
    let base = at.bucket_url(bucket);
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
