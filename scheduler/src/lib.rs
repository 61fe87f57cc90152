//! sluice's scheduler: Ballista's scheduler with sluice's session builder
//! (the physical planner for distributed writes, functions, object stores)
//! and codecs, served by sluice so that its port can require mutual TLS.
//! `main.rs` runs it as a process; [`start_in_process`] runs it inside the
//! CLI's embedded cluster and the test harness.

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::error::BallistaError;
use ballista_core::extension::BallistaConfigGrpcEndpoint;
use ballista_core::flight_proxy_service::BallistaFlightProxyService;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::create_scheduler;
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use sluice_core::coordinator::CoordinatorHandle;
use sluice_core::plan::codec::{SluiceLogicalCodec, SluicePhysicalCodec};
use sluice_core::plan::session;
use sluice_core::storage::local::LocalAccess;
use sluice_core::tls::ClusterTls;
use tokio::task::JoinHandle;

/// Installs sluice's session builder and codecs on a Ballista scheduler
/// config. Jobs are planned with `coordinator` on their session, so the
/// planner registers each write it plans with the coordinator in this
/// process (which serves no other). With `tls`, the scheduler's own calls
/// to executors (the Flight proxy) present the cluster certificate.
pub fn with_sluice(
    config: SchedulerConfig,
    coordinator: CoordinatorHandle,
    access: LocalAccess,
    tls: Option<&ClusterTls>,
) -> SchedulerConfig {
    let producer = move || {
        access
            .clone()
            .install(coordinator.clone().install(session::session_config()))
    };
    let mut config = config
        .with_override_config_producer(Arc::new(producer))
        .with_override_session_builder(Arc::new(session::server_state));
    if let Some(tls) = tls {
        config = config
            .with_use_tls(true)
            .with_override_create_grpc_client_endpoint(
                tls.endpoint_override(&session::session_config()),
            );
    }
    config.override_logical_codec = Some(Arc::new(SluiceLogicalCodec::default()));
    config.override_physical_codec = Some(Arc::new(SluicePhysicalCodec::default()));
    config
}

type Scheduler = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

/// Everything the scheduler serves on its one port, as Ballista's
/// `start_grpc_service_with_listener` assembles it: the gRPC API, the Flight
/// proxy when enabled, the REST API unless disabled (`sluice` needs it) and
/// a liveness probe (`/healthz`) and a readiness probe (`/readyz`, as
/// Ballista's own, which is private to its crate).
fn routes(scheduler: Scheduler, config: &SchedulerConfig) -> axum::Router {
    let max_decoding = config.grpc_server_max_decoding_message_size as usize;
    let max_encoding = config.grpc_server_max_encoding_message_size as usize;
    let mut grpc = tonic::service::RoutesBuilder::default();
    grpc.add_service(
        SchedulerGrpcServer::new(scheduler.clone())
            .max_encoding_message_size(max_encoding)
            .max_decoding_message_size(max_decoding),
    );
    if config.enable_embedded_flight_proxy {
        let customize = config
            .override_create_grpc_client_endpoint
            .clone()
            .map(|f| Arc::new(BallistaConfigGrpcEndpoint::new(f)));
        let proxy =
            BallistaFlightProxyService::new(max_decoding, max_encoding, config.use_tls, customize);
        grpc.add_service(
            FlightServiceServer::new(proxy)
                .max_decoding_message_size(max_decoding)
                .max_encoding_message_size(max_encoding),
        );
    }
    let ready = {
        let scheduler = scheduler.clone();
        move || async move { readiness(&scheduler) }
    };
    let health = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(ready));
    let routes = grpc.routes().into_axum_router().merge(health);
    if config.disable_rest_api {
        routes
    } else {
        ballista_scheduler::api::get_routes(Arc::new(scheduler)).merge(routes)
    }
}

/// Ready when at least `--min-ready-executors` (default 1) executors are
/// alive: 200, or 503 while jobs would only queue (a fresh scheduler, or one
/// whose executors were lost), so a load balancer or a deploy script waits.
fn readiness(scheduler: &Scheduler) -> (axum::http::StatusCode, String) {
    let required = scheduler.state.config.min_ready_executors;
    if scheduler.is_ready() {
        (
            axum::http::StatusCode::OK,
            format!("ready: at least {required} executors alive\n"),
        )
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: fewer than {required} executors alive\n"),
        )
    }
}

/// Starts a scheduler of `config` and serves gRPC and REST on `listener`
/// in the background, over mutual TLS with `tls`. Fails here when the
/// scheduler cannot start; the handle ends when serving fails.
pub async fn start(
    listener: tokio::net::TcpListener,
    config: SchedulerConfig,
    tls: Option<ClusterTls>,
) -> ballista_core::error::Result<JoinHandle<ballista_core::error::Result<()>>> {
    config.validate()?;
    let config = Arc::new(config);
    let cluster = BallistaCluster::new_from_config(&config).await?;
    let scheduler =
        create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::clone(&config)).await?;
    let router = routes(scheduler, &config);
    Ok(tokio::spawn(async move {
        sluice_core::tls::serve(listener, router, tls.as_ref())
            .await
            .map_err(BallistaError::from)
    }))
}

/// A scheduler serving gRPC and REST on `listener`, in this process.
pub async fn start_in_process(
    listener: tokio::net::TcpListener,
    config: SchedulerConfig,
    coordinator: CoordinatorHandle,
) -> ballista_core::error::Result<(SocketAddr, JoinHandle<ballista_core::error::Result<()>>)> {
    let addr = listener.local_addr()?;
    let config = with_sluice(
        config
            .with_hostname(addr.ip().to_string())
            .with_port(addr.port()),
        coordinator,
        // The embedded cluster acts for the user on the user's machine.
        LocalAccess::Any,
        None,
    );
    let handle = start(listener, config, None).await?;
    Ok((addr, handle))
}
