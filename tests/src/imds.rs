//! A stand-in for the EC2 instance metadata service on loopback: IMDSv2
//! session tokens, one role, and that role's temporary credentials, as the
//! AWS SDK asks for them. Off EC2 there is no real one to test an instance
//! role against; moto's answers the token call without the TTL header the
//! SDK requires.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};

/// The role the service reports and the keys it hands out.
pub const ROLE: &str = "sluice-test-role";
pub const ACCESS_KEY_ID: &str = "ASIASLUICETESTROLE01";

#[derive(Default)]
struct Counts {
    tokens: AtomicUsize,
    credentials: AtomicUsize,
}

pub struct InstanceMetadata {
    /// `http://127.0.0.1:port`, for `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub endpoint: String,
    counts: Arc<Counts>,
    _runtime: tokio::runtime::Runtime,
}

impl InstanceMetadata {
    pub fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let counts = Arc::new(Counts::default());
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let (c1, c2) = (Arc::clone(&counts), Arc::clone(&counts));
        let app = axum::Router::new()
            .route(
                "/latest/api/token",
                put(move || async move {
                    c1.tokens.fetch_add(1, Ordering::SeqCst);
                    (
                        [("x-aws-ec2-metadata-token-ttl-seconds", "21600")],
                        "imds-token",
                    )
                }),
            )
            .route(
                "/latest/meta-data/iam/security-credentials/",
                get(|headers: HeaderMap| async move { with_token(&headers, ROLE.to_string()) }),
            )
            .route(
                "/latest/meta-data/iam/security-credentials/{role}",
                get(move |headers: HeaderMap| async move {
                    c2.credentials.fetch_add(1, Ordering::SeqCst);
                    let body = serde_json::json!({
                        "Code": "Success",
                        "LastUpdated": "2026-01-01T00:00:00Z",
                        "Type": "AWS-HMAC",
                        "AccessKeyId": ACCESS_KEY_ID,
                        "SecretAccessKey": "sluice-test-role-secret",
                        "Token": "sluice-test-role-session-token",
                        "Expiration": "2099-01-01T00:00:00Z",
                    });
                    with_token(&headers, body.to_string())
                }),
            );
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            endpoint,
            counts,
            _runtime: runtime,
        })
    }

    /// IMDSv2 session tokens handed out.
    pub fn tokens(&self) -> usize {
        self.counts.tokens.load(Ordering::SeqCst)
    }

    /// Times the role's credentials were fetched.
    pub fn credential_fetches(&self) -> usize {
        self.counts.credentials.load(Ordering::SeqCst)
    }
}

/// IMDSv2: metadata only for a request that carries its session token.
fn with_token(headers: &HeaderMap, body: String) -> Response {
    match headers.get("x-aws-ec2-metadata-token") {
        Some(t) if t == "imds-token" => body.into_response(),
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}
