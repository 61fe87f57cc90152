//! Placement: the coordinator's running row counts for skew-aware
//! partitioned writes (`/v1/chunks`).
//!
//! Each map task asks to place the rows of each partition value in one
//! batch; the book keeps a running count per (write, value) and cuts each
//! value's rows into chunks of exactly the target in arrival order,
//! numbering chunks across the write (see `sink::files::route` for the map
//! side). Writes nobody asked about for [`IDLE_WRITE_TTL`] are forgotten.
//!
//! Every request is checked against fixed bounds before the book changes
//! (chunks one request may cut, values per request and per write, writes
//! held, name lengths): a bad or hostile request gets a 400 naming the
//! bound, and the book's memory stays bounded whatever is sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;

/// How long the coordinator keeps the counts of a write nobody asked about.
pub const IDLE_WRITE_TTL: Duration = Duration::from_secs(3600);

/// Chunks one request may cut: a map task's batch of a few thousand rows
/// cuts at most about one per row.
pub const MAX_CHUNKS_PER_REQUEST: u64 = 100_000;
/// Partition values in one request (at most one per row of a batch).
pub const MAX_VALUES_PER_REQUEST: usize = 100_000;
/// Distinct partition values one write may place.
pub const MAX_VALUES_PER_WRITE: usize = 1_000_000;
/// Writes the book holds at once.
pub const MAX_WRITES: usize = 10_000;
/// Longest write id and partition value (a Hive directory) accepted.
pub const MAX_NAME_BYTES: usize = 4096;
/// Bytes the whole book may hold (values' names and their counts, over
/// every write): the per-write and per-request bounds multiply to far more.
pub const MAX_BOOK_BYTES: usize = 512 * 1024 * 1024;
/// What one value costs the book besides its name (key, counts, map slot).
const VALUE_OVERHEAD: usize = 64;

/// A placement request the book refuses; nothing was placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("target_rows must be at least 1")]
    ZeroTarget,
    #[error("{values} partition values in one request (at most {MAX_VALUES_PER_REQUEST})")]
    TooManyValues { values: usize },
    #[error("the request would cut {chunks} chunks (at most {MAX_CHUNKS_PER_REQUEST})")]
    TooManyChunks { chunks: u64 },
    #[error(
        "write {write_id} would hold {values} partition values (at most {MAX_VALUES_PER_WRITE})"
    )]
    WriteTooWide { write_id: String, values: usize },
    #[error("{MAX_WRITES} writes are being placed already")]
    TooManyWrites,
    #[error("a write id or partition value is over {MAX_NAME_BYTES} bytes")]
    NameTooLong,
    #[error("write {0} was not planned by this cluster's scheduler")]
    UnknownWrite(String),
    #[error(
        "the coordinator's placement book would hold {bytes} bytes (at most {budget}); try again when running writes end"
    )]
    BookFull { bytes: usize, budget: usize },
}

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
    /// What its values cost the book (see [`MAX_BOOK_BYTES`]).
    bytes: usize,
}

/// The coordinator's side: running counts per write and value.
#[derive(Clone)]
pub struct ChunkBook {
    writes: Arc<Mutex<HashMap<String, WriteChunks>>>,
    clock: Arc<dyn Clock>,
    /// Only these writes are placed (none: every write).
    planned: Option<super::planned::PlannedWrites>,
    /// [`MAX_BOOK_BYTES`], smaller in tests.
    budget: usize,
}

impl ChunkBook {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            writes: Arc::default(),
            clock,
            planned: None,
            budget: MAX_BOOK_BYTES,
        }
    }

    #[cfg(test)]
    fn with_budget(mut self, bytes: usize) -> Self {
        self.budget = bytes;
        self
    }

    /// The same book, placing only the writes `planned` knows.
    pub fn serving(mut self, planned: super::planned::PlannedWrites) -> Self {
        self.planned = Some(planned);
        self
    }

    /// Places the request's rows, or refuses it whole (see the bounds).
    pub fn allocate(&self, req: &ChunkRequest) -> Result<ChunkResponse, PlacementError> {
        let target = req.target_rows;
        if target == 0 {
            return Err(PlacementError::ZeroTarget);
        }
        if req.counts.len() > MAX_VALUES_PER_REQUEST {
            return Err(PlacementError::TooManyValues {
                values: req.counts.len(),
            });
        }
        if req.write_id.len() > MAX_NAME_BYTES
            || req.counts.iter().any(|(v, _)| v.len() > MAX_NAME_BYTES)
        {
            return Err(PlacementError::NameTooLong);
        }
        let now = self.clock.now();
        let mut writes = match self.writes.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        writes.retain(|_, w| now.duration_since(w.touched) < IDLE_WRITE_TTL);
        if !writes.contains_key(&req.write_id) && writes.len() >= MAX_WRITES {
            return Err(PlacementError::TooManyWrites);
        }
        let known = writes.get(&req.write_id);
        let mut chunks: u64 = 0;
        let mut new_values = 0usize;
        let mut new_bytes = 0usize;
        // A value named twice in one request is stored once.
        let mut fresh: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for (value, count) in &req.counts {
            let placed = match known.and_then(|w| w.values.get(value)) {
                Some((placed, _)) => *placed,
                None => {
                    if fresh.insert(value.as_str()) {
                        new_values += 1;
                        new_bytes += value.len() + VALUE_OVERHEAD;
                    }
                    0
                }
            };
            chunks = chunks.saturating_add(chunks_cut(placed, *count, target));
        }
        if chunks > MAX_CHUNKS_PER_REQUEST {
            return Err(PlacementError::TooManyChunks { chunks });
        }
        let held = known.map_or(0, |w| w.values.len());
        if held + new_values > MAX_VALUES_PER_WRITE {
            return Err(PlacementError::WriteTooWide {
                write_id: req.write_id.clone(),
                values: held + new_values,
            });
        }
        // Checked last, so a malformed request is told what is wrong with it.
        if let Some(planned) = &self.planned
            && !planned.knows(&req.write_id)
        {
            return Err(PlacementError::UnknownWrite(req.write_id.clone()));
        }
        let held_bytes: usize = writes.values().map(|w| w.bytes).sum();
        if held_bytes + new_bytes > self.budget {
            return Err(PlacementError::BookFull {
                bytes: held_bytes + new_bytes,
                budget: self.budget,
            });
        }
        let write = writes
            .entry(req.write_id.clone())
            .or_insert_with(|| WriteChunks {
                values: HashMap::new(),
                next_seq: 0,
                touched: now,
                bytes: 0,
            });
        write.touched = now;
        write.bytes += new_bytes;
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
        Ok(ChunkResponse { segments })
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
) -> Result<Json<ChunkResponse>, (StatusCode, String)> {
    book.allocate(&req).map(Json).map_err(|e| {
        let status = match e {
            PlacementError::UnknownWrite(_) => StatusCode::FORBIDDEN,
            PlacementError::BookFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, e.to_string())
    })
}

/// Runs `count` more rows of a value with `placed` rows so far produce: one
/// per chunk they touch (the open one, then one per `target` rows).
fn chunks_cut(placed: u64, count: u64, target: u64) -> u64 {
    if count == 0 {
        return 0;
    }
    let room = target - placed % target;
    if count <= room {
        1
    } else {
        1 + (count - room).div_ceil(target)
    }
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
        let a = book
            .allocate(&request("w", &[("id=1", 25), ("id=2", 3)]))
            .unwrap_or_default();
        assert_eq!(
            a.segments,
            vec![vec![(0, 10), (1, 10), (2, 5)], vec![(3, 3)]]
        );
        // The next batch continues each value's open chunk.
        let b = book
            .allocate(&request("w", &[("id=2", 9), ("id=1", 5)]))
            .unwrap_or_default();
        assert_eq!(b.segments, vec![vec![(3, 7), (4, 2)], vec![(2, 5)]]);
        let c = book
            .allocate(&request("w", &[("id=1", 1)]))
            .unwrap_or_default();
        assert_eq!(c.segments, vec![vec![(5, 1)]]);
        // Another write counts on its own.
        let d = book
            .allocate(&request("other", &[("id=1", 1)]))
            .unwrap_or_default();
        assert_eq!(d.segments, vec![vec![(0, 1)]]);
    }

    #[test]
    fn idle_writes_are_forgotten_after_the_ttl() {
        let clock = ManualClock::new();
        let book = ChunkBook::new(clock.clone());
        book.allocate(&request("old", &[("id=1", 15)]))
            .unwrap_or_default();
        clock.advance(IDLE_WRITE_TTL / 2);
        book.allocate(&request("new", &[("id=1", 5)]))
            .unwrap_or_default();
        let status = book.status();
        assert_eq!(status.len(), 2);
        assert_eq!(status[1].idle_ms, (IDLE_WRITE_TTL / 2).as_millis() as u64);
        clock.advance(IDLE_WRITE_TTL / 2);
        // The next request sweeps: "old" is idle for the whole TTL.
        book.allocate(&request("new", &[("id=1", 5)]))
            .unwrap_or_default();
        let ids: Vec<String> = book.status().into_iter().map(|s| s.write_id).collect();
        assert_eq!(ids, vec!["new".to_string()]);
        // A forgotten write starts counting afresh.
        let again = book
            .allocate(&request("old", &[("id=1", 1)]))
            .unwrap_or_default();
        assert_eq!(again.segments, vec![vec![(0, 1)]]);
    }

    #[test]
    fn run_counts_match_the_cutting() {
        let book = ChunkBook::new(ManualClock::new());
        for (placed, count) in [(0, 25), (5, 3), (5, 5), (5, 6), (9, 1), (10, 20), (3, 0)] {
            let fresh = format!("w{placed}-{count}");
            if placed > 0 {
                book.allocate(&request(&fresh, &[("v", placed)]))
                    .unwrap_or_default();
            }
            let runs = book
                .allocate(&request(&fresh, &[("v", count)]))
                .unwrap_or_default()
                .segments
                .concat()
                .len() as u64;
            assert_eq!(
                chunks_cut(placed, count, 10),
                runs,
                "placed {placed}, count {count}"
            );
        }
    }

    #[test]
    fn hostile_requests_are_refused_and_change_nothing() {
        let book = ChunkBook::new(ManualClock::new());
        book.allocate(&request("w", &[("id=1", 5)]))
            .unwrap_or_default();
        let before = book.status();
        let huge = ChunkRequest {
            write_id: "w".into(),
            target_rows: 1,
            counts: vec![("id=1".into(), u64::MAX)],
        };
        assert!(matches!(
            book.allocate(&huge),
            Err(PlacementError::TooManyChunks { .. })
        ));
        let zero = ChunkRequest {
            target_rows: 0,
            ..request("w", &[("id=1", 1)])
        };
        assert_eq!(book.allocate(&zero).err(), Some(PlacementError::ZeroTarget));
        let wide = ChunkRequest {
            write_id: "w".into(),
            target_rows: 10,
            counts: (0..=MAX_VALUES_PER_REQUEST)
                .map(|i| (format!("id={i}"), 0))
                .collect(),
        };
        assert!(matches!(
            book.allocate(&wide),
            Err(PlacementError::TooManyValues { .. })
        ));
        let name = "x".repeat(MAX_NAME_BYTES + 1);
        let long = request("w", &[(name.as_str(), 1)]);
        assert_eq!(
            book.allocate(&long).err(),
            Some(PlacementError::NameTooLong)
        );
        let after = book.status();
        assert_eq!(after.len(), before.len());
        assert_eq!(
            (after[0].values, after[0].rows, after[0].chunks),
            (before[0].values, before[0].rows, before[0].chunks)
        );
    }

    #[test]
    fn a_write_may_not_grow_past_its_value_bound() {
        let book = ChunkBook::new(ManualClock::new());
        let batch = |from: usize| ChunkRequest {
            write_id: "w".into(),
            target_rows: 10,
            counts: (from..from + MAX_VALUES_PER_REQUEST)
                .map(|i| (format!("id={i}"), 1))
                .collect(),
        };
        let per = MAX_VALUES_PER_WRITE / MAX_VALUES_PER_REQUEST;
        for i in 0..per {
            assert!(book.allocate(&batch(i * MAX_VALUES_PER_REQUEST)).is_ok());
        }
        assert!(matches!(
            book.allocate(&batch(per * MAX_VALUES_PER_REQUEST)),
            Err(PlacementError::WriteTooWide { .. })
        ));
        // Values it already holds still place.
        assert!(book.allocate(&batch(0)).is_ok());
    }

    /// Many writes, each within its own bounds, cannot together grow the
    /// book past its byte budget; what they hold still places, and the
    /// budget comes back when a write is forgotten.
    #[test]
    fn the_whole_book_stays_within_its_byte_budget() {
        let clock = ManualClock::new();
        let book = ChunkBook::new(clock.clone()).with_budget(10 * (100 + VALUE_OVERHEAD));
        let req = |write: &str, value: usize| ChunkRequest {
            write_id: write.into(),
            target_rows: 10,
            counts: vec![(format!("{value:0>100}"), 1)],
        };
        for i in 0..10 {
            assert!(book.allocate(&req(&format!("w{i}"), i)).is_ok());
        }
        let full = book.allocate(&req("w10", 10));
        assert!(
            matches!(full, Err(PlacementError::BookFull { bytes, .. }) if bytes == 11 * (100 + VALUE_OVERHEAD)),
            "{full:?}"
        );
        assert!(book.allocate(&req("w3", 3)).is_ok());
        clock.advance(IDLE_WRITE_TTL);
        assert!(book.allocate(&req("w10", 10)).is_ok());
    }

    #[test]
    fn status_counts_values_rows_and_chunks() {
        let book = ChunkBook::new(ManualClock::new());
        book.allocate(&request("w", &[("id=1", 25), ("id=2", 3)]))
            .unwrap_or_default();
        let s = &book.status()[0];
        assert_eq!((s.values, s.rows, s.chunks), (2, 28, 4));
    }
}
