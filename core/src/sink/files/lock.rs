//! The output lock: writes to one output directory run one at a time, and a
//! write whose client died stops holding it.
//!
//! The lock lives next to the data, under `<output>/_sluice_lock/`, so every
//! client of every cluster sees the same one. It is a sequence of
//! generations: `<n>.json` names the holder of generation `n` and is created
//! with a conditional create (`If-None-Match: *` on S3, an exclusive link on
//! a local disk), so of two writers taking generation `n` one wins. The
//! newest generation is the lock:
//! - held while its holder renews it (rewrites `<n>.json`) at least once per
//!   the holder's `ttl_ms`, as judged from the store's modification time;
//! - free once the holder released it (removed `<n>.json`), or once it is
//!   older than its ttl (the holder died); the next writer then creates
//!   `<n + 1>.json` (or `1.json` after a release).
//!
//! A check compares both the generation and the write id, so a holder that
//! was paused past its ttl learns at its next [`OutputLock::check`] that it
//! was superseded or that its write ended. The commit checks
//! the lock before it publishes and before it deletes, and writers check it
//! around every upload they start, so a write whose lock is gone can make
//! nothing visible and leaves no upload behind.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;

/// The lock's directory under the output (hidden from readers by its `_`).
pub const LOCK_DIR: &str = "_sluice_lock";
/// How long a holder may go without renewing, unless the write sets
/// `write.lock_ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// How often a waiting writer looks at the lock again.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// Who holds (or held) an output's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub write_id: String,
    /// What is writing: the job file and line.
    pub job: String,
    pub host: String,
    pub pid: u32,
    pub since: DateTime<Utc>,
    /// The holder loses the lock when it has not renewed for this long.
    pub ttl_ms: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "write {} of {} on host {} (pid {}) since {}",
            self.write_id,
            self.job,
            self.host,
            self.pid,
            self.since
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

#[derive(thiserror::Error)]
pub enum LockError {
    #[error(
        "output {url} is locked by {holder}; waited {waited_s}s (set write.lock_wait to wait longer)"
    )]
    Busy {
        url: String,
        holder: Box<Holder>,
        waited_s: u64,
    },
    #[error("write {write_id} no longer holds the lock on {url}: {reason}")]
    Lost {
        url: String,
        write_id: String,
        reason: String,
    },
    #[error("output lock of {url}: {what}")]
    Store {
        url: String,
        what: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("output lock of {url}: unreadable {path}: {reason}")]
    Corrupt {
        url: String,
        path: String,
        reason: String,
    },
}

crate::error::debug_as_display!(LockError);

impl From<LockError> for crate::error::SluiceError {
    fn from(e: LockError) -> Self {
        Self::Layer(Box::new(e))
    }
}

impl From<LockError> for datafusion::common::DataFusionError {
    fn from(e: LockError) -> Self {
        Self::External(Box::new(e))
    }
}

/// The newest generation of a lock, as read from the store.
#[derive(Debug, Clone)]
pub struct Generation {
    pub number: u64,
    pub holder: Holder,
    /// When the holder last renewed (the store's modification time).
    pub renewed: DateTime<Utc>,
}

/// What the lock is now.
#[derive(Debug, Clone)]
pub enum LockState {
    Free {
        next: u64,
        previous: Option<Generation>,
    },
    Held(Generation),
}

/// Whether a process with this pid runs on this machine (Linux's /proc;
/// elsewhere every process counts as alive).
pub fn process_alive(pid: u32) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// One output's lock.
#[derive(Clone)]
pub struct OutputLock {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    url: String,
    clock: Arc<dyn Clock>,
    /// Whether an earlier attempt's generation is taken over (see
    /// [`OutputLock::taking_over_earlier_attempts`]).
    take_over_earlier_attempts: bool,
}

impl OutputLock {
    /// The lock of the output whose base path is `base`.
    pub fn new(store: Arc<dyn ObjectStore>, base: &Path, url: &str, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            dir: base.clone().join(LOCK_DIR),
            url: url.to_string(),
            clock,
            take_over_earlier_attempts: false,
        }
    }

    /// For a write's lock: a generation held by the same write id from
    /// this host, by this process (a statement resubmitted after its
    /// scheduler lost it) or by one that is dead (a micro-batch re-run
    /// after a crash), is an earlier attempt of this write, and is taken
    /// over at once instead of after its ttl. The next generation fences
    /// that attempt off: its tasks, if any still run on a cluster, fail
    /// their lock checks. A live process elsewhere, or on another host, is
    /// waited for as any holder. A stream's checkpoint claim works the same
    /// way: every process of a stream has its id, and a dead one's claim is
    /// taken over at once.
    pub fn taking_over_earlier_attempts(mut self) -> Self {
        self.take_over_earlier_attempts = true;
        self
    }

    fn store_err(&self, what: String) -> impl FnOnce(object_store::Error) -> LockError + '_ {
        move |source| LockError::Store {
            url: self.url.clone(),
            what,
            source: Box::new(source),
        }
    }

    fn json_path(&self, number: u64) -> Path {
        self.dir.clone().join(format!("{number:020}.json"))
    }

    /// Reads the newest generation and decides whether it is held.
    pub async fn state(&self) -> Result<LockState, LockError> {
        let listed: Vec<_> = self
            .store
            .list(Some(&self.dir))
            .try_collect()
            .await
            .map_err(self.store_err("listing".into()))?;
        let newest = listed
            .iter()
            .filter_map(|meta| {
                let n = meta
                    .location
                    .filename()?
                    .strip_suffix(".json")?
                    .parse::<u64>()
                    .ok()?;
                Some((n, meta.last_modified, meta.location.clone()))
            })
            .max_by_key(|(n, _, _)| *n);
        let Some((number, renewed, path)) = newest else {
            return Ok(LockState::Free {
                next: 1,
                previous: None,
            });
        };
        let body = match self.store.get(&path).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(self.store_err(format!("reading {path}")))?,
            // Released or pruned between the listing and the read: look again.
            Err(object_store::Error::NotFound { .. }) => {
                return Box::pin(self.state()).await;
            }
            Err(e) => return Err(self.store_err(format!("reading {path}"))(e)),
        };
        let holder: Holder = serde_json::from_slice(&body).map_err(|e| LockError::Corrupt {
            url: self.url.clone(),
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        let generation = Generation {
            number,
            renewed,
            holder,
        };
        let ttl = chrono::TimeDelta::milliseconds(generation.holder.ttl_ms as i64);
        if self.clock.wall() - generation.renewed > ttl {
            Ok(LockState::Free {
                next: number + 1,
                previous: Some(generation),
            })
        } else {
            Ok(LockState::Held(generation))
        }
    }

    /// Takes the lock for `holder`, waiting up to `wait` for the current
    /// holder to finish. Returns the generation taken.
    pub async fn acquire(&self, holder: &Holder, wait: Duration) -> Result<u64, LockError> {
        let started = self.clock.now();
        let body = serde_json::to_vec(holder).map_err(|e| LockError::Corrupt {
            url: self.url.clone(),
            path: String::new(),
            reason: e.to_string(),
        })?;
        loop {
            let state = match self.state().await? {
                // An earlier attempt of this very write, by this process or
                // a dead one (see `taking_over_earlier_attempts`).
                LockState::Held(current)
                    if self.take_over_earlier_attempts
                        && current.holder.write_id == holder.write_id
                        && current.holder.host == holder.host
                        && (current.holder.pid == holder.pid
                            || !process_alive(current.holder.pid)) =>
                {
                    LockState::Free {
                        next: current.number + 1,
                        previous: Some(current),
                    }
                }
                state => state,
            };
            match state {
                LockState::Free { next, previous } => {
                    let opts = PutOptions {
                        mode: PutMode::Create,
                        ..Default::default()
                    };
                    let path = self.json_path(next);
                    match self.store.put_opts(&path, body.clone().into(), opts).await {
                        Ok(_) => {
                            match previous {
                                Some(p) if p.holder.write_id == holder.write_id => {
                                    tracing::warn!(url = %self.url, previous = %p.holder, "took over the output lock from an earlier attempt of this write")
                                }
                                Some(p) => {
                                    tracing::warn!(url = %self.url, previous = %p.holder, "took over an output lock its holder stopped renewing")
                                }
                                None => {}
                            }
                            self.prune(next).await;
                            return Ok(next);
                        }
                        // Another writer took this generation first.
                        Err(object_store::Error::AlreadyExists { .. }) => continue,
                        Err(e) => return Err(self.store_err(format!("creating {path}"))(e)),
                    }
                }
                LockState::Held(current) => {
                    let waited = self.clock.now().saturating_duration_since(started);
                    if waited >= wait {
                        return Err(LockError::Busy {
                            url: self.url.clone(),
                            holder: Box::new(current.holder),
                            waited_s: waited.as_secs(),
                        });
                    }
                    tokio::time::sleep(WAIT_POLL.min(wait - waited)).await;
                }
            }
        }
    }

    /// Whether generation `number` of `write_id` is still the lock and not
    /// released, whatever its age: the writers' check. Expiry is left to the
    /// client and the commit ([`OutputLock::check`]), so a writer whose clock
    /// runs ahead does not take a live write for a dead one.
    pub async fn check_present(&self, number: u64, write_id: &str) -> Result<(), LockError> {
        let present = match self.state().await? {
            LockState::Held(g) => Some(g),
            LockState::Free { previous, .. } => previous,
        };
        match present {
            Some(g) if g.number == number && g.holder.write_id == write_id => Ok(()),
            Some(g) => Err(LockError::Lost {
                url: self.url.clone(),
                write_id: write_id.to_string(),
                reason: format!("it was taken by {}", g.holder),
            }),
            None => Err(LockError::Lost {
                url: self.url.clone(),
                write_id: write_id.to_string(),
                reason: "the write ended (the lock was released)".into(),
            }),
        }
    }

    /// Ok while generation `number` is the lock and is held.
    pub async fn check(&self, number: u64, write_id: &str) -> Result<(), LockError> {
        let lost = |reason: String| LockError::Lost {
            url: self.url.clone(),
            write_id: write_id.to_string(),
            reason,
        };
        // The write id too: a released lock's numbers start again at 1.
        let ours = |g: &Generation| g.number == number && g.holder.write_id == write_id;
        match self.state().await? {
            LockState::Held(g) if ours(&g) => Ok(()),
            LockState::Held(g) => Err(lost(format!("it was taken by {}", g.holder))),
            LockState::Free {
                previous: Some(g), ..
            } if ours(&g) => Err(lost(format!(
                "it was not renewed for {} ms",
                g.holder.ttl_ms
            ))),
            LockState::Free { .. } => Err(lost("the write ended (the lock was released)".into())),
        }
    }

    /// Renews generation `number` for `holder`; fails if it was lost.
    pub async fn renew(&self, number: u64, holder: &Holder) -> Result<(), LockError> {
        self.check(number, &holder.write_id).await?;
        let body = serde_json::to_vec(holder).map_err(|e| LockError::Corrupt {
            url: self.url.clone(),
            path: String::new(),
            reason: e.to_string(),
        })?;
        let path = self.json_path(number);
        self.store
            .put(&path, body.into())
            .await
            .map_err(self.store_err(format!("renewing {path}")))?;
        Ok(())
    }

    /// Ends generation `number`: the next writer may take the lock at once.
    /// Only this generation's record goes: a newer one (this holder had
    /// expired and was superseded) stays.
    pub async fn release(&self, number: u64) -> Result<(), LockError> {
        let path = self.json_path(number);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.store_err(format!("removing {path}"))(e)),
        }
        // A local store keeps the emptied directory; it is not the output's.
        if let Ok(url) = url::Url::parse(&self.url)
            && url.scheme() == "file"
            && let Ok(dir) = url.to_file_path()
        {
            let _ = std::fs::remove_dir(dir.join(LOCK_DIR));
        }
        Ok(())
    }

    /// Removes the records of generations before `current`: best effort, an
    /// old record left behind is never the newest.
    async fn prune(&self, current: u64) {
        let Ok(listed) = self
            .store
            .list(Some(&self.dir))
            .try_collect::<Vec<_>>()
            .await
        else {
            return;
        };
        for meta in listed {
            let old = meta
                .location
                .filename()
                .and_then(|n| n.split('.').next())
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n < current);
            if old {
                let _ = self.store.delete(&meta.location).await;
            }
        }
    }
}

/// A held lock, renewed in the background until it is released or dropped.
pub struct LockGuard {
    lock: OutputLock,
    number: u64,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    renewing: Option<tokio::task::JoinHandle<()>>,
    lost: Arc<std::sync::atomic::AtomicBool>,
}

impl LockGuard {
    /// Takes the lock (see [`OutputLock::acquire`]) and starts renewing it
    /// every quarter of its ttl.
    pub async fn acquire(
        lock: OutputLock,
        holder: Holder,
        wait: Duration,
    ) -> Result<Self, LockError> {
        let number = lock.acquire(&holder, wait).await?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let every = Duration::from_millis((holder.ttl_ms / 4).max(50));
        let renewing = lock.clone();
        let flag = Arc::clone(&lost);
        let renewing_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {
                        if let Err(e) = renewing.renew(number, &holder).await {
                            tracing::warn!(error = %e, "output lock renewal failed");
                            if matches!(e, LockError::Lost { .. }) {
                                flag.store(true, std::sync::atomic::Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            }
        });
        Ok(Self {
            lock,
            number,
            stop: Some(stop),
            renewing: Some(renewing_task),
            lost,
        })
    }

    pub fn generation(&self) -> u64 {
        self.number
    }

    /// Whether a renewal found the lock taken or released.
    pub fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops renewing and frees the lock. A renewal in flight finishes
    /// first, so it cannot put the record back after it is removed.
    pub async fn release(mut self) -> Result<(), LockError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.renewing.take() {
            let _ = task.await;
        }
        self.lock.release(self.number).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Not released: stop renewing and let the lock expire.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use object_store::memory::InMemory;

    fn holder(write_id: &str, ttl: Duration) -> Holder {
        Holder {
            write_id: write_id.into(),
            job: "job.sql:3".into(),
            host: "h".into(),
            pid: 7,
            since: Utc::now(),
            ttl_ms: ttl.as_millis() as u64,
        }
    }

    fn lock_on(store: &Arc<dyn ObjectStore>, clock: &Arc<ManualClock>) -> OutputLock {
        OutputLock::new(
            Arc::clone(store),
            &Path::from("out"),
            "s3://b/out/",
            Arc::clone(clock) as Arc<dyn Clock>,
        )
    }

    #[tokio::test]
    async fn a_second_writer_is_refused_naming_the_holder() -> Result<(), LockError> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let clock = ManualClock::new();
        let lock = lock_on(&store, &clock);
        let a = lock
            .acquire(&holder("aaa", DEFAULT_TTL), Duration::ZERO)
            .await?;
        assert_eq!(a, 1);
        let err = lock
            .acquire(&holder("bbb", DEFAULT_TTL), Duration::ZERO)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("locked by write aaa of job.sql:3 on host h (pid 7)"),
            "{err}"
        );
        lock.check(a, "aaa").await?;
        lock.release(a).await?;
        let ended = lock.check(a, "aaa").await.err().map(|e| e.to_string());
        assert!(ended.is_some_and(|e| e.contains("the write ended")));
        // Numbers start again after a release; the write id tells them apart.
        let b = lock
            .acquire(&holder("bbb", DEFAULT_TTL), Duration::ZERO)
            .await?;
        assert_eq!(b, 1);
        let lost = lock.check(a, "aaa").await.err().map(|e| e.to_string());
        assert!(lost.is_some_and(|e| e.contains("taken by write bbb")));
        Ok(())
    }

    #[tokio::test]
    async fn a_holder_that_stops_renewing_loses_the_lock() -> Result<(), LockError> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let clock = ManualClock::new();
        let lock = lock_on(&store, &clock);
        let ttl = Duration::from_secs(30);
        let a = lock.acquire(&holder("aaa", ttl), Duration::ZERO).await?;
        clock.advance(Duration::from_secs(29));
        // Renewed 29 s ago: still held.
        assert!(
            lock.acquire(&holder("bbb", ttl), Duration::ZERO)
                .await
                .is_err()
        );
        clock.advance(Duration::from_secs(2));
        let lost = lock.check(a, "aaa").await.err().map(|e| e.to_string());
        assert!(lost.is_some_and(|e| e.contains("not renewed for 30000 ms")));
        let b = lock.acquire(&holder("bbb", ttl), Duration::ZERO).await?;
        assert_eq!(b, 2);
        // The paused holder comes back: it cannot renew.
        let err = lock
            .renew(a, &holder("aaa", ttl))
            .await
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("write aaa no longer holds the lock")));
        // Old generations are pruned; the newest stays the lock.
        let names: Vec<String> = store
            .list(Some(&Path::from("out/_sluice_lock")))
            .map_ok(|m| m.location.filename().unwrap_or_default().to_string())
            .try_collect()
            .await
            .map_err(|e| LockError::Store {
                url: String::new(),
                what: String::new(),
                source: Box::new(e),
            })?;
        assert_eq!(names, vec![format!("{:020}.json", 2)]);
        Ok(())
    }

    #[tokio::test]
    async fn a_rerun_of_the_same_write_takes_over_at_once() -> Result<(), LockError> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let clock = ManualClock::new();
        // Without the opt-in, the same id waits out the ttl.
        let plain = lock_on(&store, &clock);
        plain
            .acquire(&holder("stream s1", DEFAULT_TTL), Duration::ZERO)
            .await?;
        assert!(
            plain
                .acquire(&holder("stream s1", DEFAULT_TTL), Duration::ZERO)
                .await
                .is_err()
        );
        let opted = |dir: &str| {
            OutputLock::new(
                Arc::clone(&store),
                &Path::from(dir),
                &format!("s3://b/{dir}/"),
                Arc::clone(&clock) as Arc<dyn Clock>,
            )
            .taking_over_earlier_attempts()
        };
        let lock = opted("batch-out");
        let with_pid = |pid: u32| Holder {
            pid,
            ..holder("s1b7l2", DEFAULT_TTL)
        };
        let me = std::process::id();
        // A micro-batch's write, whose process died holding the lock.
        let first = lock.acquire(&with_pid(u32::MAX), Duration::ZERO).await?;
        // Its re-run (same write id, same host) does not wait out the ttl.
        let again = lock.acquire(&with_pid(me), Duration::ZERO).await?;
        assert_eq!(again, first + 1);
        // The earlier attempt, if still running somewhere, is superseded.
        assert!(lock.check(first, "s1b7l2").await.is_err());
        lock.check(again, "s1b7l2").await?;
        // This process again (a resubmitted statement): the next one.
        let third = lock.acquire(&with_pid(me), Duration::ZERO).await?;
        assert_eq!(third, again + 1);
        assert!(lock.check(again, "s1b7l2").await.is_err());
        // A live process (pid 1) or another host holding it is waited for.
        let other = opted("other-out");
        other.acquire(&with_pid(1), Duration::ZERO).await?;
        assert!(other.acquire(&with_pid(me), Duration::ZERO).await.is_err());
        let elsewhere = Holder {
            host: "elsewhere".into(),
            ..with_pid(u32::MAX)
        };
        let third_out = opted("third-out");
        third_out.acquire(&elsewhere, Duration::ZERO).await?;
        assert!(
            third_out
                .acquire(&with_pid(me), Duration::ZERO)
                .await
                .is_err()
        );
        // Another write still waits for it.
        assert!(
            lock.acquire(&holder("other", DEFAULT_TTL), Duration::ZERO)
                .await
                .is_err()
        );
        Ok(())
    }

    #[tokio::test]
    async fn writers_racing_for_a_free_lock_get_one_generation_each() -> Result<(), LockError> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let clock = ManualClock::new();
        let lock = lock_on(&store, &clock);
        let (ha, hb) = (holder("aaa", DEFAULT_TTL), holder("bbb", DEFAULT_TTL));
        let (a, b) = tokio::join!(
            lock.acquire(&ha, Duration::ZERO),
            lock.acquire(&hb, Duration::ZERO)
        );
        assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "{a:?} {b:?}");
        Ok(())
    }
}
