//! One write budget per DynamoDB table for the whole cluster.
//!
//! The [`Coordinator`] runs with the scheduler (and in the embedded
//! cluster) and serves a small HTTP API. Every writer partition holds a
//! lease on its table, renewed every [`RENEW`]; each renewal reports what the
//! writer consumed and whether it was throttled, and returns the writer's
//! share: the table's current rate divided among the writers whose leases
//! are live. A writer that finishes releases its lease; one that dies stops
//! renewing and drops out after [`LEASE_TTL`], and the others get its share at
//! their next renewal.
//!
//! The rate starts at the budget (capacity x `write.percent`, capped by
//! `write.max_units`), which the coordinator re-reads with `DescribeTable`
//! every [`DESCRIBE_EVERY`], or after [`DESCRIBE_SOON`] once writers report
//! throttles. Throttles reported by any writer cut the rate
//! (by 10%, once per [`DECREASE_EVERY`]); without throttles it grows back
//! toward the budget by 3% of it per second.
//!
//! Writers pace themselves with a local token bucket at their share, so the
//! coordinator is never on the per-request path. A writer that cannot reach
//! the coordinator runs at a conservative local share and warns.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::client;
use super::spec::{DynamoOptions, TableShape};

pub const RENEW: Duration = Duration::from_millis(250);
pub const LEASE_TTL: Duration = Duration::from_secs(3);
pub const DESCRIBE_EVERY: Duration = Duration::from_secs(2);
/// After throttles, the capacity is read again this soon (a lowered
/// capacity is otherwise seen only at the next regular read).
pub const DESCRIBE_SOON: Duration = Duration::from_millis(500);
pub const DECREASE_EVERY: Duration = Duration::from_secs(1);
/// Multiplicative decrease on throttling.
const DECREASE: f64 = 0.9;
/// Additive increase: this share of the budget per second.
const INCREASE_PER_SEC: f64 = 0.03;
/// The rate never drops below this share of the budget.
const FLOOR: f64 = 0.05;
/// Timeout of a lease call; a writer never waits longer on the coordinator.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The variable naming the coordinator writers use (`http://host:port`).
pub const COORDINATOR_URL_ENV: &str = "SLUICE_COORDINATOR_URL";
/// Default coordinator port, next to the scheduler's 50050.
pub const DEFAULT_COORDINATOR_PORT: u16 = 50090;

static URL: RwLock<Option<String>> = RwLock::new(None);

/// Sets the coordinator writers in this process use, unless
/// `$SLUICE_COORDINATOR_URL` names one.
pub fn set_coordinator_url(url: &str) {
    if let Ok(mut u) = URL.write() {
        *u = Some(url.trim_end_matches('/').to_string());
    }
}

/// The coordinator writers in this process use, if any.
pub fn coordinator_url() -> Option<String> {
    if let Ok(url) = std::env::var(COORDINATOR_URL_ENV) {
        return Some(url.trim_end_matches('/').to_string());
    }
    URL.read().ok().and_then(|u| u.clone())
}

/// A lease request: register or renew, with what happened since the last one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub table: String,
    pub writer: String,
    pub options: DynamoOptions,
    /// The client's budget, used until the coordinator's own `DescribeTable` answers.
    pub budget_hint: f64,
    pub consumed_wcu: f64,
    pub throttles: u64,
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
}

/// What the coordinator knows of one table (`GET /v1/dynamodb/tables`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableStatus {
    pub table: String,
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

struct Lease {
    expires: Instant,
    /// The rate last granted, which the writer uses until it renews.
    granted: f64,
}

struct TableState {
    options: DynamoOptions,
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

/// The cluster-wide limiter; cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    tables: Arc<Mutex<HashMap<String, TableState>>>,
    /// Skew-aware partitioned writes' running counts (same service).
    chunks: crate::write::chunks::ChunkBook,
    started: Instant,
}

impl Default for Coordinator {
    fn default() -> Self {
        Self::new()
    }
}

impl Coordinator {
    pub fn new() -> Self {
        Self {
            tables: Arc::default(),
            chunks: Default::default(),
            started: Instant::now(),
        }
    }

    /// Serves the API on `listener` and runs the lease and describe loop.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let ticker = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                ticker.tick();
            }
        });
        let app = Router::new()
            .route("/v1/dynamodb/lease", post(lease))
            .route("/v1/dynamodb/release", post(release))
            .route("/v1/dynamodb/tables", get(tables))
            .with_state(self.clone())
            .merge(self.chunks.clone().router());
        axum::serve(listener, app).await
    }

    /// Binds `addr` and serves in the background; returns the bound address.
    pub async fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let coordinator = Self::new();
        coordinator.chunks.serve_locally();
        tokio::spawn(async move {
            if let Err(e) = coordinator.serve(listener).await {
                tracing::error!(error = %e, "DynamoDB coordinator stopped");
            }
        });
        tracing::info!(%bound, "DynamoDB write coordinator listening");
        Ok(bound)
    }

    fn with_tables<T>(&self, f: impl FnOnce(&mut HashMap<String, TableState>) -> T) -> T {
        let mut guard = match self.tables.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    pub fn lease(&self, req: LeaseRequest) -> LeaseGrant {
        let now = Instant::now();
        self.with_tables(|tables| {
            let state = tables.entry(req.table.clone()).or_insert_with(|| TableState {
                options: req.options.clone(),
                shape: None,
                budget: req.budget_hint,
                rate: req.budget_hint,
                leases: HashMap::new(),
                last_describe: None,
                describing: false,
                describe_soon: false,
                last_decrease: now - DECREASE_EVERY,
                last_tick: now,
                consumed: 0.0,
                throttles: 0,
                budget_changed_at: None,
            });
            if state.leases.is_empty() {
                // A new job may bring new options.
                state.options = req.options.clone();
                if let Some(shape) = &state.shape {
                    let budget = shape.budget(&state.options);
                    state.set_budget(budget, now);
                }
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
            // writers starting together).
            let others: f64 = state
                .leases
                .iter()
                .filter(|(w, _)| **w != req.writer)
                .map(|(_, l)| l.granted)
                .sum();
            let live = state.leases.len() + usize::from(!state.leases.contains_key(&req.writer));
            let fair = state.rate / live.max(1) as f64;
            let granted = fair.min((state.rate - others).max(state.rate * 0.01 / live as f64));
            state.leases.insert(
                req.writer.clone(),
                Lease {
                    expires: now + LEASE_TTL,
                    granted,
                },
            );
            LeaseGrant {
                rate: granted,
                table_rate: state.rate,
                budget: state.budget,
                writers: state.leases.len(),
            }
        })
    }

    pub fn release(&self, req: &Release) {
        self.with_tables(|tables| {
            if let Some(state) = tables.get_mut(&req.table) {
                state.leases.remove(&req.writer);
            }
        });
    }

    pub fn status(&self) -> Vec<TableStatus> {
        self.with_tables(|tables| {
            let mut out: Vec<TableStatus> = tables
                .iter()
                .map(|(name, s)| TableStatus {
                    table: name.clone(),
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
            out.sort_by(|a, b| a.table.cmp(&b.table));
            out
        })
    }

    /// Expires leases, grows rates back, and starts `DescribeTable` for
    /// tables with writers whose capacity was not read recently.
    fn tick(&self) {
        let now = Instant::now();
        let to_describe: Vec<String> = self.with_tables(|tables| {
            let mut due = Vec::new();
            for (name, s) in tables.iter_mut() {
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
                metrics::gauge!("sluice_dynamodb_rate_wcu", "table" => name.clone()).set(s.rate);
                metrics::gauge!("sluice_dynamodb_writers", "table" => name.clone())
                    .set(s.leases.len() as f64);
            }
            due
        });
        for table in to_describe {
            let me = self.clone();
            tokio::spawn(async move {
                let client = client::client().await;
                let shape = client::describe(&client, &table).await;
                me.with_tables(|tables| {
                    let Some(s) = tables.get_mut(&table) else {
                        return;
                    };
                    s.describing = false;
                    s.describe_soon = false;
                    s.last_describe = Some(Instant::now());
                    match shape {
                        Ok(shape) => {
                            let budget = shape.budget(&s.options);
                            s.set_budget(budget, Instant::now());
                            metrics::gauge!("sluice_dynamodb_budget_wcu", "table" => table.clone())
                                .set(budget);
                            s.shape = Some(shape);
                        }
                        Err(e) => {
                            tracing::warn!(%table, error = %e, "coordinator could not read the table's capacity; keeping the last budget");
                        }
                    }
                });
            });
        }
    }
}

async fn lease(State(c): State<Coordinator>, Json(req): Json<LeaseRequest>) -> Json<LeaseGrant> {
    Json(c.lease(req))
}

async fn release(State(c): State<Coordinator>, Json(req): Json<Release>) -> Json<bool> {
    c.release(&req);
    Json(true)
}

async fn tables(State(c): State<Coordinator>) -> Json<Vec<TableStatus>> {
    Json(c.status())
}

/// `GET /v1/dynamodb/tables` of the coordinator at `url`.
pub async fn fetch_status(url: &str, timeout: Duration) -> Result<Vec<TableStatus>, String> {
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    http.get(format!("{}/v1/dynamodb/tables", url.trim_end_matches('/')))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())
}

/// A writer's side: a token bucket at the writer's share, kept up to date
/// by a background lease loop.
pub struct Limiter {
    bucket: Mutex<Bucket>,
    report: Mutex<(f64, u64)>,
    detached: AtomicBool,
    table: String,
    writer: String,
    url: Option<String>,
    http: reqwest::Client,
    stop: tokio::sync::watch::Sender<bool>,
}

struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A fifth of a second of the share, but at least one full batch.
    fn burst(&self) -> f64 {
        (self.rate * 0.2).max(25.0)
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst());
    }
}

impl Limiter {
    /// Registers a writer and starts renewing its lease. `fallback` is the
    /// rate used while the coordinator cannot be reached.
    pub async fn start(
        table: &str,
        writer: &str,
        options: &DynamoOptions,
        budget_hint: f64,
        fallback: f64,
    ) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .unwrap_or_default();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let url = coordinator_url();
        let limiter = Arc::new(Self {
            bucket: Mutex::new(Bucket {
                rate: fallback,
                // Writers of one stage start together; starting each in a
                // random part of a batch's debt spreads their first
                // requests over one batch interval instead of sending them
                // all at once (200 writers x 25 WCU could offer a 2,000 WCU
                // table 5,000 WCU at once; measured before this: 9-18%
                // throttled requests with 200 writers).
                tokens: -unit_random() * 25.0,
                last: Instant::now(),
            }),
            report: Mutex::new((0.0, 0)),
            detached: AtomicBool::new(false),
            table: table.to_string(),
            writer: writer.to_string(),
            url,
            http,
            stop,
        });
        let request = LeaseRequest {
            table: table.to_string(),
            writer: writer.to_string(),
            options: options.clone(),
            budget_hint,
            consumed_wcu: 0.0,
            throttles: 0,
        };
        limiter.renew(&request, fallback).await;
        let me = Arc::clone(&limiter);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(RENEW);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => me.renew(&request, fallback).await,
                    _ = stopped.changed() => break,
                }
            }
        });
        limiter
    }

    async fn renew(&self, template: &LeaseRequest, fallback: f64) {
        let (consumed, throttles) = {
            let mut r = lock(&self.report);
            std::mem::take(&mut *r)
        };
        let req = LeaseRequest {
            consumed_wcu: consumed,
            throttles,
            ..template.clone()
        };
        let granted = match &self.url {
            Some(url) => {
                let call = self
                    .http
                    .post(format!("{url}/v1/dynamodb/lease"))
                    .json(&req)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status);
                match call {
                    Ok(resp) => resp.json::<LeaseGrant>().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            None => Err("no coordinator configured".to_string()),
        };
        let rate = match granted {
            Ok(grant) => {
                if self.detached.swap(false, Ordering::Relaxed) {
                    tracing::warn!(table = %self.table, "coordinator reachable again");
                }
                grant.rate
            }
            Err(e) => {
                if !self.detached.swap(true, Ordering::Relaxed) {
                    tracing::warn!(table = %self.table, writer = %self.writer, error = %e, rate = fallback, "DynamoDB coordinator unreachable: writing at a safe local share");
                }
                // Keep what was reported for the next successful renewal.
                let mut r = lock(&self.report);
                r.0 += consumed;
                r.1 += throttles;
                fallback
            }
        };
        let mut b = lock(&self.bucket);
        b.refill(Instant::now());
        b.rate = rate.max(0.1);
    }

    /// Takes `wcu` from the bucket, waiting as long as the share requires.
    /// Returns the time waited.
    pub async fn acquire(&self, wcu: f64) -> Duration {
        let started = Instant::now();
        {
            let mut b = lock(&self.bucket);
            b.refill(started);
            b.tokens -= wcu;
        }
        // Sleep off the debt in short steps: a renewal may change the rate
        // meanwhile (a new writer starts on a sliver until the others have
        // given up their surplus).
        loop {
            let wait = {
                let mut b = lock(&self.bucket);
                b.refill(Instant::now());
                if b.tokens >= 0.0 {
                    break;
                }
                Duration::from_secs_f64(-b.tokens / b.rate)
            };
            tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
        }
        started.elapsed()
    }

    /// After a call: what it really consumed (versus `estimated`, already
    /// taken), and whether it was throttled.
    pub fn record(&self, estimated: f64, consumed: f64, throttled: bool) {
        {
            let mut b = lock(&self.bucket);
            b.tokens -= consumed - estimated;
            if throttled {
                // React at once; the coordinator's cut follows at renewal.
                b.rate = (b.rate * DECREASE).max(0.1);
            }
        }
        let mut r = lock(&self.report);
        r.0 += consumed;
        r.1 += u64::from(throttled);
    }

    /// The writer's current share, WCU/s.
    pub fn rate(&self) -> f64 {
        lock(&self.bucket).rate
    }

    /// Gives the share back at once.
    pub async fn release(&self) {
        let _ = self.stop.send(true);
        if let Some(url) = &self.url {
            let body = Release {
                table: self.table.clone(),
                writer: self.writer.clone(),
            };
            let _ = self
                .http
                .post(format!("{url}/v1/dynamodb/release"))
                .json(&body)
                .send()
                .await;
        }
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A number in [0, 1), different on every call.
pub fn unit_random() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    let bits = RandomState::new().hash_one(Instant::now()) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(writer: &str, throttles: u64) -> LeaseRequest {
        LeaseRequest {
            table: "t".into(),
            writer: writer.into(),
            options: DynamoOptions::default(),
            budget_hint: 1000.0,
            consumed_wcu: 0.0,
            throttles,
        }
    }

    #[test]
    fn shares_follow_live_writers_and_throttles_cut_the_rate() {
        let c = Coordinator::new();
        assert_eq!(c.lease(req("a", 0)).rate, 1000.0);
        // b joins while a still holds everything: b gets a sliver until a
        // renews and drops to its fair half, then b gets the other half.
        assert_eq!(c.lease(req("b", 0)).rate, 5.0);
        assert_eq!(c.lease(req("a", 0)).rate, 500.0);
        assert_eq!(c.lease(req("b", 0)).rate, 500.0);
        c.release(&Release {
            table: "t".into(),
            writer: "b".into(),
        });
        assert_eq!(c.lease(req("a", 0)).rate, 1000.0);
        let cut = c.lease(req("a", 3));
        assert_eq!(cut.table_rate, 900.0);
        // At most one cut per second, however many writers report.
        assert_eq!(c.lease(req("a", 1)).table_rate, 900.0);
    }
}
