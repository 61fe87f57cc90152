//! The client side of the cluster-wide DynamoDB limiter ([`super::leases`]),
//! used by the sink's writers (write capacity) and the scan's partitions
//! (read capacity): a token bucket at the holder's share, kept up to date
//! by a background loop that renews its lease at the coordinator. A writer that
//! cannot reach the coordinator from the start runs at a conservative local
//! share and warns. A writer whose lease is refused because its write ended,
//! or that held a lease and then could not renew it for [`CUT_OFF`] (its
//! executor cut off or paused), stops: its job may be over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::leases::{DECREASE, LeaseGrant, LeaseRequest, RENEW, Release};
use crate::storage::dynamodb::Capacity;

/// Timeout of a lease call; a writer never waits longer on the coordinator.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// A writer that held a lease stops when it could not renew it for this long.
pub const CUT_OFF: Duration = Duration::from_secs(5);

/// A writer's side: a token bucket at the writer's share, kept up to date
/// by a background lease loop.
pub struct Limiter {
    bucket: Mutex<Bucket>,
    report: Mutex<(f64, u64)>,
    detached: AtomicBool,
    table: String,
    writer: String,
    capacity: Capacity,
    url: Option<String>,
    /// The most this writer ever uses, whatever it is granted: its write's
    /// `write.max_units` (and, per grant, the table's whole budget).
    ceiling: f64,
    http: reqwest::Client,
    stop: tokio::sync::watch::Sender<bool>,
    /// Why this writer must stop, once it must.
    revoked: Mutex<Option<String>>,
    /// The last granted renewal.
    last_grant: Mutex<Option<Instant>>,
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
    /// Registers the lease `request` asks for (its consumption and
    /// throttles left at zero) and starts renewing it. `fallback` is the
    /// rate used while the coordinator cannot be reached.
    pub async fn start(
        request: LeaseRequest,
        fallback: f64,
        url: Option<String>,
        http: reqwest::Client,
    ) -> Arc<Self> {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
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
            table: request.table.clone(),
            writer: request.writer.clone(),
            capacity: request.capacity,
            url,
            ceiling: request.share.max_units.unwrap_or(f64::INFINITY),
            http,
            stop,
            revoked: Mutex::new(None),
            last_grant: Mutex::new(None),
        });
        let request = LeaseRequest {
            consumed_wcu: 0.0,
            throttles: 0,
            ..request
        };
        limiter.renew(&request, fallback).await;
        // Weak: a holder dropped without `release()` (a cancelled task, a
        // `LIMIT` met, an error) drops the limiter, whose `Drop` stops
        // this loop; the lease then lapses at the coordinator.
        let me = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(RENEW);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        let Some(me) = me.upgrade() else { break };
                        if me.revoked().is_some() {
                            break;
                        }
                        me.renew(&request, fallback).await;
                    }
                    _ = stopped.changed() => break,
                }
            }
        });
        limiter
    }

    async fn renew(&self, template: &LeaseRequest, fallback: f64) {
        // A lease that lapsed (this process was paused or cut off longer
        // than the cut-off) is not picked up again: the write may have
        // ended meanwhile, and its other writers may have its share.
        if self.lapsed() {
            return;
        }
        let held = *lock(&self.last_grant);
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
                    .timeout(CALL_TIMEOUT)
                    .json(&req)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status);
                match call {
                    Ok(resp) => resp.json::<LeaseGrant>().await.map_err(|e| e.to_string()),
                    Err(e) if e.status() == Some(reqwest::StatusCode::GONE) => {
                        let what = match self.capacity {
                            Capacity::Write => "write",
                            Capacity::Read => "read",
                        };
                        self.revoke(format!("{what} {} has ended", template.write_id));
                        return;
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            None => Err("no coordinator configured".to_string()),
        };
        let rate = match granted {
            Ok(grant) => {
                *lock(&self.last_grant) = Some(Instant::now());
                if self.detached.swap(false, Ordering::Relaxed) {
                    tracing::warn!(table = %self.table, "coordinator reachable again");
                }
                // One writer never takes more than the whole write's
                // budget (capacity x percent as the coordinator last read
                // it, so a capacity raised mid-write is used) nor its
                // `max_units`: a grant that says otherwise is wrong.
                let budget = if grant.budget > 0.0 {
                    grant.budget
                } else {
                    f64::INFINITY
                };
                grant.rate.min(budget).min(self.ceiling)
            }
            Err(e) => {
                if held.is_some() {
                    tracing::warn!(table = %self.table, writer = %self.writer, error = %e, kind = self.capacity.unit(), "lease renewal failed; the writer stops if it fails for {} s", CUT_OFF.as_secs());
                }
                if !self.detached.swap(true, Ordering::Relaxed) {
                    tracing::warn!(table = %self.table, writer = %self.writer, error = %e, rate = fallback, kind = self.capacity.unit(), "DynamoDB coordinator unreachable: writing at a safe local share");
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

    /// Whether the lease lapsed (not renewed for [`CUT_OFF`]); revokes it if so.
    fn lapsed(&self) -> bool {
        let held = *lock(&self.last_grant);
        match held {
            Some(at) if at.elapsed() >= CUT_OFF => {
                self.revoke(format!(
                    "its lease was not renewed for {} s (paused or cut off from the coordinator)",
                    at.elapsed().as_secs()
                ));
                true
            }
            _ => false,
        }
    }

    fn revoke(&self, reason: String) {
        let mut r = lock(&self.revoked);
        if r.is_none() {
            tracing::warn!(table = %self.table, writer = %self.writer, %reason, kind = self.capacity.unit(), "DynamoDB writer stops");
            *r = Some(reason);
        }
    }

    /// Why the writer must stop, if it must.
    pub fn revoked(&self) -> Option<String> {
        lock(&self.revoked).clone()
    }

    /// Takes `wcu` from the bucket, waiting as long as the share requires.
    /// Returns the time waited, or why the writer must stop.
    pub async fn acquire(&self, wcu: f64) -> Result<Duration, String> {
        let started = Instant::now();
        if let Some(reason) = self.revoked() {
            return Err(reason);
        }
        // Checked here too: after a pause the renewal loop may not have run yet.
        if self.lapsed() {
            return Err(self.revoked().unwrap_or_default());
        }
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
            if let Some(reason) = self.revoked() {
                return Err(reason);
            }
        }
        Ok(started.elapsed())
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
                capacity: self.capacity,
            };
            let _ = self
                .http
                .post(format!("{url}/v1/dynamodb/release"))
                .timeout(CALL_TIMEOUT)
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
    use crate::storage::dynamodb::CapacityShare;

    /// The renewal loop holds no strong reference: a holder dropped
    /// without `release()` (a cancelled task, a `LIMIT` met) drops the
    /// limiter, whose `Drop` ends the loop.
    #[tokio::test]
    async fn the_renewal_loop_does_not_keep_a_dropped_limiter_alive() {
        let request = LeaseRequest {
            table: "t".into(),
            writer: "r".into(),
            write_id: "s".into(),
            share: CapacityShare::default(),
            budget_hint: 10.0,
            consumed_wcu: 0.0,
            throttles: 0,
            capacity: Capacity::Read,
        };
        let limiter = Limiter::start(request, 5.0, None, reqwest::Client::new()).await;
        tokio::time::sleep(RENEW * 2).await;
        assert_eq!(Arc::strong_count(&limiter), 1);
        assert_eq!(limiter.rate(), 5.0);
    }

    /// A grant over the write's whole budget or its `max_units` (a
    /// coordinator that is wrong) is clamped on the writer's side.
    #[tokio::test]
    async fn a_grant_over_the_writes_budget_is_clamped() -> Result<(), Box<dyn std::error::Error>> {
        let grant = || async {
            axum::Json(LeaseGrant {
                rate: 1e9,
                table_rate: 1e9,
                budget: 400.0,
                writers: 1,
            })
        };
        let app = axum::Router::new().route("/v1/dynamodb/lease", axum::routing::post(grant));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let request = |max_units| LeaseRequest {
            table: "t".into(),
            writer: "w".into(),
            write_id: "s".into(),
            share: CapacityShare {
                max_units,
                ..CapacityShare::default()
            },
            budget_hint: 400.0,
            consumed_wcu: 0.0,
            throttles: 0,
            capacity: Capacity::Write,
        };
        let http = reqwest::Client::new();
        let limiter = Limiter::start(request(None), 5.0, Some(url.clone()), http.clone()).await;
        assert_eq!(limiter.rate(), 400.0);
        let capped = Limiter::start(request(Some(100.0)), 5.0, Some(url), http).await;
        assert_eq!(capped.rate(), 100.0);
        server.abort();
        Ok(())
    }
}
