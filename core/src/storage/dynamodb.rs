//! DynamoDB access every sluice process shares: the SDK client, how a failed
//! call is classified, and `DescribeTable` reduced to a [`TableShape`] and the
//! budget a [`CapacityShare`] of it allows.
//!
//! The client: `aws_config` defaults
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

use serde::{Deserialize, Serialize};

static CLIENT: OnceCell<Client> = OnceCell::const_new();

/// Timeout of calls that are not writes (`DescribeTable`).
pub const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The process's client, built on first use from the shared configuration.
pub async fn client() -> Client {
    CLIENT
        .get_or_init(|| async { Client::new(super::aws::sdk_config().await) })
        .await
        .clone()
}

/// The largest share of a table's capacity sluice plans to use, whatever
/// `write.percent` says: DynamoDB enforces capacity per second, so a
/// cluster writing at exactly 100% keeps the table's token bucket empty and
/// any jitter between writers is throttled. Measured through the test proxy
/// (2 executors, 200 partitions): 4% throttled requests at 100%.
pub const MAX_SHARE: f64 = 0.97;

/// On-demand tables with no `OnDemandThroughput` maximum and no
/// `write.max_units` (or `read.max_units`): DynamoDB's default per-table
/// limit, the same for reads and writes.
pub const ON_DEMAND_DEFAULT_WCU: f64 = 40_000.0;

/// Which of a table's two capacities a budget is drawn from. Reads and
/// writes are metered separately by DynamoDB, so a backfill scan and a
/// write into the same table each have their own cluster-wide budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capacity {
    #[default]
    Write,
    Read,
}

impl Capacity {
    /// The unit's name: `wcu` or `rcu`.
    pub fn unit(self) -> &'static str {
        match self {
            Self::Write => "wcu",
            Self::Read => "rcu",
        }
    }
}

/// The share of a table's capacity a job may use: `write.percent` of it,
/// capped by `write.max_units` (the setting for on-demand tables).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CapacityShare {
    pub percent: f64,
    pub max_units: Option<f64>,
}

impl Default for CapacityShare {
    fn default() -> Self {
        // EMR's connector default (`dynamodb.throughput.write.percent`).
        Self {
            percent: 0.5,
            max_units: None,
        }
    }
}

/// What `DescribeTable` says that matters to a write or a scan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableShape {
    /// Partition key, then sort key if any: (name, `S`|`N`|`B`).
    pub keys: Vec<(String, String)>,
    /// Key attributes of each global secondary index: an item is written
    /// to an index (and costs its WCU there) when it has all of them.
    pub indexes: Vec<Vec<String>>,
    /// Provisioned WCU, or `None` for on-demand tables.
    pub provisioned_wcu: Option<f64>,
    /// On-demand `MaxWriteRequestUnits`, when set.
    pub on_demand_max: Option<f64>,
    /// Provisioned RCU, or `None` for on-demand tables.
    #[serde(default)]
    pub provisioned_rcu: Option<f64>,
    /// On-demand `MaxReadRequestUnits`, when set.
    #[serde(default)]
    pub on_demand_max_read: Option<f64>,
    /// `ItemCount` and `TableSizeBytes` (DynamoDB refreshes them about
    /// every six hours): how a scan sizes its segments and first pages.
    #[serde(default)]
    pub item_count: u64,
    #[serde(default)]
    pub size_bytes: u64,
}

impl TableShape {
    /// The cluster-wide WCU/s budget: capacity x percent, capped by
    /// `write.max_units`.
    pub fn budget(&self, share: CapacityShare) -> f64 {
        self.budget_of(Capacity::Write, share)
    }

    /// The cluster-wide budget in units/s of one capacity: capacity x
    /// percent, capped by `max_units`.
    pub fn budget_of(&self, kind: Capacity, share: CapacityShare) -> f64 {
        let (provisioned, on_demand_max) = match kind {
            Capacity::Write => (self.provisioned_wcu, self.on_demand_max),
            Capacity::Read => (self.provisioned_rcu, self.on_demand_max_read),
        };
        let percent = share.percent.min(MAX_SHARE);
        let capacity = match provisioned {
            Some(units) => units * percent,
            None => match (share.max_units, on_demand_max) {
                (Some(cap), _) => cap,
                (None, Some(max)) => max * percent,
                (None, None) => ON_DEMAND_DEFAULT_WCU * percent,
            },
        };
        let capped = share.max_units.map_or(capacity, |cap| capacity.min(cap));
        capped.max(1.0)
    }

    /// The key attribute names, partition key first.
    pub fn key_names(&self) -> Vec<String> {
        self.keys.iter().map(|(n, _)| n.clone()).collect()
    }
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

/// A DynamoDB call that failed, naming the call and the table.
#[derive(thiserror::Error)]
pub enum DynamoError {
    #[error("{call} {table}: no answer within {}s", .after.as_secs())]
    Timeout {
        call: &'static str,
        table: String,
        after: Duration,
    },
    /// The service's (or the transport's) answer: its code and message.
    #[error("{call} {table}: {message}")]
    Call {
        call: &'static str,
        table: String,
        message: String,
    },
    #[error("{call} {table}: no table in the answer")]
    NoTable { call: &'static str, table: String },
}

crate::error::debug_as_display!(DynamoError);

/// Attempts of a throttled or failed `DescribeTable` (a refused or timed
/// out connection included; not one that got no answer within
/// [`DESCRIBE_TIMEOUT`]).
const DESCRIBE_ATTEMPTS: u32 = 3;

/// `DescribeTable`, reduced to what a write needs; throttling and network
/// errors are tried again, twice, after 200 and 400 ms.
pub async fn describe(client: &Client, table: &str) -> Result<TableShape, DynamoError> {
    let mut attempt = 1;
    loop {
        match describe_once(client, table).await {
            Ok(shape) => return Ok(shape),
            Err((e, again)) if again && attempt < DESCRIBE_ATTEMPTS => {
                tracing::debug!(table, error = %e, "DescribeTable failed; trying again");
                tokio::time::sleep(Duration::from_millis(200 << (attempt - 1))).await;
                attempt += 1;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// One `DescribeTable`; on failure, whether trying again may help.
async fn describe_once(client: &Client, table: &str) -> Result<TableShape, (DynamoError, bool)> {
    const CALL: &str = "DescribeTable";
    let call = client
        .describe_table()
        .table_name(table)
        .send()
        .instrument(tracing::debug_span!("dynamodb.describe_table", table));
    let out = tokio::time::timeout(DESCRIBE_TIMEOUT, call)
        .await
        .map_err(|_| {
            let e = DynamoError::Timeout {
                call: CALL,
                table: table.to_string(),
                after: DESCRIBE_TIMEOUT,
            };
            (e, false)
        })?
        .map_err(|e| {
            let again = matches!(classify(&e), Failure::Throttled | Failure::Transient);
            let e = DynamoError::Call {
                call: CALL,
                table: table.to_string(),
                message: describe_error(&e),
            };
            (e, again)
        })?;
    let desc = out.table.ok_or_else(|| {
        let e = DynamoError::NoTable {
            call: CALL,
            table: table.to_string(),
        };
        (e, false)
    })?;
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
    let provisioned = |units: Option<i64>| units.filter(|u| !on_demand && *u > 0).map(|u| u as f64);
    let throughput = desc.provisioned_throughput();
    let on_demand_limit = |units: Option<i64>| units.filter(|u| *u > 0).map(|u| u as f64);
    let limits = desc.on_demand_throughput();
    Ok(TableShape {
        keys,
        indexes,
        provisioned_wcu: provisioned(throughput.and_then(|p| p.write_capacity_units())),
        on_demand_max: on_demand_limit(limits.and_then(|o| o.max_write_request_units())),
        provisioned_rcu: provisioned(throughput.and_then(|p| p.read_capacity_units())),
        on_demand_max_read: on_demand_limit(limits.and_then(|o| o.max_read_request_units())),
        item_count: desc.item_count().map_or(0, |n| n.max(0) as u64),
        size_bytes: desc.table_size_bytes().map_or(0, |n| n.max(0) as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_budgets_take_a_share_of_rcu_or_the_on_demand_cap() {
        let share = |percent: f64, max_units: Option<f64>| CapacityShare { percent, max_units };
        let provisioned = TableShape {
            provisioned_rcu: Some(2000.0),
            provisioned_wcu: Some(100.0),
            ..Default::default()
        };
        assert_eq!(
            provisioned.budget_of(Capacity::Read, share(0.5, None)),
            1000.0
        );
        // At most 97% of a table's capacity, and never over max_units.
        assert_eq!(
            provisioned.budget_of(Capacity::Read, share(1.0, None)),
            1940.0
        );
        assert_eq!(
            provisioned.budget_of(Capacity::Read, share(0.5, Some(300.0))),
            300.0
        );
        // The write side is its own.
        assert_eq!(
            provisioned.budget_of(Capacity::Write, share(0.5, None)),
            50.0
        );
        // On demand: read.max_units is the budget, whatever the percent;
        // else the table's MaxReadRequestUnits share; else 40,000's.
        let on_demand = TableShape::default();
        assert_eq!(
            on_demand.budget_of(Capacity::Read, share(0.5, Some(40.0))),
            40.0
        );
        let capped = TableShape {
            on_demand_max_read: Some(1000.0),
            ..Default::default()
        };
        assert_eq!(capped.budget_of(Capacity::Read, share(0.5, None)), 500.0);
        assert_eq!(
            on_demand.budget_of(Capacity::Read, share(0.5, None)),
            20_000.0
        );
    }
}
