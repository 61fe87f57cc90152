//! The test S3 server (moto, started by `scripts/test-servers.sh`) seen from
//! outside sluice: plain HTTP on loopback, so what the tests check does not
//! go through the code under test. moto does not check signatures.

use std::time::Duration;

use anyhow::{Context, Result, bail};

/// One test S3 server.
pub struct S3 {
    pub endpoint: String,
}

/// A listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
}

fn tag_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(v, _)| v.to_string()))
        .collect()
}

impl S3 {
    /// The server the test script started (`AWS_ENDPOINT_URL_S3`).
    pub fn from_env() -> Result<Self> {
        let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
            .context("AWS_ENDPOINT_URL_S3 is not set: run the tests through scripts/test.sh")?;
        Ok(Self { endpoint })
    }

    fn request(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
    ) -> Result<(reqwest::StatusCode, Vec<u8>)> {
        let url = format!("{}/{}", self.endpoint.trim_end_matches('/'), path_and_query);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?;
            let resp = client.request(method, &url).send().await?;
            let status = resp.status();
            Ok((status, resp.bytes().await?.to_vec()))
        })
    }

    /// Writes one object (as a producer would: one PUT, whole).
    pub fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<()> {
        // Each part of the key escaped (`#`, `?`, `%` are names here).
        let mut url = reqwest::Url::parse(&self.endpoint)?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("{}: not a base URL", self.endpoint))?
            .pop_if_empty()
            .push(bucket)
            .extend(key.split('/'));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let status = rt.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?;
            anyhow::Ok(client.put(url.clone()).body(body).send().await?.status())
        })?;
        if !status.is_success() {
            bail!("PUT {url}: {status}");
        }
        Ok(())
    }

    /// Creates a bucket with a unique name and returns it.
    pub fn new_bucket(&self, hint: &str) -> Result<String> {
        let name = format!(
            "{hint}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        );
        let (status, body) = self.request(reqwest::Method::PUT, &name)?;
        if !status.is_success() {
            bail!(
                "creating bucket {name}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(name)
    }

    /// Every object under `prefix`, sorted by key.
    pub fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<Object>> {
        let mut out = vec![];
        let mut token: Option<String> = None;
        loop {
            let mut q = format!("{bucket}?list-type=2&prefix={prefix}");
            if let Some(t) = &token {
                q.push_str(&format!("&continuation-token={t}"));
            }
            let (status, body) = self.request(reqwest::Method::GET, &q)?;
            let xml = String::from_utf8_lossy(&body).to_string();
            if !status.is_success() {
                bail!("listing {bucket}/{prefix}: {status} {xml}");
            }
            for contents in tag_values(&xml, "Contents") {
                let key = tag_values(&contents, "Key").pop().unwrap_or_default();
                let size = tag_values(&contents, "Size")
                    .pop()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                out.push(Object { key, size });
            }
            token = tag_values(&xml, "NextContinuationToken").pop();
            if token.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Keys under `prefix` a reader would treat as data: no path component
    /// after the prefix starts with `_` or `.`.
    pub fn data_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .list(bucket, prefix)?
            .into_iter()
            .map(|o| o.key)
            .filter(|k| {
                k.strip_prefix(prefix)
                    .unwrap_or(k)
                    .split('/')
                    .all(|p| !p.starts_with('_') && !p.starts_with('.'))
            })
            .collect())
    }

    /// The files `<prefix>_SUCCESS` lists, sorted, and its row total.
    pub fn manifest_files(&self, bucket: &str, prefix: &str) -> Result<(Vec<String>, u64)> {
        let m: serde_json::Value =
            serde_json::from_slice(&self.get(bucket, &format!("{prefix}_SUCCESS"))?)?;
        let mut listed: Vec<String> = m["filenames"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.as_str())
                    .map(|f| f.trim_start_matches('/').to_string())
                    .collect()
            })
            .unwrap_or_default();
        listed.sort();
        Ok((listed, m["rows"].as_u64().unwrap_or_default()))
    }

    /// An object's bytes. Signed (through `object_store`): moto refuses
    /// anonymous reads of objects written with a plain PUT.
    pub fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>> {
        use object_store::ObjectStoreExt;
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .build()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let path = object_store::path::Path::from(key);
        rt.block_on(async {
            let body = store
                .get(&path)
                .await
                .with_context(|| format!("GET {bucket}/{key}"))?
                .bytes()
                .await?;
            Ok(body.to_vec())
        })
    }

    /// Copies every object under `prefix` to `dir` (keys become paths
    /// below it), for readers that take a local directory.
    pub fn download(&self, bucket: &str, prefix: &str, dir: &std::path::Path) -> Result<usize> {
        let objects = self.list(bucket, prefix)?;
        for o in &objects {
            let rel = o.key.strip_prefix(prefix).unwrap_or(&o.key);
            let path = dir.join(rel.trim_start_matches('/'));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, self.get(bucket, &o.key)?)?;
        }
        Ok(objects.len())
    }

    /// Multipart uploads still open under `prefix` (ListMultipartUploads).
    pub fn open_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let (status, body) = self.request(
            reqwest::Method::GET,
            &format!("{bucket}?uploads&prefix={prefix}"),
        )?;
        let xml = String::from_utf8_lossy(&body).to_string();
        if !status.is_success() {
            bail!("listing uploads in {bucket}: {status} {xml}");
        }
        Ok(tag_values(&xml, "Upload")
            .into_iter()
            .filter_map(|u| tag_values(&u, "Key").pop())
            .collect())
    }
}
