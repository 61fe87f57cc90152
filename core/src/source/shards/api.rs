//! What a sharded stream service is to sluice, whichever it is (DynamoDB
//! Streams, Kinesis Data Streams): shards with parents, iterators from a
//! sequence number, pages of records. [`ShardApi`] is that much of the
//! service; [`call`] retries a throttled or failed call with backoff within
//! a deadline, and renews an expired iterator, so the planner and the
//! executors read both services the same way.

use std::cmp::Ordering;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

/// A shard as the service lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: String,
    /// The shard it was split from, and for a Kinesis merge, the other one.
    pub parents: Vec<String>,
    /// Whether the shard has an ending sequence number: it takes no more
    /// records, and a reader that reaches its end is done with it.
    pub closed: bool,
}

/// Where an iterator starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    TrimHorizon,
    Latest,
    /// At this record.
    Sequence(String),
    /// Just after this record.
    After(String),
    /// The first record that arrived at or after this time (ms since the
    /// epoch). DynamoDB Streams has no such iterator: it gives the trim
    /// horizon, and the planner skips the older records.
    Timestamp(i64),
}

/// One record, as the service gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardRecord {
    pub sequence: String,
    /// Approximate creation (DynamoDB) or arrival (Kinesis) time, in ms
    /// since the epoch.
    pub time_ms: i64,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A DynamoDB change, images as plain JSON objects.
    Change(Change),
    /// A Kinesis record's bytes.
    Data {
        data: Vec<u8>,
        partition_key: String,
    },
}

/// A DynamoDB change record (INSERT, MODIFY or REMOVE), its key and images
/// as plain JSON text (`{"id": 7}`, not DynamoDB's `{"id": {"N": "7"}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub event_name: String,
    pub keys: String,
    pub new_image: Option<String>,
    pub old_image: Option<String>,
}

/// One `GetRecords` answer.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub records: Vec<ShardRecord>,
    /// `None`: the shard is closed and read to its end.
    pub next: Option<String>,
    /// How far the page is behind the shard's newest record (Kinesis).
    pub behind_ms: Option<i64>,
}

/// How a failed call is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Throttled (`ProvisionedThroughputExceeded`, `LimitExceeded`): retried.
    Throttled,
    /// The iterator is older than the service keeps it (5 minutes for
    /// Kinesis, 15 for DynamoDB Streams): a new one is taken.
    ExpiredIterator,
    /// The position is older than the stream keeps (24 h by default).
    Trimmed,
    /// Network, timeout, server error: retried.
    Transient,
    /// The table, stream or shard does not exist, or the table has no
    /// stream: not retried, and no later batch can read it either.
    Gone,
    /// Access denied, no credentials, a bad request: not retried here
    /// (a stream's later batch may, once the cause is fixed).
    Fatal,
}

/// A failed call: what it was and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{call}: {message}")]
pub struct ApiError {
    pub call: &'static str,
    pub failure: Failure,
    pub message: String,
}

#[async_trait]
pub trait ShardApi: Send + Sync {
    /// The stream's shards, every page of them.
    async fn shards(&self) -> Result<Vec<ShardInfo>, ApiError>;
    /// An iterator into `shard`; `None` when there is nothing to read
    /// there (a closed shard past its end).
    async fn iterator(&self, shard: &str, at: &At) -> Result<Option<String>, ApiError>;
    /// The next page from an iterator, at most `limit` records.
    async fn records(&self, iterator: &str, limit: i32) -> Result<Page, ApiError>;
}

/// Orders two sequence numbers of one shard (decimal strings, up to 40
/// digits: more than an `i64` holds).
pub fn compare(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// The shortest attempt worth making before a call's deadline.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);

/// Retry bounds of [`call`].
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// The whole call, retries included, ends by then.
    pub deadline: Duration,
    /// One attempt's timeout.
    pub attempt: Duration,
}

/// Runs `f` until it succeeds, retrying throttling and transient failures
/// with doubling backoff (50 ms to 5 s) until `retry.deadline`; each
/// attempt bounded by `retry.attempt` and by the time left, so the call
/// ends by the deadline. Other failures return at once.
pub async fn call<T, F, Fut>(name: &'static str, retry: Retry, mut f: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let start = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let left = retry.deadline.saturating_sub(start.elapsed());
        let bound = retry.attempt.min(left).max(Duration::from_millis(1));
        let failed = match tokio::time::timeout(bound, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => ApiError {
                call: name,
                failure: Failure::Transient,
                message: format!("no answer within {}s", bound.as_secs_f64()),
            },
        };
        if !matches!(failed.failure, Failure::Throttled | Failure::Transient) {
            return Err(failed);
        }
        if failed.failure == Failure::Throttled {
            metrics::counter!("sluice_shard_throttled_total", "call" => name).increment(1);
        }
        let elapsed = start.elapsed();
        // No attempt too short to be answered: the last real error stands.
        if elapsed + backoff + MIN_ATTEMPT >= retry.deadline {
            return Err(ApiError {
                message: format!(
                    "{} (gave up after {attempts} attempts in {:.1}s)",
                    failed.message,
                    elapsed.as_secs_f64()
                ),
                ..failed
            });
        }
        tracing::debug!(call = name, error = %failed.message, ?backoff, "retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};

    use super::*;

    #[test]
    fn sequence_numbers_order_as_numbers() {
        assert_eq!(compare("000000000000000000010", "9"), Ordering::Greater);
        assert_eq!(
            compare(
                "49590338271490256608559692538361571095921575989136588898",
                "49590338271490256608559692538361571095921575989136588899"
            ),
            Ordering::Less
        );
        assert_eq!(compare("0012", "12"), Ordering::Equal);
    }

    fn failing(failure: Failure) -> ApiError {
        ApiError {
            call: "GetRecords",
            failure,
            message: "nope".into(),
        }
    }

    #[tokio::test]
    async fn throttling_is_retried_until_it_passes_and_fatal_errors_are_not() {
        let retry = Retry {
            deadline: Duration::from_secs(30),
            attempt: Duration::from_secs(5),
        };
        let tries = AtomicU32::new(0);
        let got = call("GetRecords", retry, || async {
            match tries.fetch_add(1, AtomicOrdering::SeqCst) {
                0..=2 => Err(failing(Failure::Throttled)),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(got.ok(), Some(7));
        assert_eq!(tries.load(AtomicOrdering::SeqCst), 4);

        let tries = AtomicU32::new(0);
        let got: Result<(), _> = call("GetRecords", retry, || async {
            tries.fetch_add(1, AtomicOrdering::SeqCst);
            Err(failing(Failure::Trimmed))
        })
        .await;
        assert_eq!(got.err().map(|e| e.failure), Some(Failure::Trimmed));
        assert_eq!(tries.load(AtomicOrdering::SeqCst), 1);
    }

    #[tokio::test]
    async fn retries_stop_at_the_deadline_and_say_how_many() {
        let retry = Retry {
            deadline: Duration::from_millis(300),
            attempt: Duration::from_millis(100),
        };
        let got: Result<(), _> = call("GetRecords", retry, || async {
            Err(failing(Failure::Throttled))
        })
        .await;
        let text = got.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("GetRecords: nope (gave up after"), "{text}");
    }

    #[tokio::test]
    async fn a_call_whose_attempts_hang_ends_by_its_deadline() {
        let retry = Retry {
            deadline: Duration::from_millis(1600),
            attempt: Duration::from_millis(1000),
        };
        let got: Result<(), _> = call("GetRecords", retry, std::future::pending).await;
        let text = got.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("gave up after 2 attempts"), "{text}");
        // 1 s, then what was left of the 1.6 s (about 0.55 s): the last
        // attempt's bound is in its message, not a second whole second.
        let bound: f64 = text
            .split("no answer within ")
            .nth(1)
            .and_then(|t| t.split('s').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(f64::NAN);
        assert!(bound < 0.6, "{text}");
    }
}
