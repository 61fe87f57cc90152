//! sluice's scheduler: Ballista's scheduler with sluice's session builder
//! (the physical planner for distributed writes, functions, object stores)
//! and codecs. `main.rs` runs it as a process; [`start_in_process`] runs it
//! inside the CLI's embedded cluster and the test harness.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use sluice_core::coordinator::CoordinatorHandle;
use sluice_core::plan::codec::{SluiceLogicalCodec, SluicePhysicalCodec};
use sluice_core::plan::session;
use sluice_core::storage::local::LocalAccess;
use tokio::task::JoinHandle;

/// Installs sluice's session builder and codecs on a Ballista scheduler
/// config. Jobs are planned with `coordinator` on their session, so the
/// planner registers each write it plans with the coordinator in this
/// process (which serves no other).
pub fn with_sluice(
    config: SchedulerConfig,
    coordinator: CoordinatorHandle,
    access: LocalAccess,
) -> SchedulerConfig {
    let producer = move || {
        access
            .clone()
            .install(coordinator.clone().install(session::session_config()))
    };
    let mut config = config
        .with_override_config_producer(Arc::new(producer))
        .with_override_session_builder(Arc::new(session::server_state));
    config.override_logical_codec = Some(Arc::new(SluiceLogicalCodec::default()));
    config.override_physical_codec = Some(Arc::new(SluicePhysicalCodec::default()));
    config
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
    );
    let cluster = BallistaCluster::new_from_config(&config).await?;
    let scheduler =
        create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config)).await?;
    let handle = tokio::spawn(start_grpc_service_with_listener(listener, scheduler));
    Ok((addr, handle))
}
