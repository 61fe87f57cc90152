//! Runs a job file against a Ballista scheduler: statement by statement,
//! writes through sluice's distributed writer, progress from the scheduler's
//! REST API, and cleanup of staged files when a write fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::UInt64Type;
use ballista::prelude::SessionContextExt;
use ballista_core::execution_plans::DistributedQueryExec;
use datafusion::catalog::TableProvider;
use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::datasource::listing::ListingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{LogicalPlan, WriteOp};
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;
use datafusion_proto::protobuf::LogicalPlanNode;
use serde::Serialize;
use tracing::Instrument;

use crate::dynamo::{DynamoTable, DynamoWriteNode};
use crate::error::SluiceError;
use crate::job::{Action, classify, split_statements, substitute};
use crate::session;
use crate::write::{WriteFormat, WriteNode, WriteSpec, abandon};

/// How long the pre-run check of an object store output may take (the
/// store's own request timeouts and retries apply inside it).
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(45);
/// Delay before the second cleanup sweep of a failed write.
const CLEANUP_RESWEEP: Duration = Duration::from_secs(2);
/// How long an interrupt waits for the scheduler to accept the job to cancel.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// What the runner tells whoever watches it (a progress bar, a log).
pub trait Progress: Send + Sync {
    fn statement_started(&self, _index: usize, _total: usize, _line: usize, _text: &str) {}
    fn job_submitted(&self, _job_id: &str) {}
    fn job_progress(&self, _p: &JobProgress) {}
    fn statement_finished(&self, _outcome: &StatementOutcome) {}
}

/// Ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// A snapshot of a running Ballista job, from the scheduler's REST API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobProgress {
    pub job_id: String,
    pub status: String,
    pub stages_done: usize,
    pub stages: usize,
    pub tasks_done: usize,
    pub tasks: usize,
    pub percent: u8,
}

#[derive(Debug, Clone, Serialize)]
pub struct WriteOutcome {
    pub output: String,
    pub write_id: String,
    pub rows: u64,
    pub files: u64,
    pub bytes: u64,
    /// The commit step, from the first file made visible to staging removed.
    pub commit_ms: u64,
    /// A DynamoDB write's counts and where its writers' time went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamodb: Option<DynamoOutcome>,
}

/// The summary of a DynamoDB write. Times are summed over writers.
#[derive(Debug, Clone, Serialize)]
pub struct DynamoOutcome {
    pub table: String,
    pub items: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub dead_letter: Option<String>,
    pub throttles: u64,
    pub calls: u64,
    pub consumed_wcu: u64,
    /// Consumed WCU per second of the write stage, and the budget (WCU/s)
    /// when the job was planned.
    pub wcu_per_sec: f64,
    pub budget_wcu: f64,
    pub build_ms: u64,
    pub call_ms: u64,
    pub response_ms: u64,
    pub wait_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatementOutcome {
    pub line: usize,
    pub kind: &'static str,
    pub job_id: Option<String>,
    pub duration_ms: u64,
    pub write: Option<WriteOutcome>,
    /// Rows a query returned (not written).
    pub result_rows: u64,
    /// A query's result; in JSON, an array of row objects under `rows`.
    #[serde(rename = "rows", serialize_with = "batches_as_json")]
    pub batches: Vec<RecordBatch>,
}

fn batches_as_json<S: serde::Serializer>(batches: &[RecordBatch], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::Error;
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::ArrayWriter::new(&mut buf);
        for b in batches {
            w.write(b).map_err(S::Error::custom)?;
        }
        w.finish().map_err(S::Error::custom)?;
    }
    let rows: serde_json::Value = if buf.is_empty() {
        serde_json::Value::Array(vec![])
    } else {
        serde_json::from_slice(&buf).map_err(S::Error::custom)?
    };
    rows.serialize(s)
}

#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub job_file: String,
    pub statements: Vec<StatementOutcome>,
    pub job_ids: Vec<String>,
    pub rows_written: u64,
    pub files_written: u64,
    pub bytes_written: u64,
    pub duration_ms: u64,
}

/// Connects to a scheduler, waiting at most `timeout` for it to answer.
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<SessionContext, SluiceError> {
    wait_for_scheduler(endpoint, timeout).await?;
    let unreachable = |reason: String| SluiceError::Unreachable {
        endpoint: endpoint.to_string(),
        reason,
    };
    let state = session::client_state().map_err(|e| unreachable(e.to_string()))?;
    let url = format!("df://{}", host_port(endpoint));
    let ctx = SessionContext::remote_with_state(&url, state)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    session::register_functions(&ctx);
    Ok(ctx)
}

fn host_port(endpoint: &str) -> &str {
    endpoint
        .trim_start_matches("http://")
        .trim_start_matches("df://")
        .trim_end_matches('/')
}

pub fn rest_base(endpoint: &str) -> String {
    format!("http://{}", host_port(endpoint))
}

fn http_client() -> Result<reqwest::Client, SluiceError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| SluiceError::Config(e.to_string()))
}

/// Polls `/api/version` until the scheduler answers or `timeout` passes.
pub async fn wait_for_scheduler(endpoint: &str, timeout: Duration) -> Result<(), SluiceError> {
    let client = http_client()?;
    let url = format!("{}/api/version", rest_base(endpoint));
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = client.get(&url).send().await;
        let reason = match attempt {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("HTTP {} from {url}", r.status()),
            Err(e) => format!("{e} ({url})"),
        };
        if Instant::now() >= deadline {
            return Err(SluiceError::Unreachable {
                endpoint: endpoint.to_string(),
                reason: format!("no answer within {}s: {reason}", timeout.as_secs()),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The scheduler's REST API: job listing, status and cancel.
pub struct SchedulerApi {
    base: String,
    client: reqwest::Client,
}

impl SchedulerApi {
    pub fn new(endpoint: &str) -> Result<Self, SluiceError> {
        Ok(Self {
            base: rest_base(endpoint),
            client: http_client()?,
        })
    }

    async fn get(&self, path: &str) -> Result<serde_json::Value, SluiceError> {
        let url = format!("{}{path}", self.base);
        let err = |reason: String| SluiceError::Unreachable {
            endpoint: self.base.clone(),
            reason,
        };
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(err(format!("HTTP {status} from {url}")));
        }
        resp.json().await.map_err(|e| err(e.to_string()))
    }

    pub async fn executors(&self) -> Result<Vec<serde_json::Value>, SluiceError> {
        let v = self.get("/api/executors").await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    pub async fn jobs(&self) -> Result<serde_json::Value, SluiceError> {
        self.get("/api/jobs").await
    }

    pub async fn job(&self, job_id: &str) -> Result<serde_json::Value, SluiceError> {
        self.get(&format!("/api/job/{job_id}")).await
    }

    pub async fn stages(&self, job_id: &str) -> Result<serde_json::Value, SluiceError> {
        self.get(&format!("/api/job/{job_id}/stages")).await
    }

    pub async fn cancel(&self, job_id: &str) -> Result<(), SluiceError> {
        let url = format!("{}/api/job/{job_id}", self.base);
        let resp = self
            .client
            .patch(&url)
            .send()
            .await
            .map_err(|e| SluiceError::Unreachable {
                endpoint: self.base.clone(),
                reason: e.to_string(),
            })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(SluiceError::Unreachable {
                endpoint: self.base.clone(),
                reason: format!("cancel of {job_id}: HTTP {}", resp.status()),
            })
        }
    }

    pub async fn progress(&self, job_id: &str) -> Result<JobProgress, SluiceError> {
        let job = self.job(job_id).await?;
        let mut p = JobProgress {
            job_id: job_id.to_string(),
            status: job["job_status"].as_str().unwrap_or_default().to_string(),
            stages: job["num_stages"].as_u64().unwrap_or(0) as usize,
            stages_done: job["completed_stages"].as_u64().unwrap_or(0) as usize,
            percent: job["percent_complete"].as_u64().unwrap_or(0).min(100) as u8,
            ..Default::default()
        };
        if let Ok(stages) = self.stages(job_id).await
            && let Some(list) = stages["stages"].as_array()
        {
            for stage in list {
                if let Some(tasks) = stage["tasks"].as_array() {
                    p.tasks += tasks.len();
                    p.tasks_done += tasks
                        .iter()
                        .filter(|t| {
                            t["status"]
                                .to_string()
                                .to_ascii_lowercase()
                                .contains("success")
                        })
                        .count();
                }
            }
        }
        Ok(p)
    }
}

pub struct JobRunner {
    ctx: SessionContext,
    api: SchedulerApi,
    progress: Arc<dyn Progress>,
    poll: Duration,
    interrupt: tokio::sync::watch::Receiver<bool>,
    interrupt_tx: Arc<tokio::sync::watch::Sender<bool>>,
}

impl JobRunner {
    pub fn new(
        ctx: SessionContext,
        endpoint: &str,
        progress: Arc<dyn Progress>,
    ) -> Result<Self, SluiceError> {
        let (interrupt_tx, interrupt) = tokio::sync::watch::channel(false);
        Ok(Self {
            ctx,
            api: SchedulerApi::new(endpoint)?,
            progress,
            poll: Duration::from_millis(250),
            interrupt,
            interrupt_tx: Arc::new(interrupt_tx),
        })
    }

    /// A handle that interrupts the run (Ctrl-C): the running job is
    /// cancelled on the scheduler, its write cleaned up, and the run fails,
    /// unless the job had already finished.
    pub fn interrupter(&self) -> Interrupter {
        Interrupter(Arc::clone(&self.interrupt_tx))
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Runs every statement of `source` in order; stops at the first failure.
    pub async fn run(
        &self,
        file: &str,
        source: &str,
        cli_vars: &HashMap<String, String>,
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
            self.progress.statement_started(i, total, raw.line, &text);
            let span = tracing::info_span!("sluice.statement", file, line = raw.line);
            let t0 = Instant::now();
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
                    let spec = WriteSpec::new(&url, format, overwrite, options)?
                        .with_partition_by(partition_by);
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
            self.progress.statement_finished(&outcome);
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
        let df = self.ctx.sql(sql).await?;
        let plan = df.create_physical_plan().await?;
        self.execute(plan).await
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
        let stmt_err = SluiceError::in_statement(file, line);
        preflight_output(&spec, &self.ctx.runtime_env().object_store_registry).await?;
        self.set_job_name(file, line);
        let planned = self
            .plan_physical(WriteNode::try_new(input, spec.clone()).map(WriteNode::into_plan))
            .await
            .map_err(stmt_err)?;
        let result = self.execute(planned).await;
        let (job_id, batches) = match result {
            Ok(r) => r,
            Err(e) => {
                // A failed job commits nothing; remove what its tasks staged.
                if let Err(clean) = self.cleanup(&spec).await {
                    tracing::warn!(error = %clean, write_id = %spec.write_id, "staging cleanup failed");
                }
                return Err(stmt_err(e));
            }
        };
        let batch = batches.iter().find(|b| b.num_rows() > 0).ok_or_else(|| {
            stmt_err(DataFusionError::Execution(
                "the write returned no commit summary".into(),
            ))
        })?;
        let u64_at = |i: usize| batch.column(i).as_primitive::<UInt64Type>().value(0);
        Ok((
            job_id,
            WriteOutcome {
                output: spec.url.clone(),
                write_id: spec.write_id.clone(),
                rows: u64_at(0),
                files: u64_at(1),
                bytes: u64_at(2),
                commit_ms: u64_at(5),
                dynamodb: None,
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
        let spec = crate::dynamo::plan_write(table, input.schema().as_arrow())
            .await
            .map_err(|e| stmt_err(DataFusionError::Plan(e)))?;
        self.set_job_name(file, line);
        let planned = self
            .plan_physical(
                DynamoWriteNode::try_new(input, spec.clone()).map(DynamoWriteNode::into_plan),
            )
            .await
            .map_err(stmt_err)?;
        let (job_id, batches) = self.execute(planned).await.map_err(stmt_err)?;
        let batch = batches.iter().find(|b| b.num_rows() > 0).ok_or_else(|| {
            stmt_err(DataFusionError::Execution(
                "the write returned no summary".into(),
            ))
        })?;
        let u = |i: usize| batch.column(i).as_primitive::<UInt64Type>().value(0);
        let dead_letter = batch
            .column(13)
            .as_string_opt::<i32>()
            .filter(|c| c.is_valid(0))
            .map(|c| c.value(0).to_string());
        let elapsed = u(10).max(1) as f64 / 1000.0;
        let d = DynamoOutcome {
            table: spec.table.clone(),
            items: u(0),
            retried: u(1),
            dead_lettered: u(2),
            dead_letter,
            throttles: u(3),
            calls: u(4),
            consumed_wcu: u(5),
            wcu_per_sec: u(5) as f64 / elapsed,
            budget_wcu: spec.budget_hint,
            build_ms: u(6),
            call_ms: u(7),
            response_ms: u(8),
            wait_ms: u(9),
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
            },
        ))
    }

    /// A failed job commits nothing: abort its uploads and remove what its
    /// tasks staged. Swept twice, because a task the scheduler is still
    /// cancelling can start an upload just after the first sweep.
    async fn cleanup(&self, spec: &WriteSpec) -> Result<(), DataFusionError> {
        let store = self
            .ctx
            .runtime_env()
            .object_store_registry
            .get_store(&spec.output_url()?)?;
        let mut aborted = abandon(spec, &store).await?;
        tokio::time::sleep(CLEANUP_RESWEEP).await;
        aborted += abandon(spec, &store).await?;
        tracing::info!(write_id = %spec.write_id, aborted_uploads = aborted, "cleaned up failed write");
        Ok(())
    }

    /// Runs a plan, reporting progress while the scheduler works on it.
    async fn execute(
        &self,
        plan: Arc<dyn ExecutionPlan>,
    ) -> Result<(Option<String>, Vec<RecordBatch>), DataFusionError> {
        let task_ctx = self.ctx.task_ctx();
        let running = collect(Arc::clone(&plan), task_ctx);
        tokio::pin!(running);
        let mut job_id: Option<String> = None;
        let mut ticker = tokio::time::interval(self.poll);
        let mut interrupt = self.interrupt.clone();
        // An interrupt waits for the scheduler to accept the job (the plan
        // keeps being polled meanwhile, or it would never be submitted), then
        // cancels it once; awaiting the plan then ends as cancelled.
        let mut cancel_pending = *interrupt.borrow();
        let mut cancel_deadline = Instant::now() + CANCEL_WAIT;
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
                result = &mut running => {
                    if job_id.is_none() {
                        job_id = distributed_job_id(&plan);
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

/// `INSERT INTO` a `STORED AS DYNAMODB` table: the rows and the table.
fn dynamo_insert(plan: &LogicalPlan) -> Option<(LogicalPlan, Arc<dyn TableProvider>)> {
    let LogicalPlan::Dml(dml) = plan else {
        return None;
    };
    let provider = source_as_provider(&dml.target).ok()?;
    provider.downcast_ref::<DynamoTable>()?;
    Some((dml.input.as_ref().clone(), provider))
}

fn starts_with_insert(sql: &str) -> bool {
    sql.trim_start()
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("insert"))
}

/// `INSERT INTO` / `INSERT OVERWRITE` a listing table whose location is a
/// directory: the rows to write and where, so the insert goes through
/// sluice's writers and committer instead of DataFusion's single-task sink
/// (which writes files in place, visible before it finishes). `None` for any
/// other insert, which runs as DataFusion plans it.
/// Prefix of the session settings that give write options a default:
/// `SET sluice.write.target_file_rows = 240000` is `write.target_file_rows`
/// for every later write of the job that does not set it in `OPTIONS`.
pub const WRITE_SETTING_PREFIX: &str = "sluice.";

/// The write options the job's `SET sluice.write.*` statements (or
/// `--var sluice.write.*=...`) default.
fn write_defaults(vars: &HashMap<String, String>) -> BTreeMap<String, String> {
    vars.iter()
        .filter_map(|(k, v)| {
            let key = k.to_ascii_lowercase();
            let option = key.strip_prefix(WRITE_SETTING_PREFIX)?;
            option
                .starts_with("write.")
                .then(|| (option.to_string(), v.clone()))
        })
        .collect()
}

fn table_insert(
    plan: &LogicalPlan,
    defaults: &BTreeMap<String, String>,
) -> Result<Option<(LogicalPlan, WriteSpec)>, DataFusionError> {
    let LogicalPlan::Dml(dml) = plan else {
        return Ok(None);
    };
    let overwrite = match dml.op {
        WriteOp::Insert(InsertOp::Append) => false,
        WriteOp::Insert(InsertOp::Overwrite) => true,
        _ => return Ok(None),
    };
    let Ok(provider) = source_as_provider(&dml.target) else {
        return Ok(None);
    };
    let Some(table) = provider.downcast_ref::<ListingTable>() else {
        return Ok(None);
    };
    let [path] = table.table_paths().as_slice() else {
        return Ok(None);
    };
    if !path.is_collection() {
        return Ok(None);
    }
    let ext = table.options().format.get_ext();
    let format = WriteFormat::parse(ext.trim_start_matches('.'))
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let partition_by = table
        .options()
        .table_partition_cols
        .iter()
        .map(|(name, _)| name.clone())
        .collect();
    let spec = WriteSpec::new(path.as_str(), format, overwrite, defaults.clone())
        .map_err(|e| DataFusionError::External(Box::new(e)))?
        .with_partition_by(partition_by);
    Ok(Some((dml.input.as_ref().clone(), spec)))
}

/// Shortens an object store error to what a user acts on: S3's error code
/// and message instead of its XML, and a hint when no credentials were found.
fn explain_store_error(raw: &str) -> String {
    let tag = |name: &str| -> Option<&str> {
        let start = raw.find(&format!("<{name}>"))? + name.len() + 2;
        let end = raw[start..].find(&format!("</{name}>"))? + start;
        Some(&raw[start..end])
    };
    if let (Some(code), Some(message)) = (tag("Code"), tag("Message")) {
        return format!("{code}: {message}");
    }
    if let Some(at) = raw.find("no AWS credentials") {
        return raw[at..].to_string();
    }
    if raw.contains("/latest/api/token") || raw.contains("/latest/meta-data/iam") {
        return format!(
            "no AWS credentials: none in the environment (AWS_ACCESS_KEY_ID, \
             AWS_SECRET_ACCESS_KEY, AWS_WEB_IDENTITY_TOKEN_FILE) and no instance profile \
             answered ({raw})"
        );
    }
    raw.to_string()
}

/// Fails early, before any task runs, when the output cannot be written: a
/// local directory that cannot be created or written, or an object store
/// whose bucket, credentials or endpoint do not answer a listing.
async fn preflight_output(
    spec: &WriteSpec,
    registry: &Arc<dyn ObjectStoreRegistry>,
) -> Result<(), SluiceError> {
    let url = spec.output_url()?;
    if url.scheme() != "file" {
        let unreachable = |reason: String| SluiceError::Unwritable {
            url: spec.url.clone(),
            reason,
        };
        let store = registry
            .get_store(&url)
            .map_err(|e| unreachable(e.to_string()))?;
        let base = spec.base_path()?;
        return match tokio::time::timeout(PREFLIGHT_TIMEOUT, store.list_with_delimiter(Some(&base)))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unreachable(explain_store_error(&e.to_string()))),
            Err(_) => Err(unreachable(format!(
                "no answer within {}s",
                PREFLIGHT_TIMEOUT.as_secs()
            ))),
        };
    }
    let unwritable = |reason: String| SluiceError::Unwritable {
        url: spec.url.clone(),
        reason,
    };
    let dir = url
        .to_file_path()
        .map_err(|_| unwritable("not a local path".into()))?;
    if dir.exists() && !dir.is_dir() {
        return Err(unwritable("it exists and is not a directory".into()));
    }
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| unwritable(format!("cannot create {}: {e}", dir.display())))?;
    let probe = dir.join(format!(".sluice-probe-{}", spec.write_id));
    tokio::fs::write(&probe, b"")
        .await
        .map_err(|e| unwritable(format!("cannot create files in {}: {e}", dir.display())))?;
    let _ = tokio::fs::remove_file(&probe).await;
    Ok(())
}
