//! The AWS configuration every sluice process shares, and the credentials
//! its S3 stores sign with. Both the DynamoDB client and the S3 stores take
//! credentials from `aws_config`'s default chain (environment, profiles and
//! SSO, web identity, container and EC2 instance roles): `object_store`'s
//! own chain has no profiles, so `AWS_PROFILE` would reach DynamoDB but not
//! S3.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_smithy_http_client::tls;
use aws_smithy_types::error::display::DisplayErrorContext;
use object_store::CredentialProvider;
use object_store::aws::AwsCredential;
use tokio::sync::{Mutex, OnceCell};

static CONFIG: OnceCell<aws_config::SdkConfig> = OnceCell::const_new();

/// Connect timeout of AWS calls; a call's own timeout is the caller's.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long loading credentials may take (an instance role's metadata
/// service, an SSO or `credential_process` call).
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Credentials are renewed this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// The process's AWS configuration, loaded on first use: rustls with ring,
/// and no SDK retries (callers retry, counted and paced).
pub async fn sdk_config() -> &'static aws_config::SdkConfig {
    CONFIG.get_or_init(new_sdk_config).await
}

/// A configuration of its own, with its own connection pool: for a caller
/// that runs on a short-lived runtime (a pooled connection belongs to the
/// runtime that opened it, and dies with it).
pub async fn new_sdk_config() -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .build(),
        )
        .load()
        .await
}

/// S3 credentials from the default chain, kept until shortly before they
/// expire (the chain itself does not cache).
#[derive(Debug, Default)]
pub struct ChainCredentials {
    cached: Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

/// What to set, for a process that found no credentials anywhere.
const WHAT_TO_SET: &str = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE \
     with ~/.aws files, or AWS_WEB_IDENTITY_TOKEN_FILE, or run with an instance or container role";

fn no_credentials(reason: Option<String>) -> object_store::Error {
    let text = match reason {
        None => format!("no AWS credentials: {WHAT_TO_SET}"),
        Some(reason) => format!("no AWS credentials ({reason}): {WHAT_TO_SET}"),
    };
    object_store::Error::Generic {
        store: "S3",
        source: text.into(),
    }
}

#[async_trait::async_trait]
impl CredentialProvider for ChainCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((credential, expiry)) = cached.as_ref() {
            let fresh = expiry.is_none_or(|e| e > SystemTime::now() + RENEW_BEFORE);
            if fresh {
                return Ok(Arc::clone(credential));
            }
        }
        let config = sdk_config().await;
        let provider = config
            .credentials_provider()
            .ok_or_else(|| no_credentials(None))?;
        let loaded = tokio::time::timeout(LOAD_TIMEOUT, provider.provide_credentials())
            .await
            .map_err(|_| no_credentials(Some(format!("none loaded within {LOAD_TIMEOUT:?}"))))?
            .map_err(|e| match e {
                // The chain found nothing anywhere: say what to set.
                CredentialsError::CredentialsNotLoaded(_) => no_credentials(None),
                // A source is there but broken (a bad profile, an expired
                // token): say which.
                other => no_credentials(Some(DisplayErrorContext(&other).to_string())),
            })?;
        let credential = Arc::new(AwsCredential {
            key_id: loaded.access_key_id().to_string(),
            secret_key: loaded.secret_access_key().to_string(),
            token: loaded.session_token().map(str::to_string),
        });
        *cached = Some((Arc::clone(&credential), loaded.expiry()));
        Ok(credential)
    }
}
