//! Runs a job file against a Ballista scheduler: statement by statement,
//! writes through sluice's distributed writer, progress from the scheduler's
//! REST API, and cleanup of staged files when a write fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use ballista_core::execution_plans::DistributedQueryExec;
use datafusion::catalog::TableProvider;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;
use datafusion_proto::protobuf::LogicalPlanNode;
use object_store::ObjectStoreExt;
use tracing::Instrument;

use super::inspect::{dynamo_insert, starts_with_insert, table_insert, write_defaults};
use super::job::{Action, classify, split_statements, substitute};
use super::preflight::preflight_output;
use super::report::{DynamoOutcome, JobReport, Progress, StatementOutcome, WriteOutcome};
use super::rest::SchedulerApi;
use crate::error::SluiceError;
use crate::exec::Report;
use crate::sink::dynamo::{DynamoCommitReport, DynamoTable, DynamoWriteNode};
use crate::sink::files::lock::{Holder, LockGuard};
use crate::sink::files::manifest::hostname;
use crate::sink::files::{CommitReport, WriteNode, WriteSpec, abandon};

/// Delay before the second cleanup sweep of a failed write.
const CLEANUP_RESWEEP: Duration = Duration::from_secs(2);
/// How long one store call of a re-run's check may take.
const STORE_CALL: Duration = Duration::from_secs(120);

fn store_timeout(url: &str, what: &str) -> DataFusionError {
    DataFusionError::Execution(format!("{url}: {what} took over {STORE_CALL:?}"))
}

/// How long an interrupt waits for the scheduler to accept the job to cancel.
const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// How often a running job's scheduler is asked whether it still knows it.
const LOSS_CHECK: Duration = Duration::from_secs(1);
/// How long a scheduler may not answer before its job counts as lost.
const LOSS_TIMEOUT: Duration = Duration::from_secs(30);
/// [`JobRunner::no_executor_timeout`]'s default.
pub const DEFAULT_NO_EXECUTOR_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a resubmission waits for the scheduler to be back.
const RESUBMIT_WAIT: Duration = Duration::from_secs(120);

pub struct JobRunner {
    ctx: SessionContext,
    api: SchedulerApi,
    progress: Arc<dyn Progress>,
    poll: Duration,
    interrupt: tokio::sync::watch::Receiver<bool>,
    interrupt_tx: Arc<tokio::sync::watch::Sender<bool>>,
    /// Output prefixes no overwrite may replace (`protected_outputs`).
    protected: Vec<String>,
    /// The cluster's coordinator, told when a DynamoDB write ends.
    coordinator: Option<String>,
    /// Set while the runner runs one micro-batch of a stream.
    batch: Option<BatchWrites>,
    /// The scheduler's address, for errors and reconnection waits.
    endpoint: String,
    /// Times a statement whose job the scheduler lost is run again.
    resubmit: u32,
    /// See [`JobRunner::no_executor_timeout`].
    no_executor_timeout: Duration,
    tls: Option<Arc<crate::tls::ClusterTls>>,
    /// The current micro-batch's writes whose commits are recorded and not
    /// yet published (see [`JobRunner::publish`]).
    deferred: std::sync::Mutex<Vec<DeferredWrite>>,
    /// The last run published a write before the batch's commit (a later
    /// write's output overlapped it), or found one an earlier attempt had:
    /// a failure cannot take that back.
    published_early: std::sync::atomic::AtomicBool,
}

/// A micro-batch write whose commit task recorded its intent and published
/// nothing: [`JobRunner::publish`] makes it visible once the batch is
/// committed. Holds the output's lock until then.
pub struct DeferredWrite {
    pub spec: WriteSpec,
    guard: Option<LockGuard>,
}

impl DeferredWrite {
    /// A write a committed batch's record names, to publish after a restart
    /// (its lock is taken again then).
    pub fn recorded(spec: WriteSpec) -> Self {
        Self { spec, guard: None }
    }
}

impl std::fmt::Debug for DeferredWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredWrite")
            .field("write_id", &self.spec.write_id)
            .field("url", &self.spec.url)
            .finish()
    }
}

/// The writes of one micro-batch (see `stream`): each statement's write id
/// is the batch's prefix and its line, so a re-run of the batch after a
/// crash names the same writes, and skips one its earlier attempt committed.
#[derive(Debug, Clone)]
pub struct BatchWrites {
    /// Unique per stream and batch, alphanumeric.
    pub prefix: String,
    /// An earlier attempt of this batch may have staged or committed writes.
    pub resuming: bool,
    /// The columns that name a row's source split (`shard_id`,
    /// `partition`): writes count their rows by the first they have.
    pub count_by: Vec<String>,
}

impl JobRunner {
    pub fn new(
        ctx: SessionContext,
        endpoint: &str,
        progress: Arc<dyn Progress>,
    ) -> Result<Self, SluiceError> {
        let (interrupt_tx, interrupt) = tokio::sync::watch::channel(false);
        // The TLS the session dials with, for the runner's own calls.
        let tls = crate::tls::ClusterTls::of(ctx.state().config());
        Ok(Self {
            api: SchedulerApi::new(endpoint, tls.as_deref())?,
            tls,
            ctx,
            progress,
            poll: Duration::from_millis(250),
            interrupt,
            interrupt_tx: Arc::new(interrupt_tx),
            protected: vec![],
            coordinator: None,
            batch: None,
            endpoint: endpoint.to_string(),
            resubmit: 0,
            no_executor_timeout: DEFAULT_NO_EXECUTOR_TIMEOUT,
            deferred: std::sync::Mutex::new(vec![]),
            published_early: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// How long a job may wait with no executor alive before it is
    /// cancelled and fails (Ballista would keep it queued forever); zero
    /// waits without end.
    pub fn no_executor_timeout(mut self, timeout: Duration) -> Self {
        self.no_executor_timeout = timeout;
        self
    }

    /// Runs a statement again, up to `times` times, when the scheduler
    /// loses its job (restarts or forgets it): once the scheduler answers
    /// again, a write whose lost attempt committed is taken as done, any
    /// other is run again under the same write id.
    pub fn resubmit_on_scheduler_loss(mut self, times: u32) -> Self {
        self.resubmit = times;
        self
    }

    /// [`Self::job_known`], asked up to three times a second apart while
    /// the scheduler does not answer or does not list the job, so one slow
    /// answer does not hide a job's own error behind a loss.
    async fn job_known_settled(&self, id: &str) -> Result<bool, SluiceError> {
        let mut answer = self.job_known(id).await;
        for _ in 0..2 {
            if matches!(answer, Ok(true)) {
                break;
            }
            tokio::time::sleep(LOSS_CHECK).await;
            answer = self.job_known(id).await;
        }
        answer
    }

    /// Whether the scheduler still lists job `id` (queued, running or done).
    /// The job's own page answers once it is planned; before that (and when
    /// it is gone) only the list says, which costs the scheduler more.
    async fn job_known(&self, id: &str) -> Result<bool, SluiceError> {
        match self.api.job(id).await {
            Ok(_) => return Ok(true),
            Err(e @ SluiceError::SchedulerCall { .. }) => return Err(e),
            Err(_) => {}
        }
        let jobs = self.api.jobs().await?;
        Ok(jobs
            .as_array()
            .is_some_and(|list| list.iter().any(|j| j["job_id"].as_str() == Some(id))))
    }

    fn lost(&self, job: Option<&str>, reason: String) -> DataFusionError {
        let reason = if self.resubmit == 0 && self.batch.is_none() {
            format!(
                "{reason}; `sluice submit --resubmit-on-scheduler-loss` runs it again once the scheduler is back"
            )
        } else {
            reason
        };
        DataFusionError::External(Box::new(SluiceError::SchedulerLost {
            endpoint: self.endpoint.clone(),
            job: job.unwrap_or("(not yet accepted)").to_string(),
            reason,
        }))
    }

    /// After a lost job: waits for the scheduler to answer again, so the
    /// statement can be resubmitted (`false`: it did not come back).
    async fn scheduler_back(&self, attempt: u32, error: &DataFusionError) -> bool {
        if attempt > self.resubmit || !is_lost(error) {
            return false;
        }
        tracing::warn!(error = %crate::error::render(error), attempt, "the scheduler lost the job; resubmitting once it answers");
        match super::rest::wait_for_scheduler(&self.endpoint, self.tls.as_deref(), RESUBMIT_WAIT)
            .await
        {
            Ok(()) => {
                // A scheduler that only stopped answering for a while may
                // still run the job: it is cancelled, not run twice at once.
                if let Some(id) = lost_job(error)
                    && matches!(self.job_known(&id).await, Ok(true))
                {
                    tracing::warn!(job_id = %id, "the scheduler still has the lost job: cancelling it first");
                    if let Err(e) = self.api.cancel(&id).await {
                        tracing::warn!(job_id = %id, error = %e, "cancel failed");
                    }
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the scheduler did not come back; not resubmitting");
                false
            }
        }
    }

    /// The coordinator (`http://host:port`) to tell when a DynamoDB write
    /// ends, so its writers stop even where the scheduler cannot reach them.
    pub fn with_coordinator(mut self, url: Option<String>) -> Self {
        self.coordinator = url.map(|u| u.trim_end_matches('/').to_string());
        self
    }

    /// Runs the next runs as one micro-batch (or as plain jobs, with `None`).
    pub fn set_batch(&mut self, batch: Option<BatchWrites>) {
        self.batch = batch;
    }

    /// A write of a micro-batch: named by the batch and the statement's line,
    /// and waiting for the output's lock rather than failing at once (the
    /// stream's previous process may hold it until it expires).
    fn batch_spec(&self, mut spec: WriteSpec, line: usize) -> WriteSpec {
        if let Some(b) = &self.batch {
            spec.write_id = format!("{}l{line}", b.prefix);
            spec.count_by = b.count_by.clone();
            spec.defer_publish = true;
            if spec.lock_wait_ms == 0 {
                spec.lock_wait_ms = spec.lock_ttl_ms.saturating_mul(2);
            }
        }
        spec
    }

    /// For a re-run micro-batch: settles what the earlier attempt of this
    /// write left (a cut-off commit finished or rolled back, its uploads
    /// aborted), then reports its commit if `_SUCCESS` names it.
    async fn committed_earlier(
        &self,
        spec: &WriteSpec,
    ) -> Result<Option<WriteOutcome>, DataFusionError> {
        let store = self
            .ctx
            .runtime_env()
            .object_store_registry
            .get_store(&spec.output_url()?)?;
        abandon(spec, &store).await?;
        if let Some(done) = self.committed_by_success(spec, &store).await? {
            return Ok(Some(done));
        }
        // `_SUCCESS` names another write (a later append to the same
        // output), or was never written (a commit settled forward): the
        // write's own files, which carry its whole id, say it committed.
        self.committed_files(spec, &store).await
    }

    /// The write's commit, if the output's `_SUCCESS` names it.
    async fn committed_by_success(
        &self,
        spec: &WriteSpec,
        store: &Arc<dyn object_store::ObjectStore>,
    ) -> Result<Option<WriteOutcome>, DataFusionError> {
        let path = spec
            .base_path()?
            .join(crate::sink::files::spec::SUCCESS_FILE);
        let read = async {
            match store.get(&path).await {
                Ok(got) => got.bytes().await,
                Err(object_store::Error::NotFound { .. }) => Ok(Default::default()),
                Err(e) => Err(e),
            }
        };
        let bytes = tokio::time::timeout(STORE_CALL, read)
            .await
            .map_err(|_| store_timeout(&spec.url, "reading _SUCCESS"))??;
        if let Ok(done) = serde_json::from_slice::<crate::sink::files::SuccessData>(&bytes)
            && done.job_id == spec.write_id
        {
            return Ok(Some(WriteOutcome {
                output: spec.url.clone(),
                write_id: spec.write_id.clone(),
                rows: done.rows,
                files: done.files.len() as u64,
                bytes: done.bytes,
                commit_ms: 0,
                dynamodb: None,
                rows_by_split: crate::sink::files::manifest::rows_by_split(&done.files),
                dead_letter: false,
                earlier: false,
            }));
        }
        Ok(None)
    }

    /// A write whose files are visible in its output (outside the hidden
    /// staging and lock directories): committed, rows unknown.
    async fn committed_files(
        &self,
        spec: &WriteSpec,
        store: &Arc<dyn object_store::ObjectStore>,
    ) -> Result<Option<WriteOutcome>, DataFusionError> {
        use futures::TryStreamExt;
        let tag = format!("-{}.", spec.file_tag());
        let base = spec.base_path()?;
        let listed: Vec<object_store::ObjectMeta> =
            tokio::time::timeout(STORE_CALL, store.list(Some(&base)).try_collect())
                .await
                .map_err(|_| store_timeout(&spec.url, "listing the output"))??;
        let mine: Vec<&object_store::ObjectMeta> = listed
            .iter()
            .filter(|m| {
                m.location
                    .prefix_match(&base)
                    .is_some_and(|mut parts| parts.all(|p| !p.as_ref().starts_with('_')))
                    && m.location.filename().is_some_and(|f| f.contains(&tag))
            })
            .collect();
        if mine.is_empty() {
            return Ok(None);
        }
        Ok(Some(WriteOutcome {
            output: spec.url.clone(),
            write_id: spec.write_id.clone(),
            rows: 0,
            files: mine.len() as u64,
            bytes: mine.iter().map(|m| m.size).sum(),
            commit_ms: 0,
            dynamodb: None,
            rows_by_split: None,
            dead_letter: false,
            earlier: true,
        }))
    }

    /// Tells the coordinator the write is over: its writers' leases are
    /// revoked. Best effort: a writer that cannot renew stops by itself.
    async fn end_write(&self, write_id: &str) {
        let Some(url) = &self.coordinator else {
            return;
        };
        let body = crate::coordinator::leases::EndWrite {
            write_id: write_id.to_string(),
        };
        let call = async {
            crate::tls::http_client(self.tls.as_deref(), Duration::from_secs(5))?
                .post(format!("{url}/v1/writes/end"))
                .json(&body)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(SluiceError::HttpClient)
        };
        if let Err(e) = call.await {
            tracing::warn!(%write_id, error = %crate::error::render(&e), "could not tell the coordinator the write ended");
        }
    }

    /// Refuses overwrites of these output locations and everything under
    /// them (the operator's `protected_outputs`).
    pub fn protect(mut self, outputs: &[String]) -> Result<Self, SluiceError> {
        for raw in outputs {
            self.protected
                .push(crate::sink::files::normalize_output_url(raw)?.to_string());
        }
        Ok(self)
    }

    fn check_protected(&self, spec: &WriteSpec) -> Result<(), SluiceError> {
        if !spec.overwrite {
            return Ok(());
        }
        // An overwrite replaces everything below its location: refused over
        // a protected location and over one that holds a protected location.
        for p in &self.protected {
            if spec.url.starts_with(p.as_str()) {
                return Err(SluiceError::InvalidOutput {
                    url: spec.url.clone(),
                    reason: format!(
                        "it is under {p}, which the configuration protects (protected_outputs); an overwrite there is refused"
                    ),
                });
            }
            if p.starts_with(spec.url.as_str()) {
                return Err(SluiceError::InvalidOutput {
                    url: spec.url.clone(),
                    reason: format!(
                        "it holds {p}, which the configuration protects (protected_outputs); an overwrite would delete it"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Takes the output's lock for this write (see `sink::files::lock`).
    async fn lock_output(
        &self,
        spec: &WriteSpec,
        file: &str,
        line: usize,
    ) -> Result<LockGuard, SluiceError> {
        let store = self
            .ctx
            .runtime_env()
            .object_store_registry
            .get_store(&spec.output_url()?)
            .map_err(SluiceError::in_statement(file, line))?;
        let holder = Holder {
            write_id: spec.write_id.clone(),
            job: format!("{file}:{line}"),
            host: hostname(),
            pid: std::process::id(),
            since: chrono::Utc::now(),
            ttl_ms: spec.lock_ttl_ms,
        };
        // A resubmitted statement, or a micro-batch re-run after a crash,
        // takes over its own earlier attempt's generation at once.
        let lock = spec
            .lock(store, crate::clock::system())?
            .taking_over_earlier_attempts();
        let wait = Duration::from_millis(spec.lock_wait_ms);
        let acquire = LockGuard::acquire(lock, holder, wait)
            .instrument(tracing::info_span!("sluice.output_lock", url = %spec.url));
        // Waiting for another write's lock ends at Ctrl-C, not after the wait.
        let mut interrupt = self.interrupt.clone();
        let interrupted = async move {
            while !*interrupt.borrow() {
                if interrupt.changed().await.is_err() {
                    futures::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            guard = acquire => Ok(guard?),
            () = interrupted => Err(SluiceError::Interrupted {
                file: file.to_string(),
                line,
            }),
        }
    }

    /// A handle that interrupts the run (Ctrl-C): the running job is
    /// cancelled on the scheduler, its write cleaned up, and the run fails,
    /// unless the job had already finished.
    pub fn interrupter(&self) -> Interrupter {
        Interrupter(Arc::clone(&self.interrupt_tx))
    }

    /// Whether the running job was interrupted (a stop, a timeout) and
    /// not reset since.
    pub fn interrupted(&self) -> bool {
        *self.interrupt.borrow()
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Runs every statement of `source` in order; stops at the first failure.
    /// In a micro-batch, the writes are left to [`JobRunner::publish`]
    /// (see [`JobRunner::take_deferred`]); when a statement fails, the
    /// batch's earlier writes are taken back, so nothing of it is visible.
    pub async fn run(
        &self,
        file: &str,
        source: &str,
        cli_vars: &HashMap<String, String>,
    ) -> Result<JobReport, SluiceError> {
        // Left by an earlier batch that was cancelled mid-way: its re-run
        // settles them.
        self.deferred_writes().clear();
        self.published_early
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let result = self.run_statements(file, source, cli_vars, false).await;
        if result.is_err() {
            self.discard_deferred().await;
        }
        result
    }

    /// Whether the last [`JobRunner::run`] published a write of its batch
    /// before the batch committed, or found one published (which a failure
    /// does not take back).
    pub fn published_early(&self) -> bool {
        self.published_early
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets an earlier run's [`JobRunner::published_early`]: a batch's
    /// attempt that fails before its job runs must not read the last one's.
    pub fn forget_early_publish(&self) {
        self.published_early
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Runs `source` as [`JobRunner::run`] does, but writes nothing: each
    /// write's (or `INSERT`'s) query is run and its rows dropped. Whether
    /// the job's SQL fails on the data the session's tables hold now (a
    /// stream looks for the records a batch fails on with it).
    pub async fn probe(
        &self,
        file: &str,
        source: &str,
        cli_vars: &HashMap<String, String>,
    ) -> Result<(), SluiceError> {
        self.run_statements(file, source, cli_vars, true)
            .await
            .map(drop)
    }

    /// Runs a query for [`JobRunner::probe`], dropping its rows.
    async fn run_dropping(&self, plan: LogicalPlan) -> Result<Option<String>, DataFusionError> {
        let df = self.ctx.execute_logical_plan(plan).await?;
        let physical = df.create_physical_plan().await?;
        let (job_id, _) = self.execute_keeping(physical, false).await?;
        Ok(job_id)
    }

    fn deferred_writes(&self) -> std::sync::MutexGuard<'_, Vec<DeferredWrite>> {
        // A panic elsewhere cannot leave the list half-changed: take it as is.
        self.deferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The last run's writes whose publish waits for their batch's commit.
    pub fn take_deferred(&self) -> Vec<DeferredWrite> {
        std::mem::take(&mut *self.deferred_writes())
    }

    /// Takes back the recorded writes of a batch that failed: their
    /// uploads aborted and staging removed, their locks released.
    pub async fn discard_deferred(&self) {
        let writes = self.take_deferred();
        for w in writes {
            let Some(guard) = w.guard else { continue };
            if let Err(e) = self.cleanup(&w.spec, guard).await {
                tracing::warn!(write_id = %w.spec.write_id, error = %e, "taking back a failed batch's write failed; its re-run settles it");
            }
        }
    }

    /// Publishes a committed batch's writes, each finishing its recorded
    /// commit (idempotent: a write already published is left as it is).
    /// A write without its lock (after a restart) takes it again first.
    /// On failure the batch stays committed and the caller tries again.
    pub async fn publish(&self, writes: Vec<DeferredWrite>) -> Result<(), SluiceError> {
        fn failed(spec: &WriteSpec) -> impl Fn(DataFusionError) -> SluiceError + '_ {
            move |e| SluiceError::Publish {
                write_id: spec.write_id.clone(),
                url: spec.url.clone(),
                source: Box::new(e),
            }
        }
        for w in writes {
            let mut spec = w.spec;
            let store = self
                .ctx
                .runtime_env()
                .object_store_registry
                .get_store(&spec.output_url()?)
                .map_err(failed(&spec))?;
            let guard = match w.guard {
                Some(g) => g,
                None => {
                    // After a restart, most are published already: no lock.
                    let left = crate::sink::files::unpublished(&spec, &store)
                        .await
                        .map_err(failed(&spec))?;
                    if !left {
                        self.check_published(&spec, &store).await;
                        continue;
                    }
                    self.lock_output(&spec, "publish", 0).await?
                }
            };
            spec.lock_generation = Some(guard.generation());
            let done = crate::sink::files::finish(&spec, &store)
                .instrument(tracing::info_span!("sluice.publish", write_id = %spec.write_id, url = %spec.url))
                .await
                .map_err(failed(&spec))?;
            match done {
                Some(c) => {
                    tracing::info!(write_id = %spec.write_id, files = c.files.len(), rows = c.rows, "published")
                }
                None => self.check_published(&spec, &store).await,
            }
            if let Err(e) = guard.release().await {
                tracing::warn!(error = %e, "releasing the output lock failed; it expires");
            }
            if let Err(e) = self.sweep(&spec).await {
                tracing::warn!(error = %e, write_id = %spec.write_id, "sweeping after the publish failed");
            }
        }
        Ok(())
    }

    /// For a committed batch's write with no recorded commit left: says so
    /// loudly if nothing of it is visible either.
    async fn check_published(&self, spec: &WriteSpec, store: &Arc<dyn object_store::ObjectStore>) {
        let found = match self.committed_by_success(spec, store).await {
            Ok(Some(_)) => true,
            _ => matches!(self.committed_files(spec, store).await, Ok(Some(_))),
        };
        if found {
            tracing::debug!(write_id = %spec.write_id, "already published");
        } else {
            tracing::warn!(
                write_id = %spec.write_id,
                url = %spec.url,
                "a committed batch's write has no recorded commit left and no file of it is visible: it wrote no rows, or its recorded commit was removed"
            );
        }
    }

    /// Before a batch writes to an output an earlier write of the same
    /// batch wrote to (or one inside the other): that earlier write is
    /// published first. Its lock would block this write, and an overwrite
    /// must see it. The pair is then not published together.
    async fn publish_overlapping(&self, url: &str) -> Result<(), SluiceError> {
        let overlapping: Vec<DeferredWrite> = {
            let mut all = self.deferred_writes();
            let (hit, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut *all)
                .into_iter()
                .partition(|w| w.spec.url.starts_with(url) || url.starts_with(w.spec.url.as_str()));
            *all = rest;
            hit
        };
        if overlapping.is_empty() {
            return Ok(());
        }
        tracing::info!(%url, writes = overlapping.len(), "publishing the batch's earlier write to this output first");
        self.published_early
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.publish(overlapping).await
    }

    async fn run_statements(
        &self,
        file: &str,
        source: &str,
        cli_vars: &HashMap<String, String>,
        probe: bool,
    ) -> Result<JobReport, SluiceError> {
        let started = Instant::now();
        let mut vars = cli_vars.clone();
        let statements = split_statements(source);
        if statements.is_empty() {
            return Err(SluiceError::Syntax {
                file: file.to_string(),
                line: 1,
                message: "the job has no statements".into(),
            });
        }
        let mut outcomes = Vec::new();
        let total = statements.len();
        for (i, raw) in statements.iter().enumerate() {
            if *self.interrupt.borrow() {
                return Err(SluiceError::Interrupted {
                    file: file.to_string(),
                    line: raw.line,
                });
            }
            let text = substitute(&raw.text, &vars, file, raw.line)?;
            if !probe {
                self.progress.statement_started(i, total, raw.line, &text);
            }
            let span = tracing::info_span!("sluice.statement", file, line = raw.line);
            let t0 = Instant::now();
            super::preflight::refuse_secrets(&text, file, raw.line)?;
            let action = classify(&text, file, raw.line)?;
            let stmt_err = SluiceError::in_statement(file, raw.line);
            let mut outcome = StatementOutcome {
                line: raw.line,
                kind: "sql",
                job_id: None,
                duration_ms: 0,
                write: None,
                result_rows: 0,
                batches: vec![],
            };
            match action {
                Action::Sql(sql) if probe && starts_with_insert(&sql) => {
                    self.set_job_name(file, raw.line);
                    let plan = self.ctx.sql(&sql).await.map_err(stmt_err)?;
                    let plan = match plan.into_unoptimized_plan() {
                        LogicalPlan::Dml(insert) => Arc::unwrap_or_clone(insert.input),
                        other => other,
                    };
                    outcome.job_id = self
                        .run_dropping(plan)
                        .instrument(span)
                        .await
                        .map_err(stmt_err)?;
                }
                Action::Write { query, .. } if probe => {
                    self.set_job_name(file, raw.line);
                    let plan = self.ctx.sql(&query).await.map_err(stmt_err)?;
                    outcome.job_id = self
                        .run_dropping(plan.into_unoptimized_plan())
                        .instrument(span)
                        .await
                        .map_err(stmt_err)?;
                }
                Action::SetVar { key, value } => {
                    outcome.kind = "set";
                    // A `--var` wins: SETs in the file are defaults.
                    if !cli_vars.contains_key(&key) {
                        vars.insert(key, value);
                    }
                }
                Action::Sql(sql) if starts_with_insert(&sql) => {
                    self.set_job_name(file, raw.line);
                    let plan = self
                        .ctx
                        .sql(&sql)
                        .await
                        .map_err(stmt_err)?
                        .into_unoptimized_plan();
                    if let Some((input, table)) = dynamo_insert(&plan) {
                        outcome.kind = "write";
                        let (job_id, write) = self
                            .run_dynamo_write(input, table, file, raw.line)
                            .instrument(span)
                            .await?;
                        outcome.job_id = job_id;
                        outcome.write = Some(write);
                    } else {
                        match table_insert(&plan, &write_defaults(&vars)).map_err(stmt_err)? {
                            Some((input, spec)) => {
                                let spec = self.batch_spec(spec, raw.line);
                                outcome.kind = "write";
                                let (job_id, write) = self
                                    .run_write_plan(input, spec, file, raw.line)
                                    .instrument(span)
                                    .await?;
                                outcome.job_id = job_id;
                                outcome.write = Some(write);
                            }
                            None => {
                                let (job_id, batches) = async {
                                    let df = self.ctx.execute_logical_plan(plan).await?;
                                    self.execute(df.create_physical_plan().await?).await
                                }
                                .instrument(span)
                                .await
                                .map_err(stmt_err)?;
                                outcome.job_id = job_id;
                                outcome.batches = batches;
                            }
                        }
                    }
                }
                Action::Sql(sql) => {
                    let (job_id, batches) = self
                        .run_sql(&sql, file, raw.line)
                        .instrument(span)
                        .await
                        .map_err(stmt_err)?;
                    outcome.job_id = job_id;
                    outcome.result_rows = batches.iter().map(|b| b.num_rows() as u64).sum();
                    outcome.batches = batches;
                }
                Action::Write {
                    query,
                    url,
                    format,
                    overwrite,
                    options,
                    partition_by,
                } => {
                    let mut options = options;
                    for (key, value) in write_defaults(&vars) {
                        options.entry(key).or_insert(value);
                    }
                    let spec = self.batch_spec(
                        WriteSpec::new(&url, format, overwrite, options)?
                            .with_partition_by(partition_by),
                        raw.line,
                    );
                    outcome.kind = "write";
                    let (job_id, write) = self
                        .run_write(&query, spec, file, raw.line)
                        .instrument(span)
                        .await?;
                    outcome.job_id = job_id;
                    outcome.write = Some(write);
                }
            }
            outcome.duration_ms = t0.elapsed().as_millis() as u64;
            if !probe {
                self.progress.statement_finished(&outcome);
            }
            outcomes.push(outcome);
        }
        let writes = || outcomes.iter().filter_map(|o| o.write.as_ref());
        Ok(JobReport {
            job_file: file.to_string(),
            job_ids: outcomes.iter().filter_map(|o| o.job_id.clone()).collect(),
            rows_written: writes().map(|w| w.rows).sum(),
            files_written: writes().map(|w| w.files).sum(),
            bytes_written: writes().map(|w| w.bytes).sum(),
            duration_ms: started.elapsed().as_millis() as u64,
            statements: outcomes,
        })
    }

    fn set_job_name(&self, file: &str, line: usize) {
        let name = format!("sluice {file}:{line}");
        let state = self.ctx.state_ref();
        let mut state = state.write();
        // Unknown keys only when Ballista's extension is missing; the name is cosmetic.
        let _ = state
            .config_mut()
            .options_mut()
            .set("ballista.job.name", &name);
    }

    async fn run_sql(
        &self,
        sql: &str,
        file: &str,
        line: usize,
    ) -> Result<(Option<String>, Vec<RecordBatch>), DataFusionError> {
        self.set_job_name(file, line);
        let mut attempt = 0;
        loop {
            let df = self.ctx.sql(sql).await?;
            // A `SET` over a ceiling fails at its own line, not at the next
            // job the scheduler refuses.
            crate::plan::limits::check_settings(self.ctx.state().config())?;
            let plan = df.create_physical_plan().await?;
            match self.execute(plan).await {
                Err(e) if self.scheduler_back(attempt + 1, &e).await => attempt += 1,
                other => return other,
            }
        }
    }

    async fn run_write(
        &self,
        query: &str,
        spec: WriteSpec,
        file: &str,
        line: usize,
    ) -> Result<(Option<String>, WriteOutcome), SluiceError> {
        let stmt_err = SluiceError::in_statement(file, line);
        let input = self
            .ctx
            .sql(query)
            .await
            .map_err(stmt_err)?
            .into_unoptimized_plan();
        self.run_write_plan(input, spec, file, line).await
    }

    async fn run_write_plan(
        &self,
        input: LogicalPlan,
        spec: WriteSpec,
        file: &str,
        line: usize,
    ) -> Result<(Option<String>, WriteOutcome), SluiceError> {
        let dead_letter = super::inspect::keeps_only_errors(&input);
        let (job_id, mut outcome) = self.commit_write_plan(input, spec, file, line).await?;
        outcome.dead_letter = dead_letter;
        Ok((job_id, outcome))
    }

    async fn commit_write_plan(
        &self,
        input: LogicalPlan,
        spec: WriteSpec,
        file: &str,
        line: usize,
    ) -> Result<(Option<String>, WriteOutcome), SluiceError> {
        let stmt_err = SluiceError::in_statement(file, line);
        self.check_protected(&spec)?;
        preflight_output(&spec, &self.ctx.runtime_env().object_store_registry).await?;
        if spec.defer_publish {
            self.publish_overlapping(&spec.url).await?;
        }
        let mut spec = spec;
        let mut guard = self.lock_output(&spec, file, line).await?;
        spec.lock_generation = Some(guard.generation());
        if self.batch.as_ref().is_some_and(|b| b.resuming) {
            match self.committed_earlier(&spec).await {
                Ok(Some(done)) => {
                    tracing::info!(write_id = %spec.write_id, "the batch's earlier attempt committed this write");
                    // Found done, it was visible before this batch's commit.
                    self.published_early
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    if let Err(e) = guard.release().await {
                        tracing::warn!(error = %e, "releasing the output lock failed; it expires");
                    }
                    return Ok((None, done));
                }
                Ok(None) => {}
                Err(e) => {
                    if let Err(e) = guard.release().await {
                        tracing::warn!(error = %e, "releasing the output lock failed; it expires");
                    }
                    return Err(stmt_err(e));
                }
            }
        }
        self.set_job_name(file, line);
        let mut attempt = 0;
        let result = loop {
            let result = async {
                let planned = self
                    .plan_physical(
                        WriteNode::try_new(input.clone(), spec.clone()).map(WriteNode::into_plan),
                    )
                    .await?;
                self.execute(planned).await
            }
            .await;
            match result {
                Err(e) if self.scheduler_back(attempt + 1, &e).await => {
                    attempt += 1;
                    // The lost attempt's commit may have run: settle it, and
                    // take its commit as this write's.
                    match self.committed_earlier(&spec).await {
                        Ok(Some(done)) => {
                            tracing::info!(write_id = %spec.write_id, "the lost job had committed this write");
                            if let Err(e) = guard.release().await {
                                tracing::warn!(error = %e, "releasing the output lock failed; it expires");
                            }
                            return Ok((None, done));
                        }
                        Ok(None) => {}
                        Err(settle) => break Err(settle),
                    }
                    // A new lock generation, taken while this one is held
                    // (a release would let the numbers start again at 1, with
                    // the same write id): the lost job's tasks, still running
                    // on executors, fail their lock check instead of writing
                    // beside the new attempt.
                    let previous = guard;
                    guard = self.lock_output(&spec, file, line).await?;
                    drop(previous);
                    spec.lock_generation = Some(guard.generation());
                }
                other => break other,
            }
        };
        let mut kept = None;
        let (job_id, batches) = match result {
            // Published with the batch, still holding the output.
            Ok(r) if spec.defer_publish => {
                kept = Some(guard);
                r
            }
            Ok(r) => {
                if let Err(e) = guard.release().await {
                    tracing::warn!(error = %e, "releasing the output lock failed; it expires");
                }
                // A task still running somewhere (cut off, or a lost attempt)
                // may have started an upload after the commit's abort pass
                // and before the release: the write is over, sweep it.
                if let Err(e) = self.sweep(&spec).await {
                    tracing::warn!(error = %e, write_id = %spec.write_id, "sweeping after the commit failed");
                }
                r
            }
            Err(e) => {
                // A lost job may have committed before the scheduler went:
                // then the write is done, and saying it failed would invite
                // a second append.
                if is_lost(&e)
                    && let Ok(Some(done)) = self.committed_earlier(&spec).await
                {
                    tracing::warn!(write_id = %spec.write_id, "the scheduler lost the job after it committed the write");
                    if let Err(e) = guard.release().await {
                        tracing::warn!(error = %e, "releasing the output lock failed; it expires");
                    }
                    return Ok((None, done));
                }
                // The commit is the job's last task: a job that fails after
                // it (its one result row could not be fetched from an
                // executor cut off meanwhile) wrote everything, and
                // `_SUCCESS` names the write.
                if !is_lost(&e)
                    && let Ok(store) = self
                        .ctx
                        .runtime_env()
                        .object_store_registry
                        .get_store(&spec.output_url()?)
                    && let Ok(Some(done)) = self.committed_by_success(&spec, &store).await
                {
                    tracing::warn!(write_id = %spec.write_id, error = %crate::error::render(&e), "the job failed after its commit; the write is committed");
                    if let Err(e) = guard.release().await {
                        tracing::warn!(error = %e, "releasing the output lock failed; it expires");
                    }
                    return Ok((None, done));
                }
                // A failed job commits nothing; remove what its tasks staged.
                match self.cleanup(&spec, guard).await {
                    Ok(aborted) if is_lost(&e) => tracing::warn!(
                        write_id = %spec.write_id,
                        aborted_uploads = aborted,
                        "the scheduler lost the job: its uploads are aborted and nothing of the write is visible"
                    ),
                    Ok(_) => {}
                    Err(clean) => {
                        tracing::warn!(error = %clean, write_id = %spec.write_id, "staging cleanup failed")
                    }
                }
                return Err(stmt_err(e));
            }
        };
        let report = CommitReport::from_batches(&batches)
            .map_err(stmt_err)?
            .pop()
            .ok_or_else(|| {
                stmt_err(DataFusionError::Execution(
                    "the write returned no commit summary".into(),
                ))
            })?;
        if let Some(guard) = kept {
            self.deferred_writes().push(DeferredWrite {
                spec: spec.clone(),
                guard: Some(guard),
            });
        }
        Ok((
            job_id,
            WriteOutcome {
                output: spec.url.clone(),
                write_id: spec.write_id.clone(),
                rows: report.rows,
                files: report.files,
                bytes: report.bytes,
                commit_ms: report.commit_ms,
                dynamodb: None,
                rows_by_split: report.rows_by_split(),
                dead_letter: false,
                earlier: false,
            },
        ))
    }

    /// Plans a logical plan built by sluice (a write node over a query).
    async fn plan_physical(
        &self,
        plan: Result<LogicalPlan, DataFusionError>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        self.ctx
            .execute_logical_plan(plan?)
            .await?
            .create_physical_plan()
            .await
    }

    /// `INSERT INTO` a DynamoDB table: checks the key schema against
    /// `DescribeTable` before anything runs, then writes through the
    /// cluster's writers and limiter.
    async fn run_dynamo_write(
        &self,
        input: LogicalPlan,
        table: Arc<dyn TableProvider>,
        file: &str,
        line: usize,
    ) -> Result<(Option<String>, WriteOutcome), SluiceError> {
        let stmt_err = SluiceError::in_statement(file, line);
        let Some(table) = table.downcast_ref::<DynamoTable>() else {
            return Err(stmt_err(DataFusionError::Internal(
                "not a DynamoDB table".into(),
            )));
        };
        let spec = crate::sink::dynamo::plan_write(table, input.schema().as_arrow())
            .await
            .map_err(|e| stmt_err(DataFusionError::Plan(e.to_string())))?;
        self.set_job_name(file, line);
        let planned = self
            .plan_physical(
                DynamoWriteNode::try_new(input, spec.clone()).map(DynamoWriteNode::into_plan),
            )
            .await
            .map_err(stmt_err)?;
        let result = self.execute(planned).await;
        // Over either way: writers still running anywhere must stop.
        self.end_write(&spec.write_id).await;
        let (job_id, batches) = result.map_err(stmt_err)?;
        let r = DynamoCommitReport::from_batches(&batches)
            .map_err(stmt_err)?
            .pop()
            .ok_or_else(|| {
                stmt_err(DataFusionError::Execution(
                    "the write returned no summary".into(),
                ))
            })?;
        let elapsed = r.elapsed_ms.max(1) as f64 / 1000.0;
        let d = DynamoOutcome {
            table: spec.table.clone(),
            items: r.items,
            retried: r.retried,
            dead_lettered: r.dead_lettered,
            dead_letter: r.dead_letter,
            throttles: r.throttles,
            calls: r.calls,
            consumed_wcu: r.consumed_wcu,
            wcu_per_sec: r.consumed_wcu as f64 / elapsed,
            budget_wcu: spec.budget_hint,
            build_ms: r.build_ms,
            call_ms: r.call_ms,
            response_ms: r.response_ms,
            wait_ms: r.wait_ms,
        };
        Ok((
            job_id,
            WriteOutcome {
                output: format!("dynamodb://{}", spec.table),
                write_id: spec.write_id.clone(),
                rows: d.items,
                files: 0,
                bytes: 0,
                commit_ms: 0,
                dynamodb: Some(d),
                rows_by_split: None,
                dead_letter: false,
                earlier: false,
            },
        ))
    }

    /// A failed job commits nothing: abort its uploads and remove what its
    /// tasks staged, end the write by releasing its lock, and sweep again.
    /// A task still running (cancelling, or cut off from the scheduler)
    /// checks the lock after it starts an upload: one started before the
    /// release is found by the last sweep, one started after it aborts itself.
    async fn cleanup(&self, spec: &WriteSpec, guard: LockGuard) -> Result<u64, DataFusionError> {
        let store = self
            .ctx
            .runtime_env()
            .object_store_registry
            .get_store(&spec.output_url()?)?;
        // Released whatever the first sweep says, then swept again.
        let first = abandon(spec, &store).await;
        if let Err(e) = &first {
            tracing::warn!(error = %e, write_id = %spec.write_id, "first cleanup sweep failed");
        }
        let mut aborted = first.unwrap_or_default();
        if let Err(e) = guard.release().await {
            // Unreleased, the lock expires: the last sweep waits for that.
            tracing::warn!(error = %e, "releasing the output lock failed");
            tokio::time::sleep(Duration::from_millis(spec.lock_ttl_ms)).await;
        }
        tokio::time::sleep(CLEANUP_RESWEEP).await;
        aborted += abandon(spec, &store).await?;
        tracing::info!(write_id = %spec.write_id, aborted_uploads = aborted, "cleaned up failed write");
        Ok(aborted as u64)
    }

    /// Aborts uploads of a committed write that its commit did not take
    /// (completed ones are not open, and its markers went with its staging).
    async fn sweep(&self, spec: &WriteSpec) -> Result<(), DataFusionError> {
        let store = self
            .ctx
            .runtime_env()
            .object_store_registry
            .get_store(&spec.output_url()?)?;
        let aborted = abandon(spec, &store).await?;
        if aborted > 0 {
            tracing::info!(write_id = %spec.write_id, aborted_uploads = aborted, "aborted uploads started after the commit");
        }
        Ok(())
    }

    /// Runs a plan, reporting progress while the scheduler works on it.
    async fn execute(
        &self,
        plan: Arc<dyn ExecutionPlan>,
    ) -> Result<(Option<String>, Vec<RecordBatch>), DataFusionError> {
        self.execute_keeping(plan, true).await
    }

    /// [`JobRunner::execute`]; without `keep_rows`, the rows are read and
    /// dropped as they come (a probe's, whose outcome is all it wants).
    async fn execute_keeping(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        keep_rows: bool,
    ) -> Result<(Option<String>, Vec<RecordBatch>), DataFusionError> {
        use futures::{FutureExt, StreamExt};
        let task_ctx = self.ctx.task_ctx();
        let running = if keep_rows {
            collect(Arc::clone(&plan), task_ctx).boxed()
        } else {
            let plan = Arc::clone(&plan);
            async move {
                let mut rows = datafusion::physical_plan::execute_stream(plan, task_ctx)?;
                while let Some(batch) = rows.next().await {
                    batch?;
                }
                Ok(vec![])
            }
            .boxed()
        };
        tokio::pin!(running);
        let mut job_id: Option<String> = None;
        let mut ticker = tokio::time::interval(self.poll);
        let mut interrupt = self.interrupt.clone();
        // An interrupt waits for the scheduler to accept the job (the plan
        // keeps being polled meanwhile, or it would never be submitted), then
        // cancels it once; awaiting the plan then ends as cancelled.
        let mut cancel_pending = *interrupt.borrow();
        let mut cancel_deadline = Instant::now() + CANCEL_WAIT;
        // A scheduler that restarted forgets the job, and Ballista's client
        // then waits for it forever: the job counts as lost when the
        // scheduler stops listing it, or stops answering for a while.
        let mut loss_check = tokio::time::interval(LOSS_CHECK);
        loss_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut missing = 0u32;
        // A job the scheduler has not listed yet may be between its
        // submission and its queueing: it gets longer before it counts.
        let mut seen = false;
        let mut silent_since: Option<Instant> = None;
        let mut no_executor_since: Option<Instant> = None;
        loop {
            tokio::select! {
                changed = interrupt.changed(), if !cancel_pending => {
                    if changed.is_ok() && *interrupt.borrow() {
                        cancel_pending = true;
                        cancel_deadline = Instant::now() + CANCEL_WAIT;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(20)), if cancel_pending => {
                    if let Some(id) = distributed_job_id(&plan) {
                        cancel_pending = false;
                        tracing::warn!(job_id = %id, "interrupted: cancelling the job");
                        if let Err(e) = self.api.cancel(&id).await {
                            tracing::warn!(job_id = %id, error = %e, "cancel failed");
                        }
                    } else if Instant::now() > cancel_deadline {
                        cancel_pending = false;
                        tracing::warn!("interrupted, but the scheduler never accepted the job");
                    }
                }
                _ = loss_check.tick(), if job_id.is_some() => {
                    let id = job_id.as_deref().unwrap_or_default();
                    match self.job_known(id).await {
                        Ok(true) => {
                            missing = 0;
                            seen = true;
                            silent_since = None;
                            match self.api.executors().await {
                                Ok(alive) if alive.is_empty() && !self.no_executor_timeout.is_zero() => {
                                    let since = *no_executor_since.get_or_insert_with(Instant::now);
                                    if since.elapsed() >= self.no_executor_timeout {
                                        if let Err(e) = self.api.cancel(id).await {
                                            tracing::warn!(job_id = %id, error = %e, "cancel failed");
                                        }
                                        return Err(DataFusionError::External(Box::new(SluiceError::NoExecutors {
                                            endpoint: self.endpoint.clone(),
                                            job: id.to_string(),
                                            waited_s: since.elapsed().as_secs(),
                                        })));
                                    }
                                }
                                Ok(_) => no_executor_since = None,
                                // Unanswered: the loss check above judges.
                                Err(_) => {}
                            }
                        }
                        Ok(false) => {
                            missing += 1;
                            silent_since = None;
                            if missing >= if seen { 3 } else { 10 } {
                                return Err(self.lost(Some(id), "the scheduler no longer knows the job (it restarted or dropped it)".into()));
                            }
                        }
                        Err(e) => {
                            let since = *silent_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= LOSS_TIMEOUT {
                                return Err(self.lost(Some(id), format!("no answer for {}s: {}", LOSS_TIMEOUT.as_secs(), crate::error::render(&e))));
                            }
                        }
                    }
                }
                result = &mut running => {
                    if job_id.is_none() {
                        job_id = distributed_job_id(&plan);
                    }
                    if let Err(e) = &result {
                        // Ballista's client fails with a transport error when
                        // the scheduler goes away: say what happened instead.
                        match &job_id {
                            Some(id) => match self.job_known_settled(id).await {
                                Ok(false) => return Err(self.lost(Some(id), "the scheduler no longer knows the job (it restarted or dropped it)".into())),
                                Err(unreachable) => {
                                    // The job's own error is a transport
                                    // dump; the scheduler's silence says it.
                                    tracing::debug!(error = %crate::error::render(e), "the job's stream failed");
                                    return Err(self.lost(Some(id), format!("it does not answer: {}", crate::error::render(&unreachable))));
                                }
                                Ok(true) => {}
                            },
                            None => {
                                if let Err(unreachable) = self.api.jobs().await {
                                    return Err(self.lost(None, format!("it does not answer: {}", crate::error::render(&unreachable))));
                                }
                            }
                        }
                    }
                    if let Some(id) = &job_id
                        && let Ok(p) = self.api.progress(id).await
                    {
                        self.progress.job_progress(&p);
                    }
                    return result.map(|b| (job_id, b));
                }
                _ = ticker.tick() => {
                    if job_id.is_none() {
                        job_id = distributed_job_id(&plan);
                        if let Some(id) = &job_id {
                            tracing::info!(job_id = %id, "job submitted");
                            self.progress.job_submitted(id);
                        }
                    }
                    if let Some(id) = &job_id
                        && let Ok(p) = self.api.progress(id).await
                    {
                        self.progress.job_progress(&p);
                    }
                }
            }
        }
    }
}

/// Interrupts a [`JobRunner`] from another task (see [`JobRunner::interrupter`]).
#[derive(Clone)]
pub struct Interrupter(Arc<tokio::sync::watch::Sender<bool>>);

impl Interrupter {
    pub fn interrupt(&self) {
        let _ = self.0.send(true);
    }

    /// Lets the runner run again after an interrupt (a stream's next batch
    /// after one it cancelled).
    pub fn reset(&self) {
        let _ = self.0.send(false);
    }
}

/// Whether `e` says the scheduler lost the job.
fn is_lost(e: &DataFusionError) -> bool {
    lost_job(e).is_some()
}

/// The job `e` says the scheduler lost.
fn lost_job(e: &DataFusionError) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(SluiceError::SchedulerLost { job, .. }) = err.downcast_ref::<SluiceError>() {
            return Some(job.clone());
        }
        if let Some(DataFusionError::External(inner)) = err.downcast_ref::<DataFusionError>() {
            current = Some(inner.as_ref());
            continue;
        }
        current = err.source();
    }
    None
}

/// The scheduler's id for a plan submitted to it, once it has accepted it.
fn distributed_job_id(plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
    let found = plan
        .downcast_ref::<DistributedQueryExec<LogicalPlanNode>>()
        .and_then(|d| d.job_id())
        .map(|id| id.to_string());
    if found.is_none() {
        tracing::debug!(plan = plan.name(), "no scheduler job id on plan");
    }
    found
}
