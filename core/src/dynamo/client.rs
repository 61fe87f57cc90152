//! The DynamoDB client every sluice process shares: `aws_config` defaults
//! (so `AWS_ENDPOINT_URL_DYNAMODB`, profiles and instance roles work), TLS
//! through rustls with ring (the crypto the rest of the tree already
//! builds), a timeout on every call, and no SDK retries: the writer retries
//! itself so that every retry is counted and paced by the limiter.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{BillingMode, KeyType, ScalarAttributeType};
use tokio::sync::OnceCell;
use tracing::Instrument;

use super::spec::TableShape;

static CLIENT: OnceCell<Client> = OnceCell::const_new();

/// Timeout of calls that are not writes (`DescribeTable`).
pub const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The process's client, built on first use from the shared configuration.
pub async fn client() -> Client {
    CLIENT
        .get_or_init(|| async { Client::new(crate::aws::sdk_config().await) })
        .await
        .clone()
}

/// How the writer treats a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Throttled: back off the cluster-wide rate, retry later.
    Throttled,
    /// The request can never succeed as is (validation, item too large).
    Invalid,
    /// Network, timeout or server error: retry with backoff.
    Transient,
    /// Credentials, missing table, access denied: retrying will not help.
    Fatal,
}

/// Classifies an SDK error by its code, as DynamoDB documents them.
pub fn classify<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Failure {
    match err {
        // Credentials that cannot be loaded, or a request the client cannot
        // build, fail the same way on every attempt.
        SdkError::DispatchFailure(d)
            if d.is_user()
                || (d.is_other()
                    && d.as_other()
                        != Some(aws_smithy_types::retry::ErrorKind::TransientError)) =>
        {
            Failure::Fatal
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Failure::Transient
        }
        SdkError::ConstructionFailure(_) => Failure::Fatal,
        _ => match err.code() {
            Some(
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "LimitExceededException",
            ) => Failure::Throttled,
            Some("ValidationException" | "ItemCollectionSizeLimitExceededException") => {
                Failure::Invalid
            }
            Some("InternalServerError" | "ServiceUnavailable" | "InternalFailure") => {
                Failure::Transient
            }
            Some(_) => Failure::Fatal,
            None => Failure::Transient,
        },
    }
}

/// The error's code and message, or its chain for network errors.
pub fn describe_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    err: &SdkError<E, R>,
) -> String {
    match (err.code(), err.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_string(),
        _ => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// `DescribeTable`, reduced to what a write needs.
pub async fn describe(client: &Client, table: &str) -> Result<TableShape, String> {
    let call = client
        .describe_table()
        .table_name(table)
        .send()
        .instrument(tracing::debug_span!("dynamodb.describe_table", table));
    let out = tokio::time::timeout(DESCRIBE_TIMEOUT, call)
        .await
        .map_err(|_| {
            format!(
                "DescribeTable {table}: no answer within {}s",
                DESCRIBE_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("DescribeTable {table}: {}", describe_error(&e)))?;
    let desc = out
        .table
        .ok_or_else(|| format!("DescribeTable {table}: no table in the answer"))?;
    let types: std::collections::HashMap<String, String> = desc
        .attribute_definitions()
        .iter()
        .map(|a| {
            let t = match a.attribute_type() {
                ScalarAttributeType::S => "S",
                ScalarAttributeType::N => "N",
                ScalarAttributeType::B => "B",
                _ => "?",
            };
            (a.attribute_name().to_string(), t.to_string())
        })
        .collect();
    let mut keys: Vec<(String, String)> = Vec::new();
    for k in desc.key_schema() {
        let name = k.attribute_name().to_string();
        let ty = types.get(&name).cloned().unwrap_or_else(|| "?".into());
        if *k.key_type() == KeyType::Hash {
            keys.insert(0, (name, ty));
        } else {
            keys.push((name, ty));
        }
    }
    let indexes = desc
        .global_secondary_indexes()
        .iter()
        .map(|g| {
            g.key_schema()
                .iter()
                .map(|k| k.attribute_name().to_string())
                .collect()
        })
        .collect();
    let on_demand = desc
        .billing_mode_summary()
        .and_then(|b| b.billing_mode())
        .is_some_and(|m| *m == BillingMode::PayPerRequest);
    let provisioned_wcu = if on_demand {
        None
    } else {
        desc.provisioned_throughput()
            .and_then(|p| p.write_capacity_units())
            .filter(|w| *w > 0)
            .map(|w| w as f64)
    };
    let on_demand_max = desc
        .on_demand_throughput()
        .and_then(|o| o.max_write_request_units())
        .filter(|w| *w > 0)
        .map(|w| w as f64);
    Ok(TableShape {
        keys,
        indexes,
        provisioned_wcu,
        on_demand_max,
    })
}
