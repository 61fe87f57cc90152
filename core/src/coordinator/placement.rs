//! Placement: the coordinator's running row counts for skew-aware
//! partitioned writes (`/v1/chunks`).
//!
//! Each map task asks to place the rows of each partition value in one
//! batch; the book keeps a running count per (write, value) and cuts each
//! value's rows into chunks of exactly the target in arrival order,
//! numbering chunks across the write (see `sink::files::route` for the map
//! side). Writes nobody asked about for [`IDLE_WRITE_TTL`] are forgotten.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;

/// How long the coordinator keeps the counts of a write nobody asked about.
pub const IDLE_WRITE_TTL: Duration = Duration::from_secs(3600);

/// A map task's placement request: rows of each partition value (its Hive
/// directory) in one batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkRequest {
    pub write_id: String,
    pub target_rows: u64,
    pub counts: Vec<(String, u64)>,
}

/// Per requested value, in request order: `(chunk sequence, rows)` runs that
/// cover its rows in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChunkResponse {
    pub segments: Vec<Vec<(u64, u64)>>,
}

struct WriteChunks {
    /// Per value: rows placed so far and the sequence of its open chunk.
    values: HashMap<String, (u64, u64)>,
    next_seq: u64,
    touched: Instant,
}

/// The coordinator's side: running counts per write and value.
#[derive(Clone)]
pub struct ChunkBook {
    writes: Arc<Mutex<HashMap<String, WriteChunks>>>,
    clock: Arc<dyn Clock>,
}

impl ChunkBook {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            writes: Arc::default(),
            clock,
        }
    }

    pub fn allocate(&self, req: &ChunkRequest) -> ChunkResponse {
        let target = req.target_rows.max(1);
        let now = self.clock.now();
        let mut writes = match self.writes.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        writes.retain(|_, w| now.duration_since(w.touched) < IDLE_WRITE_TTL);
        let write = writes
            .entry(req.write_id.clone())
            .or_insert_with(|| WriteChunks {
                values: HashMap::new(),
                next_seq: 0,
                touched: now,
            });
        write.touched = now;
        let mut segments = Vec::with_capacity(req.counts.len());
        for (value, count) in &req.counts {
            let (placed, seq) = write.values.entry(value.clone()).or_insert((0, 0));
            let mut left = *count;
            let mut runs = vec![];
            while left > 0 {
                if *placed % target == 0 {
                    *seq = write.next_seq;
                    write.next_seq += 1;
                }
                let take = left.min(target - *placed % target);
                runs.push((*seq, take));
                *placed += take;
                left -= take;
            }
            segments.push(runs);
        }
        ChunkResponse { segments }
    }

    /// Each write the book holds: values seen, rows placed, chunks cut.
    pub fn status(&self) -> Vec<ChunkStatus> {
        let now = self.clock.now();
        let writes = match self.writes.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut out: Vec<ChunkStatus> = writes
            .iter()
            .map(|(id, w)| ChunkStatus {
                write_id: id.clone(),
                values: w.values.len() as u64,
                rows: w.values.values().map(|(placed, _)| placed).sum(),
                chunks: w.next_seq,
                idle_ms: now.duration_since(w.touched).as_millis() as u64,
            })
            .collect();
        out.sort_by_key(|s| s.idle_ms);
        out
    }

    /// `POST /v1/chunks` (placement), `GET /v1/chunks` (status).
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/chunks", post(allocate).get(status))
            .with_state(self)
    }
}

/// What `GET /v1/chunks` reports per write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkStatus {
    pub write_id: String,
    pub values: u64,
    pub rows: u64,
    pub chunks: u64,
    pub idle_ms: u64,
}

async fn status(State(book): State<ChunkBook>) -> Json<Vec<ChunkStatus>> {
    Json(book.status())
}

async fn allocate(
    State(book): State<ChunkBook>,
    Json(req): Json<ChunkRequest>,
) -> Json<ChunkResponse> {
    Json(book.allocate(&req))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn request(write: &str, counts: &[(&str, u64)]) -> ChunkRequest {
        ChunkRequest {
            write_id: write.to_string(),
            target_rows: 10,
            counts: counts.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
        }
    }

    #[test]
    fn values_are_cut_into_chunks_of_the_target_in_arrival_order() {
        let book = ChunkBook::new(ManualClock::new());
        let a = book.allocate(&request("w", &[("id=1", 25), ("id=2", 3)]));
        assert_eq!(
            a.segments,
            vec![vec![(0, 10), (1, 10), (2, 5)], vec![(3, 3)]]
        );
        // The next batch continues each value's open chunk.
        let b = book.allocate(&request("w", &[("id=2", 9), ("id=1", 5)]));
        assert_eq!(b.segments, vec![vec![(3, 7), (4, 2)], vec![(2, 5)]]);
        let c = book.allocate(&request("w", &[("id=1", 1)]));
        assert_eq!(c.segments, vec![vec![(5, 1)]]);
        // Another write counts on its own.
        let d = book.allocate(&request("other", &[("id=1", 1)]));
        assert_eq!(d.segments, vec![vec![(0, 1)]]);
    }

    #[test]
    fn idle_writes_are_forgotten_after_the_ttl() {
        let clock = ManualClock::new();
        let book = ChunkBook::new(clock.clone());
        book.allocate(&request("old", &[("id=1", 15)]));
        clock.advance(IDLE_WRITE_TTL / 2);
        book.allocate(&request("new", &[("id=1", 5)]));
        let status = book.status();
        assert_eq!(status.len(), 2);
        assert_eq!(status[1].idle_ms, (IDLE_WRITE_TTL / 2).as_millis() as u64);
        clock.advance(IDLE_WRITE_TTL / 2);
        // The next request sweeps: "old" is idle for the whole TTL.
        book.allocate(&request("new", &[("id=1", 5)]));
        let ids: Vec<String> = book.status().into_iter().map(|s| s.write_id).collect();
        assert_eq!(ids, vec!["new".to_string()]);
        // A forgotten write starts counting afresh.
        let again = book.allocate(&request("old", &[("id=1", 1)]));
        assert_eq!(again.segments, vec![vec![(0, 1)]]);
    }

    #[test]
    fn status_counts_values_rows_and_chunks() {
        let book = ChunkBook::new(ManualClock::new());
        book.allocate(&request("w", &[("id=1", 25), ("id=2", 3)]));
        let s = &book.status()[0];
        assert_eq!((s.values, s.rows, s.chunks), (2, 28, 4));
    }
}
