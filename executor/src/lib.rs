//! sluice's executor: Ballista's executor with sluice's codecs, functions
//! and object stores, and an execution engine that tells a sluice writer
//! which stage-wide partitions its task runs and checks its shuffle reads
//! ([`SluiceExecutionEngine`]).
//! `main.rs` runs it as a process; [`start_in_process`] runs one inside the
//! CLI's embedded cluster.

pub mod redact;
pub mod shuffle_check;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::client::BallistaClient;
use ballista_core::client_pool::{BallistaClientPool, PooledClient};
use ballista_core::error::BallistaError;
use ballista_core::execution_plans::ShuffleWriterExec;
use ballista_core::extension::{BallistaConfigGrpcEndpoint, SessionConfigExt};
use ballista_core::ids::new_instance_id;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::BallistaCodec;
use ballista_core::serde::protobuf::ExecutorRegistration;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::scheduler::{
    ExecutorOperatingSystemSpecification, ExecutorSpecification,
};
use ballista_core::utils::{GrpcClientConfig, GrpcServerConfig, create_grpc_server};
use ballista_core::{BALLISTA_PROTOCOL_VERSION, JobId};
use ballista_core::{ConfigProducer, RuntimeProducer};
use ballista_executor::ArrowFlightServerProvider;
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use ballista_executor::executor::Executor;
use ballista_executor::executor_process::ExecutorProcessConfig;
use ballista_executor::flight_service::BallistaFlightService;
use ballista_executor::metrics::LoggingMetricsCollector;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use sluice_core::coordinator::CoordinatorHandle;
use sluice_core::plan::codec::{SluiceLogicalCodec, SluicePhysicalCodec};
use sluice_core::plan::session;
use sluice_core::storage::local::LocalAccess;
use sluice_core::tls::ClusterTls;

fn registry() -> ballista_core::error::Result<BallistaFunctionRegistry> {
    let state = session::server_state(session::session_config())
        .map_err(|e| BallistaError::General(e.to_string()))?;
    Ok((&state).into())
}

/// Each task's runtime: object stores, local files as its session allows.
fn runtime_producer() -> RuntimeProducer {
    Arc::new(session::runtime_env_for)
}

/// The session config every task of this executor runs with: sluice's,
/// carrying how operators reach the coordinator, which local files SQL
/// may use, and the cluster TLS shuffle fetches dial with.
fn config_producer(
    coordinator: CoordinatorHandle,
    access: LocalAccess,
    tls: Option<ClusterTls>,
) -> ConfigProducer {
    Arc::new(move || {
        let config = access
            .clone()
            .install(coordinator.clone().install(session::session_config()));
        match &tls {
            Some(tls) => tls.install(config),
            None => config,
        }
    })
}

/// Installs sluice's codecs, functions, object stores and coordinator on an
/// executor config; with `tls`, its Flight port requires a cluster
/// certificate and its calls (scheduler, other executors) present one.
pub fn with_sluice(
    mut config: ExecutorProcessConfig,
    coordinator: CoordinatorHandle,
    access: LocalAccess,
    tls: Option<&ClusterTls>,
) -> ballista_core::error::Result<ExecutorProcessConfig> {
    if let Some(tls) = tls {
        config.override_create_grpc_client_endpoint =
            Some(tls.endpoint_override(&session::session_config()));
        config.override_arrow_flight_service = Some(tls_flight(
            tls.clone(),
            config.grpc_max_encoding_message_size as usize,
            config.grpc_max_decoding_message_size as usize,
        ));
    }
    config.override_config_producer = Some(config_producer(coordinator, access, tls.cloned()));
    config.override_runtime_producer = Some(runtime_producer());
    config.override_logical_codec = Some(Arc::new(SluiceLogicalCodec::default()));
    config.override_physical_codec = Some(Arc::new(SluicePhysicalCodec::default()));
    config.override_function_registry = Some(Arc::new(registry()?));
    config.override_execution_engine = Some(Arc::new(SluiceExecutionEngine::new(
        Duration::from_secs(config.client_ttl),
    )));
    Ok(config)
}

/// Ballista's built-in Flight service (shuffle and result fetches), served
/// over mutual TLS.
fn tls_flight(
    tls: ClusterTls,
    max_encoding: usize,
    max_decoding: usize,
) -> Arc<ArrowFlightServerProvider> {
    Arc::new(move |work_dir, address, mut shutdown, grpc_config| {
        let tls = tls.tonic_server();
        tokio::spawn(async move {
            let flight = FlightServiceServer::new(BallistaFlightService::new(work_dir))
                .max_decoding_message_size(max_decoding)
                .max_encoding_message_size(max_encoding);
            let listener = tokio::net::TcpListener::bind(address).await?;
            tracing::info!(%address, "Flight service listening (mutual TLS)");
            // tonic would run any number of handshakes at once.
            let incoming = sluice_core::tls::capped_incoming(
                listener,
                sluice_core::tls::MAX_TONIC_CONNECTIONS,
            );
            create_grpc_server(&grpc_config)
                .tls_config(tls)
                .map_err(BallistaError::TonicError)?
                .add_service(flight)
                .serve_with_incoming_shutdown(incoming, shutdown.recv())
                .await
                .map_err(BallistaError::TonicError)
        })
    })
}

/// Ballista's default execution engine, after two changes to the plan: a
/// sluice writer at the top of the stage is told the stage-wide partitions
/// the task runs (`WriterExec::with_global_partitions`), which Ballista
/// gives the engine and not the operators, so an S3 file's key is the same
/// for every attempt of its partition; and every shuffle read is checked
/// for map outputs read twice or rows miscounted
/// ([`shuffle_check::CheckedShuffleRead`]). A task's error leaves it
/// redacted ([`redact::RedactedStage`]).
pub struct SluiceExecutionEngine {
    inner: DefaultExecutionEngine,
}

impl SluiceExecutionEngine {
    /// Shuffle clients to other executors are kept for reuse `client_ttl`
    /// (0: not pooled), as Ballista's executor process does.
    pub fn new(client_ttl: Duration) -> Self {
        let inner = if client_ttl.is_zero() {
            DefaultExecutionEngine::new()
        } else {
            DefaultExecutionEngine::with_client_pool(Arc::new(ClientPool::new(client_ttl)))
        };
        Self { inner }
    }
}

impl ExecutionEngine for SluiceExecutionEngine {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> datafusion::error::Result<Arc<dyn QueryStageExecutor>> {
        let plan = stage_plan(plan, &global_output_partition_ids)?;
        let stage = self.inner.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )?;
        Ok(Arc::new(redact::RedactedStage(stage)))
    }
}

/// The plan a task runs: its writer told the stage-wide partitions, its
/// shuffle reads checked.
fn stage_plan(
    plan: Arc<dyn ExecutionPlan>,
    global_output_partition_ids: &[usize],
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    // Only a pass-through shuffle writer (not the hash-partitioning
    // `SortShuffleWriterExec`, whose ids are its K output partitions)
    // maps the task's partitions one to one onto stage partitions.
    let plan = if plan.downcast_ref::<ShuffleWriterExec>().is_some() {
        sluice_core::sink::files::attach_global_partitions(plan, global_output_partition_ids)?
    } else {
        plan
    };
    shuffle_check::check_shuffle_reads(plan)
}

type PoolKey = (String, u16, GrpcClientConfig);
type IdleClients = HashMap<PoolKey, Vec<(BallistaClient, Instant)>>;

/// Idle shuffle clients per executor address, reused until `ttl` idle
/// (Ballista's own pool is private to its crate).
struct ClientPool {
    idle: Arc<Mutex<IdleClients>>,
    ttl: Duration,
}

impl std::fmt::Debug for ClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPool")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl ClientPool {
    /// Also drops expired clients every `ttl / 3` (at least 15 s, as
    /// Ballista's pool) when built inside a runtime, so an idle executor does
    /// not keep connections to executors long gone.
    fn new(ttl: Duration) -> Self {
        let idle: Arc<Mutex<IdleClients>> = Arc::default();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&idle);
            let every = (ttl / 3).max(Duration::from_secs(15));
            runtime.spawn(async move {
                let mut ticker = tokio::time::interval(every);
                loop {
                    ticker.tick().await;
                    let Some(idle) = weak.upgrade() else { break };
                    if let Ok(mut idle) = idle.lock() {
                        evict(&mut idle, ttl);
                    }
                }
            });
        }
        Self { idle, ttl }
    }

    /// The freshest idle client for `key`; expired ones for `key` are
    /// dropped here, the rest by the sweep (this runs once per fetch).
    fn take_idle(&self, key: &PoolKey) -> Option<BallistaClient> {
        let mut idle = self.idle.lock().ok()?;
        let clients = idle.get_mut(key)?;
        clients.retain(|(_, since)| since.elapsed() < self.ttl);
        clients.pop().map(|(client, _)| client)
    }
}

fn evict(idle: &mut IdleClients, ttl: Duration) {
    idle.retain(|_, clients| {
        clients.retain(|(_, since)| since.elapsed() < ttl);
        !clients.is_empty()
    });
}

#[async_trait::async_trait]
impl BallistaClientPool for ClientPool {
    async fn acquire(
        &self,
        host: &str,
        port: u16,
        config: &GrpcClientConfig,
        customize_endpoint: Option<Arc<BallistaConfigGrpcEndpoint>>,
    ) -> ballista_core::error::Result<PooledClient> {
        let key = (host.to_string(), port, config.clone());
        let client = match self.take_idle(&key) {
            Some(client) => client,
            None => {
                BallistaClient::try_new(
                    host,
                    port,
                    config.max_message_size,
                    config.use_tls,
                    customize_endpoint,
                    config.io_retries_times,
                    config.io_retry_wait_time_ms,
                    config.initial_connection_window_size,
                    config.initial_stream_window_size,
                )
                .await?
            }
        };
        let idle = Arc::clone(&self.idle);
        Ok(PooledClient::new(
            client,
            Box::new(move |c| {
                if let Ok(mut idle) = idle.lock() {
                    idle.entry(key).or_default().push((c, Instant::now()));
                }
            }),
        ))
    }

    async fn evict_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            evict(&mut idle, self.ttl);
        }
    }
}

/// An executor with `slots` task slots in this process, pulling work from the
/// scheduler at `scheduler_url` (`http://host:port`). Like Ballista's
/// standalone executor, with sluice's execution engine, and a work
/// directory that exists (Ballista's removes its own at once).
pub async fn start_in_process(
    scheduler_url: &str,
    slots: usize,
    coordinator: CoordinatorHandle,
) -> ballista_core::error::Result<()> {
    let scheduler = SchedulerGrpcClient::connect(scheduler_url.to_string())
        .await
        .map_err(|e| BallistaError::General(format!("connecting to {scheduler_url}: {e}")))?;
    // The embedded cluster acts for the user on the user's machine.
    let config_producer = config_producer(coordinator, LocalAccess::Any, None);
    let codec: BallistaCodec = BallistaCodec::new(
        Arc::new(SluiceLogicalCodec::default()),
        Arc::new(SluicePhysicalCodec::default()),
    );
    let listener = tokio::net::TcpListener::bind("localhost:0").await?;
    let address = listener.local_addr()?;
    let metadata = ExecutorRegistration {
        id: new_instance_id(),
        host: Some("localhost".to_string()),
        port: u32::from(address.port()),
        grpc_port: 50020,
        specification: Some(
            ExecutorSpecification::default()
                .with_vcores(slots as u32)
                .into(),
        ),
        os_info: Some(ExecutorOperatingSystemSpecification::default().into()),
        ballista_protocol_version: BALLISTA_PROTOCOL_VERSION,
    };
    let max_message_size = config_producer().ballista_grpc_client_max_message_size();
    // Under the CLI's private TMPDIR, which it removes on exit.
    let work_dir = tempfile::Builder::new()
        .prefix("sluice-executor-")
        .tempdir()?
        .keep();
    let work_dir = work_dir.to_string_lossy().to_string();
    let executor = Arc::new(Executor::new(
        metadata,
        &work_dir,
        runtime_producer(),
        config_producer,
        Arc::new(registry()?),
        Arc::new(LoggingMetricsCollector::default()),
        slots,
        Arc::new(SluiceExecutionEngine::new(Duration::ZERO)),
    ));
    let flight = FlightServiceServer::new(BallistaFlightService::new(work_dir))
        .max_decoding_message_size(max_message_size)
        .max_encoding_message_size(max_message_size);
    tokio::spawn(
        create_grpc_server(&GrpcServerConfig::default())
            .add_service(flight)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    tokio::spawn(ballista_executor::execution_loop::poll_loop(
        scheduler,
        executor,
        codec,
        None,
        None,
        ballista_executor::health::ExecutorHealth::new(),
    ));
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use arrow::datatypes::{DataType, Field, Schema};
    use ballista_core::execution_plans::ShuffleReaderExec;
    use datafusion::physical_plan::{Partitioning, displayable};

    use super::*;

    #[test]
    fn a_tasks_shuffle_reads_are_checked() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let reader = ShuffleReaderExec::try_new(
            1,
            vec![vec![], vec![]],
            schema,
            Partitioning::UnknownPartitioning(2),
        )
        .unwrap();
        let writer =
            ShuffleWriterExec::try_new(JobId::new("job"), 2, Arc::new(reader), "/tmp".into())
                .unwrap();
        let plan = stage_plan(Arc::new(writer), &[3, 4]).unwrap();
        let shown = displayable(plan.as_ref()).indent(false).to_string();
        let lines: Vec<&str> = shown.lines().map(str::trim).collect();
        assert!(lines[0].starts_with("ShuffleWriterExec"), "{shown}");
        assert_eq!(lines[1], "CheckedShuffleRead", "{shown}");
        assert!(lines[2].starts_with("ShuffleReaderExec"), "{shown}");
    }
}
