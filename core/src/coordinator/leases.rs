//! Leases: one write budget and one read budget per DynamoDB table for the
//! whole cluster (`/v1/dynamodb/*`).
//!
//! Writers (the sink) lease write capacity, scan partitions (the source)
//! read capacity; the two are metered apart, as DynamoDB meters them, and
//! everything below holds for each. "Writer" names either.
//!
//! Every writer partition holds a lease on its table, renewed every
//! [`RENEW`]; each renewal reports what the writer consumed and whether it
//! was throttled, and returns the writer's share: the table's current rate
//! divided among the writers whose leases are live. A writer that finishes
//! releases its lease; one that dies stops renewing and drops out after
//! [`LEASE_TTL`], and the others get its share at their next renewal.
//!
//! The rate starts at the budget (capacity x `write.percent`, capped by
//! `write.max_units`), which the coordinator re-reads with `DescribeTable`
//! every [`DESCRIBE_EVERY`], or after [`DESCRIBE_SOON`] once writers report
//! throttles. Throttles reported by any writer cut the rate (by 10%, once
//! per [`DECREASE_EVERY`]); without throttles it grows back toward the
//! budget by 3% of it per second.
//!
//! Writers pace themselves with a local token bucket at their share
//! (`sink::dynamo::limiter`), so the coordinator is never on the
//! per-request path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::storage::dynamodb::{self, Capacity, CapacityShare, DynamoError, TableShape};

pub const RENEW: Duration = Duration::from_millis(250);
pub const LEASE_TTL: Duration = Duration::from_secs(3);
pub const DESCRIBE_EVERY: Duration = Duration::from_secs(2);
/// After throttles, the capacity is read again this soon (a lowered
/// capacity is otherwise seen only at the next regular read).
pub const DESCRIBE_SOON: Duration = Duration::from_millis(500);
pub const DECREASE_EVERY: Duration = Duration::from_secs(1);
/// Multiplicative decrease on throttling.
pub const DECREASE: f64 = 0.9;
/// Additive increase: this share of the budget per second.
const INCREASE_PER_SEC: f64 = 0.03;
/// The rate never drops below this share of the budget.
const FLOOR: f64 = 0.05;
/// A table with no lease for this long is forgotten.
pub const IDLE_TABLE_TTL: Duration = Duration::from_secs(600);
/// Live writers one table may have.
pub const MAX_WRITERS_PER_TABLE: usize = 10_000;
/// Tables the coordinator holds at once.
pub const MAX_TABLES: usize = 1_000;
/// Live writers over all tables: with names up to [`MAX_NAME_BYTES`], the
/// leases stay within about 100 MiB whatever the mix of tables.
pub const MAX_LEASES: usize = 50_000;
/// Longest table or writer name accepted.
pub const MAX_NAME_BYTES: usize = 1024;
/// Ended writes remembered at once (each for [`ENDED_TTL`]); past this the
/// oldest are forgotten first.
pub const MAX_ENDED_WRITES: usize = 100_000;
/// How long an ended write's writers are refused: longer than any writer
/// stays paused and still holds a lease (it stops itself after
/// `sink::dynamo::limiter`'s cut-off anyway).
pub const ENDED_TTL: Duration = Duration::from_secs(3600);

/// A lease request the coordinator refuses; nothing changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LeaseError {
    #[error("{field} must be a finite number at least 0, got {value}")]
    BadNumber { field: &'static str, value: f64 },
    #[error("write.percent must be in (0, 1], got {0}")]
    BadPercent(f64),
    #[error("write.max_units must be at least 1, got {0}")]
    BadMaxUnits(f64),
    #[error("a table or writer name is over {MAX_NAME_BYTES} bytes")]
    NameTooLong,
    #[error("table {table} has {MAX_WRITERS_PER_TABLE} writers already")]
    TooManyWriters { table: String },
    #[error("{MAX_TABLES} tables are being written already")]
    TooManyTables,
    #[error("the coordinator holds {MAX_LEASES} writers' leases already")]
    TooManyLeases,
    #[error("write {write_id} has ended (committed, failed or cancelled): stop writing")]
    WriteEnded { write_id: String },
    #[error("write {0} was not planned by this cluster's scheduler")]
    UnknownWrite(String),
}

impl LeaseRequest {
    fn check(&self) -> Result<(), LeaseError> {
        for (field, value) in [
            ("budget_hint", self.budget_hint),
            ("consumed_wcu", self.consumed_wcu),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(LeaseError::BadNumber { field, value });
            }
        }
        let percent = self.share.percent;
        if !(percent > 0.0 && percent <= 1.0) {
            return Err(LeaseError::BadPercent(percent));
        }
        if let Some(units) = self.share.max_units
            && !(units.is_finite() && units >= 1.0)
        {
            return Err(LeaseError::BadMaxUnits(units));
        }
        if self.table.len() > MAX_NAME_BYTES
            || self.writer.len() > MAX_NAME_BYTES
            || self.write_id.len() > MAX_NAME_BYTES
        {
            return Err(LeaseError::NameTooLong);
        }
        Ok(())
    }
}

/// The stricter of two shares: a writer can lower what the others use,
/// never raise it.
fn stricter(a: CapacityShare, b: CapacityShare) -> CapacityShare {
    CapacityShare {
        percent: a.percent.min(b.percent),
        max_units: match (a.max_units, b.max_units) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        },
    }
}

/// A lease request: register or renew, with what happened since the last one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub table: String,
    pub writer: String,
    /// The write the writer works for: once it has ended, its writers are
    /// refused (`410 Gone`) and stop.
    #[serde(default)]
    pub write_id: String,
    pub share: CapacityShare,
    /// The client's budget, used until the coordinator's own `DescribeTable` answers.
    pub budget_hint: f64,
    /// Units consumed since the last renewal (RCU for a read lease).
    pub consumed_wcu: f64,
    pub throttles: u64,
    /// Which capacity the lease draws on (writes when left out).
    #[serde(default)]
    pub capacity: Capacity,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// This writer's share, WCU/s.
    pub rate: f64,
    /// The cluster-wide rate now, and the budget it is bounded by.
    pub table_rate: f64,
    pub budget: f64,
    pub writers: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Release {
    pub table: String,
    pub writer: String,
    #[serde(default)]
    pub capacity: Capacity,
}

/// `POST /v1/writes/end`: the client's word that a write is over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndWrite {
    pub write_id: String,
}

/// What the coordinator knows of one table (`GET /v1/dynamodb/tables`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableStatus {
    pub table: String,
    /// Which of the table's capacities this budget is drawn from.
    #[serde(default)]
    pub capacity: Capacity,
    pub budget: f64,
    pub rate: f64,
    pub writers: Vec<String>,
    /// Sum of the writers' current grants (never above `rate` but briefly).
    pub granted: f64,
    pub consumed_wcu: f64,
    pub throttles: u64,
    /// When the budget last changed, seconds since the coordinator started.
    pub budget_changed_at: Option<f64>,
}

/// Where the coordinator reads a table's capacity (`DescribeTable` in
/// production; a fixed answer in unit tests).
pub trait CapacitySource: Send + Sync {
    fn describe(&self, table: &str) -> BoxFuture<'static, Result<TableShape, DynamoError>>;
}

/// `DescribeTable` through the process's DynamoDB client.
pub struct DescribeTable;

impl CapacitySource for DescribeTable {
    fn describe(&self, table: &str) -> BoxFuture<'static, Result<TableShape, DynamoError>> {
        let table = table.to_string();
        Box::pin(async move {
            let client = dynamodb::client().await;
            dynamodb::describe(&client, &table).await
        })
    }
}

struct Lease {
    write_id: String,
    expires: Instant,
    /// The rate last granted, which the writer uses until it renews.
    granted: f64,
}

struct TableState {
    share: CapacityShare,
    shape: Option<TableShape>,
    budget: f64,
    rate: f64,
    leases: HashMap<String, Lease>,
    last_describe: Option<Instant>,
    describing: bool,
    /// Throttles were reported: read the capacity again soon, it may
    /// have been lowered.
    describe_soon: bool,
    last_decrease: Instant,
    last_tick: Instant,
    consumed: f64,
    throttles: u64,
    budget_changed_at: Option<Instant>,
    /// The last lease request, for forgetting idle tables.
    touched: Instant,
}

impl TableState {
    fn set_budget(&mut self, budget: f64, now: Instant) {
        if (budget - self.budget).abs() > f64::EPSILON {
            // A known capacity change is followed at once, both ways; only
            // throttling probes the rate down and back up.
            self.budget = budget;
            self.rate = budget;
            self.budget_changed_at = Some(now);
        }
    }
}

/// A budget: a table and which of its capacities.
type Key = (String, Capacity);

/// The lease table; cheap to clone.
#[derive(Clone)]
pub struct Leases {
    tables: Arc<Mutex<HashMap<Key, TableState>>>,
    /// Writes that ended, and when.
    ended: Arc<Mutex<HashMap<String, Instant>>>,
    /// Only these writes get leases (none: every write).
    planned: Option<super::planned::PlannedWrites>,
    clock: Arc<dyn Clock>,
    capacity: Arc<dyn CapacitySource>,
    started: Instant,
}

impl Leases {
    pub fn new(clock: Arc<dyn Clock>, capacity: Arc<dyn CapacitySource>) -> Self {
        Self {
            tables: Arc::default(),
            ended: Arc::default(),
            planned: None,
            started: clock.now(),
            clock,
            capacity,
        }
    }

    /// The same table, leasing only to writers of writes `planned` knows.
    pub fn serving(mut self, planned: super::planned::PlannedWrites) -> Self {
        self.planned = Some(planned);
        self
    }

    /// `POST /v1/dynamodb/lease`, `POST /v1/dynamodb/release`,
    /// `GET /v1/dynamodb/tables`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/dynamodb/lease", post(lease))
            .route("/v1/dynamodb/release", post(release))
            .route("/v1/dynamodb/tables", get(tables))
            .route("/v1/writes/end", post(end_write))
            .with_state(self)
    }

    fn with_ended<T>(&self, f: impl FnOnce(&mut HashMap<String, Instant>) -> T) -> T {
        let mut guard = match self.ended.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Ends a write: its leases go now, and its writers' next renewals are
    /// refused, so a writer the scheduler cannot reach (cut off, paused)
    /// stops when it next asks.
    pub fn end_write(&self, req: &EndWrite) -> Result<(), LeaseError> {
        if req.write_id.is_empty() || req.write_id.len() > MAX_NAME_BYTES {
            return Err(LeaseError::NameTooLong);
        }
        let now = self.clock.now();
        self.with_ended(|ended| {
            ended.retain(|_, at| now.duration_since(*at) < ENDED_TTL);
            if ended.len() >= MAX_ENDED_WRITES
                && let Some(oldest) = ended
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(w, _)| w.clone())
            {
                ended.remove(&oldest);
            }
            ended.insert(req.write_id.clone(), now);
        });
        self.with_tables(|tables| {
            for state in tables.values_mut() {
                state.leases.retain(|_, l| l.write_id != req.write_id);
            }
        });
        tracing::info!(write_id = %req.write_id, "write ended: its leases are revoked");
        Ok(())
    }

    fn with_tables<T>(&self, f: impl FnOnce(&mut HashMap<Key, TableState>) -> T) -> T {
        let mut guard = match self.tables.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Registers or renews a lease, or refuses the request (see the
    /// bounds) without changing anything.
    pub fn lease(&self, req: LeaseRequest) -> Result<LeaseGrant, LeaseError> {
        req.check()?;
        if !req.write_id.is_empty() && self.with_ended(|ended| ended.contains_key(&req.write_id)) {
            return Err(LeaseError::WriteEnded {
                write_id: req.write_id,
            });
        }
        if let Some(planned) = &self.planned
            && !planned.knows(&req.write_id)
        {
            return Err(LeaseError::UnknownWrite(req.write_id));
        }
        let now = self.clock.now();
        let key = (req.table.clone(), req.capacity);
        self.with_tables(|tables| {
            match tables.get(&key) {
                None if tables.len() >= MAX_TABLES => return Err(LeaseError::TooManyTables),
                Some(state)
                    if state.leases.len() >= MAX_WRITERS_PER_TABLE
                        && !state.leases.contains_key(&req.writer) =>
                {
                    return Err(LeaseError::TooManyWriters {
                        table: req.table.clone(),
                    });
                }
                _ => {}
            }
            let renewal = tables
                .get(&key)
                .is_some_and(|s| s.leases.contains_key(&req.writer));
            if !renewal && tables.values().map(|s| s.leases.len()).sum::<usize>() >= MAX_LEASES {
                return Err(LeaseError::TooManyLeases);
            }
            let state = tables.entry(key).or_insert_with(|| TableState {
                share: req.share,
                shape: None,
                budget: req.budget_hint,
                rate: req.budget_hint,
                leases: HashMap::new(),
                last_describe: None,
                describing: false,
                describe_soon: false,
                last_decrease: now.checked_sub(DECREASE_EVERY).unwrap_or(now),
                last_tick: now,
                consumed: 0.0,
                throttles: 0,
                budget_changed_at: None,
                touched: now,
            });
            state.touched = now;
            let share = if state.leases.is_empty() {
                // A new job may bring a new share.
                req.share
            } else {
                // While others write, a request can only make the share
                // stricter: a stray client cannot raise every writer's rate.
                stricter(state.share, req.share)
            };
            if share != state.share || state.leases.is_empty() {
                state.share = share;
                let budget = match &state.shape {
                    Some(shape) => shape.budget(state.share),
                    // Before the first DescribeTable answers, the clients'
                    // hints, of which only a lower one counts while others
                    // write.
                    None if state.leases.is_empty() => req.budget_hint,
                    None => state.budget.min(req.budget_hint),
                };
                state.set_budget(budget, now);
            } else if state.shape.is_none() && req.budget_hint < state.budget {
                state.set_budget(req.budget_hint, now);
            }
            state.consumed += req.consumed_wcu;
            state.throttles += req.throttles;
            if req.throttles > 0 {
                state.describe_soon = true;
            }
            if req.throttles > 0 && now.duration_since(state.last_decrease) >= DECREASE_EVERY {
                state.rate = (state.rate * DECREASE).max(state.budget * FLOOR);
                state.last_decrease = now;
                tracing::info!(table = %req.table, rate = state.rate, "throttled: cluster rate cut");
            }
            // The fair share, but never more than what the other writers'
            // current grants leave: while writers join, the early ones still
            // hold larger shares until they renew, and granting the fair
            // share at once would over-commit the table for up to one
            // renewal period (measured: 12% throttled requests with 32
            // writers starting together). A newcomer may get nothing until
            // the others renew (one renewal period): the grants never add
            // up past the rate.
            let others: f64 = state
                .leases
                .iter()
                .filter(|(w, _)| **w != req.writer)
                .map(|(_, l)| l.granted)
                .sum();
            let live = state.leases.len() + usize::from(!state.leases.contains_key(&req.writer));
            let fair = state.rate / live.max(1) as f64;
            let granted = fair.min((state.rate - others).max(0.0));
            state.leases.insert(
                req.writer.clone(),
                Lease {
                    write_id: req.write_id.clone(),
                    expires: now + LEASE_TTL,
                    granted,
                },
            );
            Ok(LeaseGrant {
                rate: granted,
                table_rate: state.rate,
                budget: state.budget,
                writers: state.leases.len(),
            })
        })
    }

    pub fn release(&self, req: &Release) {
        self.with_tables(|tables| {
            if let Some(state) = tables.get_mut(&(req.table.clone(), req.capacity)) {
                state.leases.remove(&req.writer);
            }
        });
    }

    pub fn status(&self) -> Vec<TableStatus> {
        self.with_tables(|tables| {
            let mut out: Vec<TableStatus> = tables
                .iter()
                .map(|((name, capacity), s)| TableStatus {
                    table: name.clone(),
                    capacity: *capacity,
                    budget: s.budget,
                    rate: s.rate,
                    writers: {
                        let mut w: Vec<String> = s.leases.keys().cloned().collect();
                        w.sort();
                        w
                    },
                    granted: s.leases.values().map(|l| l.granted).sum(),
                    consumed_wcu: s.consumed,
                    throttles: s.throttles,
                    budget_changed_at: s
                        .budget_changed_at
                        .map(|t| t.duration_since(self.started).as_secs_f64()),
                })
                .collect();
            out.sort_by(|a, b| (&a.table, a.capacity.unit()).cmp(&(&b.table, b.capacity.unit())));
            out
        })
    }

    /// Expires leases and grows rates back; returns the tables with
    /// writers whose capacity was not read recently (now marked as being
    /// read: the caller reads them and hands the answer to
    /// [`Leases::described`]).
    pub fn tick(&self) -> Vec<String> {
        let now = self.clock.now();
        self.with_tables(|tables| {
            tables.retain(|_, s| {
                !s.leases.is_empty() || now.duration_since(s.touched) < IDLE_TABLE_TTL
            });
            let mut due = Vec::new();
            for ((name, capacity), s) in tables.iter_mut() {
                s.leases.retain(|_, lease| lease.expires > now);
                let dt = now.duration_since(s.last_tick).as_secs_f64();
                s.last_tick = now;
                if now.duration_since(s.last_decrease) >= DECREASE_EVERY {
                    s.rate = (s.rate + s.budget * INCREASE_PER_SEC * dt).min(s.budget);
                }
                let every = if s.describe_soon {
                    DESCRIBE_SOON
                } else {
                    DESCRIBE_EVERY
                };
                let stale = s
                    .last_describe
                    .is_none_or(|t| now.duration_since(t) >= every);
                if !s.leases.is_empty() && stale && !s.describing {
                    s.describing = true;
                    due.push(name.clone());
                }
                match capacity {
                    Capacity::Write => {
                        metrics::gauge!("sluice_dynamodb_rate_wcu", "table" => name.clone())
                            .set(s.rate);
                        metrics::gauge!("sluice_dynamodb_writers", "table" => name.clone())
                            .set(s.leases.len() as f64);
                    }
                    Capacity::Read => {
                        metrics::gauge!("sluice_dynamodb_rate_rcu", "table" => name.clone())
                            .set(s.rate);
                        metrics::gauge!("sluice_dynamodb_readers", "table" => name.clone())
                            .set(s.leases.len() as f64);
                    }
                }
            }
            // One DescribeTable answers for both capacities.
            due.sort();
            due.dedup();
            due
        })
    }

    /// Takes a `DescribeTable` answer for `table`: a changed capacity
    /// becomes the new budget at once, for reads and writes.
    pub fn described(&self, table: &str, shape: Result<TableShape, DynamoError>) {
        let now = self.clock.now();
        self.with_tables(|tables| {
            for capacity in [Capacity::Write, Capacity::Read] {
                let Some(s) = tables.get_mut(&(table.to_string(), capacity)) else {
                    continue;
                };
                s.describing = false;
                s.describe_soon = false;
                s.last_describe = Some(now);
                match &shape {
                    Ok(shape) => {
                        let budget = shape.budget_of(capacity, s.share);
                        s.set_budget(budget, now);
                        match capacity {
                            Capacity::Write => metrics::gauge!(
                                "sluice_dynamodb_budget_wcu", "table" => table.to_string()
                            )
                            .set(budget),
                            Capacity::Read => metrics::gauge!(
                                "sluice_dynamodb_budget_rcu", "table" => table.to_string()
                            )
                            .set(budget),
                        }
                        s.shape = Some(shape.clone());
                    }
                    Err(e) => {
                        tracing::warn!(%table, error = %e, "coordinator could not read the table's capacity; keeping the last budget");
                    }
                }
            }
        });
    }

    /// One round of the background loop: [`Leases::tick`], then read the
    /// capacity of the tables due, each in its own task.
    pub fn tick_and_describe(&self) {
        for table in self.tick() {
            let me = self.clone();
            let call = self.capacity.describe(&table);
            tokio::spawn(async move {
                let shape = call.await;
                me.described(&table, shape);
            });
        }
    }
}

async fn lease(
    State(c): State<Leases>,
    Json(req): Json<LeaseRequest>,
) -> Result<Json<LeaseGrant>, (StatusCode, String)> {
    c.lease(req).map(Json).map_err(|e| {
        let status = match e {
            LeaseError::WriteEnded { .. } => StatusCode::GONE,
            LeaseError::UnknownWrite(_) => StatusCode::FORBIDDEN,
            // Full, as the placement book answers past its byte budget.
            LeaseError::TooManyLeases => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, e.to_string())
    })
}

async fn end_write(
    State(c): State<Leases>,
    Json(req): Json<EndWrite>,
) -> Result<Json<bool>, (StatusCode, String)> {
    c.end_write(&req)
        .map(|()| Json(true))
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))
}

async fn release(State(c): State<Leases>, Json(req): Json<Release>) -> Json<bool> {
    c.release(&req);
    Json(true)
}

async fn tables(State(c): State<Leases>) -> Json<Vec<TableStatus>> {
    Json(c.status())
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    struct Fixed(TableShape);

    impl CapacitySource for Fixed {
        fn describe(&self, _table: &str) -> BoxFuture<'static, Result<TableShape, DynamoError>> {
            let shape = self.0.clone();
            Box::pin(async move { Ok(shape) })
        }
    }

    fn provisioned(wcu: f64) -> TableShape {
        TableShape {
            keys: vec![("pk".into(), "S".into())],
            indexes: vec![],
            provisioned_wcu: Some(wcu),
            on_demand_max: None,
            ..Default::default()
        }
    }

    fn leases() -> (Leases, Arc<ManualClock>) {
        let clock = ManualClock::new();
        let l = Leases::new(clock.clone(), Arc::new(Fixed(provisioned(2000.0))));
        (l, clock)
    }

    fn req(writer: &str, throttles: u64) -> LeaseRequest {
        LeaseRequest {
            table: "t".into(),
            writer: writer.into(),
            share: CapacityShare {
                percent: 0.5,
                max_units: None,
            },
            budget_hint: 1000.0,
            consumed_wcu: 0.0,
            throttles,
            write_id: "w1".into(),
            capacity: Capacity::Write,
        }
    }

    #[test]
    fn only_planned_writes_get_leases() {
        let (c, clock) = leases();
        let planned = crate::coordinator::planned::PlannedWrites::new(clock);
        let c = c.serving(planned.clone());
        let refused = c.lease(req("a", 0)).err().map(|e| e.to_string());
        assert_eq!(
            refused.as_deref(),
            Some("write w1 was not planned by this cluster's scheduler")
        );
        assert!(c.status().is_empty(), "a refused lease registered a table");
        // A read lease too: only scans the scheduler planned.
        let read = LeaseRequest {
            capacity: Capacity::Read,
            ..req("a", 0)
        };
        assert!(matches!(c.lease(read), Err(LeaseError::UnknownWrite(_))));
        assert!(c.status().is_empty());
        planned.register("w1");
        grant(&c, "a", 0);
    }

    #[test]
    fn an_ended_writes_writers_are_refused_and_lose_their_leases() {
        let (c, _clock) = leases();
        grant(&c, "a", 0);
        let other = LeaseRequest {
            write_id: "w2".into(),
            ..req("b", 0)
        };
        c.lease(other.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.status()[0].writers, vec!["a", "b"]);
        c.end_write(&EndWrite {
            write_id: "w1".into(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        // w1's lease is gone at once; w2's writer is untouched.
        assert_eq!(c.status()[0].writers, vec!["b"]);
        let refused = c.lease(req("a", 0)).err().map(|e| e.to_string());
        assert_eq!(
            refused.as_deref(),
            Some("write w1 has ended (committed, failed or cancelled): stop writing")
        );
        assert!(c.lease(other).is_ok());
        assert!(
            c.end_write(&EndWrite {
                write_id: "x".repeat(MAX_NAME_BYTES + 1)
            })
            .is_err()
        );
    }

    /// A lease that must be granted.
    fn grant(c: &Leases, writer: &str, throttles: u64) -> LeaseGrant {
        c.lease(req(writer, throttles))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn granted(l: &Leases) -> f64 {
        l.status().first().map_or(0.0, |t| t.granted)
    }

    /// A backfill's reads and a job's writes on one table draw on the
    /// table's two capacities, apart: throttled reads never slow writes.
    #[test]
    fn reads_and_writes_of_one_table_have_their_own_budgets() {
        let (c, _clock) = leases();
        assert_eq!(grant(&c, "w", 0).rate, 1000.0);
        let read = LeaseRequest {
            capacity: Capacity::Read,
            budget_hint: 200.0,
            ..req("r", 0)
        };
        let granted = c.lease(read.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((granted.rate, granted.writers), (200.0, 1));
        let cut = c
            .lease(LeaseRequest {
                throttles: 2,
                ..read.clone()
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cut.table_rate, 180.0);
        assert_eq!(grant(&c, "w", 0).table_rate, 1000.0);
        c.described(
            "t",
            Ok(TableShape {
                provisioned_rcu: Some(100.0),
                ..provisioned(600.0)
            }),
        );
        let budgets: Vec<(Capacity, f64)> =
            c.status().iter().map(|t| (t.capacity, t.budget)).collect();
        assert_eq!(
            budgets,
            vec![(Capacity::Read, 50.0), (Capacity::Write, 300.0)]
        );
        c.release(&Release {
            table: "t".into(),
            writer: "r".into(),
            capacity: Capacity::Read,
        });
        assert_eq!(c.status()[0].writers.len(), 0);
        assert_eq!(c.status()[1].writers, vec!["w"]);
    }

    #[test]
    fn shares_follow_live_writers_and_throttles_cut_the_rate() {
        let (c, clock) = leases();
        assert_eq!(grant(&c, "a", 0).rate, 1000.0);
        // b joins while a still holds everything: b gets nothing until a
        // renews and drops to its fair half, then b gets the other half.
        assert_eq!(grant(&c, "b", 0).rate, 0.0);
        assert_eq!(grant(&c, "a", 0).rate, 500.0);
        assert_eq!(grant(&c, "b", 0).rate, 500.0);
        c.release(&Release {
            table: "t".into(),
            writer: "b".into(),
            capacity: Capacity::Write,
        });
        assert_eq!(grant(&c, "a", 0).rate, 1000.0);
        let cut = grant(&c, "a", 3);
        assert_eq!(cut.table_rate, 900.0);
        // At most one cut per second, however many writers report.
        assert_eq!(grant(&c, "a", 1).table_rate, 900.0);
        clock.advance(DECREASE_EVERY);
        assert_eq!(grant(&c, "a", 1).table_rate, 810.0);
    }

    #[test]
    fn a_dead_writer_drops_out_after_the_ttl() {
        let (c, clock) = leases();
        grant(&c, "a", 0);
        grant(&c, "b", 0);
        grant(&c, "a", 0);
        grant(&c, "b", 0);
        // a keeps renewing, b dies.
        for _ in 0..11 {
            clock.advance(RENEW);
            grant(&c, "a", 0);
            c.tick();
        }
        assert_eq!(c.status()[0].writers, vec!["a", "b"], "within the TTL");
        clock.advance(RENEW);
        grant(&c, "a", 0);
        c.tick();
        assert_eq!(c.status()[0].writers, vec!["a"], "after the TTL");
        assert_eq!(grant(&c, "a", 0).rate, 1000.0, "a gets b's share");
    }

    #[test]
    fn the_rate_grows_back_three_percent_of_the_budget_per_second() {
        let (c, clock) = leases();
        grant(&c, "a", 1);
        assert_eq!(c.status()[0].rate, 900.0);
        // No growth within a second of the cut.
        clock.advance(Duration::from_millis(500));
        c.tick();
        assert_eq!(c.status()[0].rate, 900.0);
        clock.advance(Duration::from_millis(500));
        c.tick();
        clock.advance(Duration::from_secs(1));
        c.tick();
        // Growth resumes a second after the cut and credits the half second
        // since the last tick (915), then a full second (945).
        assert!((c.status()[0].rate - 945.0).abs() < 1e-9);
        // Never past the budget.
        for _ in 0..10 {
            clock.advance(Duration::from_secs(1));
            c.tick();
        }
        assert_eq!(c.status()[0].rate, 1000.0);
    }

    #[test]
    fn the_rate_never_drops_below_the_floor() {
        let (c, clock) = leases();
        for _ in 0..100 {
            grant(&c, "a", 1);
            clock.advance(DECREASE_EVERY);
        }
        assert_eq!(c.status()[0].rate, 1000.0 * FLOOR);
    }

    #[test]
    fn grants_never_sum_past_the_rate_while_writers_join_and_leave() {
        let (c, clock) = leases();
        let writers: Vec<String> = (0..32).map(|i| format!("w{i}")).collect();
        // Writer i renews from round i to round i + 15, then leaves.
        for round in 0..48 {
            for (i, w) in writers.iter().enumerate() {
                if (i..i + 16).contains(&round) {
                    grant(&c, w, 0);
                } else if round == i + 16 {
                    c.release(&Release {
                        table: "t".into(),
                        writer: w.clone(),
                        capacity: Capacity::Write,
                    });
                }
                let rate = c.status()[0].rate;
                assert!(
                    granted(&c) <= rate + 1e-6,
                    "round {round}: granted {} > rate {rate}",
                    granted(&c)
                );
            }
            clock.advance(RENEW);
            c.tick();
        }
        // Every writer has left.
        assert_eq!(c.status()[0].writers.len(), 0);
    }

    #[test]
    fn bad_lease_requests_are_refused_and_change_nothing() {
        let (c, _clock) = leases();
        grant(&c, "a", 0);
        let before = c.status();
        let bad = [
            LeaseRequest {
                consumed_wcu: f64::NAN,
                ..req("b", 0)
            },
            LeaseRequest {
                budget_hint: -1.0,
                ..req("b", 0)
            },
            LeaseRequest {
                share: CapacityShare {
                    percent: 7.0,
                    max_units: None,
                },
                ..req("b", 0)
            },
            LeaseRequest {
                share: CapacityShare {
                    percent: 0.5,
                    max_units: Some(0.0),
                },
                ..req("b", 0)
            },
            LeaseRequest {
                writer: "w".repeat(MAX_NAME_BYTES + 1),
                ..req("b", 0)
            },
        ];
        for r in bad {
            assert!(c.lease(r.clone()).is_err(), "{r:?} accepted");
        }
        let after = c.status();
        assert_eq!(after[0].writers, before[0].writers);
        assert_eq!(after[0].consumed_wcu, before[0].consumed_wcu);
        assert_eq!(after[0].rate, before[0].rate);
    }

    #[test]
    fn writers_per_table_are_bounded() {
        let (c, _clock) = leases();
        for i in 0..MAX_WRITERS_PER_TABLE {
            c.lease(req(&format!("w{i}"), 0))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(matches!(
            c.lease(req("one-more", 0)),
            Err(LeaseError::TooManyWriters { .. })
        ));
        // A writer it holds still renews.
        assert!(c.lease(req("w0", 0)).is_ok());
    }

    #[test]
    fn leases_over_all_tables_are_bounded() {
        let (c, _clock) = leases();
        let per_table = MAX_LEASES / 50;
        for t in 0..50 {
            for i in 0..per_table {
                c.lease(LeaseRequest {
                    table: format!("t{t}"),
                    ..req(&format!("w{i}"), 0)
                })
                .unwrap_or_else(|e| panic!("{e}"));
            }
        }
        let one_more = LeaseRequest {
            table: "t-new".into(),
            ..req("w", 0)
        };
        assert!(matches!(
            c.lease(one_more.clone()),
            Err(LeaseError::TooManyLeases)
        ));
        // The route answers it with a 503 naming the cap.
        let answered = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| {
                rt.block_on(super::lease(
                    axum::extract::State(c.clone()),
                    axum::Json(one_more),
                ))
                .map(|_| "granted".to_string())
                .map_err(|(status, text)| format!("{status}: {text}"))
            });
        assert_eq!(
            answered,
            Err(
                "503 Service Unavailable: the coordinator holds 50000 writers' leases already"
                    .into()
            )
        );
        assert_eq!(c.status().len(), 50, "the refused table was not added");
        // Held leases still renew.
        let renewal = LeaseRequest {
            table: "t7".into(),
            ..req("w3", 0)
        };
        assert!(c.lease(renewal).is_ok());
    }

    #[test]
    fn a_later_request_cannot_raise_the_share_or_budget_others_use() {
        let (c, _clock) = leases();
        // A stray client opens the table with a huge hint and share.
        let stray = LeaseRequest {
            share: CapacityShare {
                percent: 1.0,
                max_units: Some(1e9),
            },
            budget_hint: 1e9,
            ..req("stray", 0)
        };
        c.lease(stray).unwrap_or_else(|e| panic!("{e}"));
        // The real writer's lower hint and share win at once.
        grant(&c, "a", 0);
        assert_eq!(c.status()[0].budget, 1000.0);
        c.described("t", Ok(provisioned(2000.0)));
        // Half of 2,000 WCU (the stricter percent), not the stray's 97%.
        assert_eq!(c.status()[0].budget, 1000.0);
    }

    #[test]
    fn idle_tables_are_forgotten() {
        let (c, clock) = leases();
        grant(&c, "a", 0);
        c.release(&Release {
            table: "t".into(),
            writer: "a".into(),
            capacity: Capacity::Write,
        });
        clock.advance(IDLE_TABLE_TTL - Duration::from_secs(1));
        c.tick();
        assert_eq!(c.status().len(), 1);
        clock.advance(Duration::from_secs(1));
        c.tick();
        assert!(c.status().is_empty());
    }

    #[tokio::test]
    async fn a_capacity_change_becomes_the_budget_at_the_next_describe() {
        let (c, clock) = leases();
        grant(&c, "a", 0);
        assert_eq!(
            c.tick(),
            vec!["t".to_string()],
            "first describe due at once"
        );
        assert!(c.tick().is_empty(), "one describe at a time");
        c.described("t", Ok(provisioned(4000.0)));
        let s = &c.status()[0];
        assert_eq!((s.budget, s.rate), (2000.0, 2000.0));
        clock.advance(DESCRIBE_EVERY - Duration::from_millis(1));
        assert!(c.tick().is_empty());
        clock.advance(Duration::from_millis(1));
        assert_eq!(c.tick(), vec!["t".to_string()]);
        // Throttles make the next read come sooner.
        c.described("t", Ok(provisioned(4000.0)));
        grant(&c, "a", 1);
        clock.advance(DESCRIBE_SOON);
        assert_eq!(c.tick(), vec!["t".to_string()]);
        c.described("t", Ok(provisioned(1000.0)));
        assert_eq!(c.status()[0].budget, 500.0);
    }
}
