//! S3 stores: where an `s3://` URL's bucket is reached (endpoint, region,
//! resolved in one place), the stores built for it (credentials from the
//! standard chain, timeouts, bounded retries), and the object store registry
//! every sluice process installs.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use url::Url;

use super::aws::ChainCredentials;

/// Whether `url` names an S3 location (`s3://` or Hadoop's `s3a://`).
pub fn is_s3(url: &Url) -> bool {
    matches!(url.scheme(), "s3" | "s3a")
}

/// Whether a raw location string names an S3 location.
pub fn is_s3_location(raw: &str) -> bool {
    Url::parse(raw).is_ok_and(|u| is_s3(&u))
}

/// Where S3 requests go, from the standard AWS environment: the endpoint
/// (`AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`) and the region
/// (`AWS_REGION`, then `AWS_DEFAULT_REGION`, else us-east-1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Endpoint {
    pub endpoint: Option<String>,
    pub region: String,
    /// Whether the region came from the environment (else the default).
    pub region_set: bool,
}

impl S3Endpoint {
    pub fn from_env() -> Self {
        let var = |a: &str, b: &str| std::env::var(a).or_else(|_| std::env::var(b)).ok();
        let region = var("AWS_REGION", "AWS_DEFAULT_REGION");
        Self {
            endpoint: var("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            region_set: region.is_some(),
            region: region.unwrap_or_else(|| "us-east-1".to_string()),
        }
    }

    /// The base URL of `bucket` (path-style on a custom endpoint).
    pub fn bucket_url(&self, bucket: &str) -> String {
        match &self.endpoint {
            Some(endpoint) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            None => format!("https://{bucket}.s3.{}.amazonaws.com", self.region),
        }
    }
}

/// Timeouts on every object store request: a hung endpoint must fail a task,
/// not stall it.
pub fn client_options() -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(120))
}

/// An S3 store for `url`'s bucket: endpoint and region from [`S3Endpoint`],
/// credentials from the standard chain ([`ChainCredentials`]: keys, profile,
/// web identity, container or instance role), with request timeouts and
/// bounded retries.
pub fn build_s3(url: &Url) -> Result<AmazonS3> {
    let bucket = url
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| DataFusionError::Configuration(format!("s3 URL without a bucket: {url}")))?;
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_credentials(Arc::new(ChainCredentials::default()))
        .with_client_options(client_options())
        .with_retry(RetryConfig {
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
            ..RetryConfig::default()
        });
    let at = S3Endpoint::from_env();
    if let Some(endpoint) = at.endpoint {
        builder = builder
            .with_allow_http(endpoint.starts_with("http://"))
            .with_endpoint(endpoint)
            .with_virtual_hosted_style_request(false);
    }
    if !at.region_set {
        builder = builder.with_region(at.region);
    }
    Ok(builder.build()?)
}

static S3_STORES: LazyLock<Mutex<HashMap<String, Arc<AmazonS3>>>> = LazyLock::new(Default::default);

/// The concrete S3 store for a bucket (the object store registry only hands
/// out `dyn ObjectStore`, which has no multipart API). Built once per bucket
/// per process.
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

/// Local files through DataFusion's default registry (guarded on servers,
/// see [`super::local`]); `s3://bucket` stores built on first use by
/// [`s3_store`].
#[derive(Debug, Default)]
pub struct SluiceObjectStores {
    inner: DefaultObjectStoreRegistry,
}

impl SluiceObjectStores {
    /// A registry whose local files follow `access`.
    pub fn with_local(access: &super::local::LocalAccess) -> Self {
        let me = Self::default();
        if *access != super::local::LocalAccess::Any
            && let Ok(url) = Url::parse("file:///")
        {
            me.inner.register_store(&url, access.store());
        }
        me
    }
}

impl ObjectStoreRegistry for SluiceObjectStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.inner.get_store(url) {
            return Ok(store);
        }
        if is_s3(url) {
            let store: Arc<dyn ObjectStore> = s3_store(url)?;
            self.inner.register_store(url, Arc::clone(&store));
            return Ok(store);
        }
        Err(DataFusionError::Configuration(format!(
            "no object store for scheme '{}' in {url} (supported: file, s3)",
            url.scheme()
        )))
    }
}

/// The text of one XML element in an S3 answer, every occurrence in order.
pub fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(open.as_str())
        .skip(1)
        .filter_map(|rest| rest.split_once(close.as_str()).map(|(v, _)| v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_values_are_found_in_order() {
        let xml = "<R><Code>NoSuchBucket</Code><Message>gone</Message><Code>x</Code></R>";
        assert_eq!(xml_values(xml, "Code"), vec!["NoSuchBucket", "x"]);
        assert!(xml_values(xml, "Missing").is_empty());
    }

    #[test]
    fn s3_and_s3a_are_s3() {
        assert!(is_s3_location("s3://b/k"));
        assert!(is_s3_location("s3a://b/k"));
        assert!(!is_s3_location("file:///tmp/x"));
        assert!(!is_s3_location("/tmp/x"));
    }
}
