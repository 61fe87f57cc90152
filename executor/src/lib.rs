//! sluice's executor: Ballista's executor with sluice's codecs, functions
//! and object stores. `main.rs` runs it as a process; [`start_in_process`]
//! runs one inside the CLI's embedded cluster.

use std::sync::Arc;

use ballista_core::error::BallistaError;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::BallistaCodec;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::{ConfigProducer, RuntimeProducer};
use ballista_executor::executor_process::ExecutorProcessConfig;
use sluice_core::codec::{SluiceLogicalCodec, SluicePhysicalCodec};
use sluice_core::session;

fn registry() -> ballista_core::error::Result<BallistaFunctionRegistry> {
    let state = session::server_state(session::session_config())
        .map_err(|e| BallistaError::General(e.to_string()))?;
    Ok((&state).into())
}

fn runtime_producer() -> RuntimeProducer {
    Arc::new(|_config| session::runtime_env())
}

/// Installs sluice's codecs, functions and object stores on an executor config.
pub fn with_sluice(
    mut config: ExecutorProcessConfig,
) -> ballista_core::error::Result<ExecutorProcessConfig> {
    config.override_config_producer = Some(Arc::new(session::session_config));
    config.override_runtime_producer = Some(runtime_producer());
    config.override_logical_codec = Some(Arc::new(SluiceLogicalCodec::default()));
    config.override_physical_codec = Some(Arc::new(SluicePhysicalCodec::default()));
    config.override_function_registry = Some(Arc::new(registry()?));
    Ok(config)
}

/// An executor with `slots` task slots in this process, pulling work from the
/// scheduler at `scheduler_url` (`http://host:port`).
pub async fn start_in_process(
    scheduler_url: &str,
    slots: usize,
) -> ballista_core::error::Result<()> {
    let scheduler = SchedulerGrpcClient::connect(scheduler_url.to_string())
        .await
        .map_err(|e| BallistaError::General(format!("connecting to {scheduler_url}: {e}")))?;
    let config_producer: ConfigProducer = Arc::new(session::session_config);
    let codec = BallistaCodec::new(
        Arc::new(SluiceLogicalCodec::default()),
        Arc::new(SluicePhysicalCodec::default()),
    );
    ballista_executor::new_standalone_executor_from_builder(
        scheduler,
        slots,
        config_producer,
        runtime_producer(),
        codec,
        registry()?,
    )
    .await
}
