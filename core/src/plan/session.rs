//! Session setup shared by the client, the scheduler and the executors: the
//! same codecs, functions and object stores everywhere, so a plan built in one
//! process decodes and runs in another.
//!
//! Credentials never travel in session settings (the scheduler serves every
//! setting over REST): object stores take them from the environment or the
//! instance profile of the process that uses them.

use std::sync::Arc;

use ballista_core::extension::SessionConfigExt;
use datafusion::common::Result;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};

use super::codec::{SluiceLogicalCodec, SluicePhysicalCodec};
use super::planner::SluiceQueryPlanner;
use super::tables::install_table_factories;
use crate::storage::local::LocalAccess;
use crate::storage::s3::SluiceObjectStores;

/// Shuffle partitions when the session does not set them (at least).
pub const DEFAULT_TARGET_PARTITIONS: usize = 16;

/// Ballista's switch between its adaptive and static distributed planners.
pub const ADAPTIVE_PLANNER: &str = "ballista.planner.adaptive.enabled";

/// Ballista's per-task buffer of a sort shuffle's map side.
pub const SORT_SHUFFLE_MEMORY: &str = "ballista.shuffle.sort_based.memory_limit_per_task_bytes";
/// sluice's default for [`SORT_SHUFFLE_MEMORY`] (Ballista's: 256 MiB).
pub const SORT_SHUFFLE_MEMORY_BYTES: usize = 64 * 1024 * 1024;

/// sluice's default Parquet compression (Spark's).
pub const PARQUET_COMPRESSION: &str = "snappy";

/// Session config with sluice's codecs on top of Ballista's defaults.
pub fn session_config() -> SessionConfig {
    let mut config = SessionConfig::new_with_ballista().with_information_schema(true);
    // Spark's Parquet codec rather than DataFusion's zstd(3): teams moving
    // from Spark get the files they had. Measured side by side (2e8 range
    // ids, 100 files, embedded, 2 cores): snappy 3.5-3.6 s and 816 MB,
    // zstd(3) 3.8 s and 244 MB.
    // `SET datafusion.execution.parquet.compression` or a statement's
    // OPTIONS ('compression' ...) override it.
    config.options_mut().execution.parquet.compression = Some(PARQUET_COMPRESSION.to_string());
    // Shuffles (aggregations, joins, partitioned writes) into at least 16
    // partitions rather than one per client core: the work runs on the
    // cluster, and a partitioned write's skewed values then spread over more
    // writers (skewed_events, 1e7 rows by id: 17.0 s with 2, 13.0 s with 8,
    // 12.9 s with 32 on 2 cores). `SET datafusion.execution.target_partitions`
    // overrides it.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    config.options_mut().execution.target_partitions = cores.max(DEFAULT_TARGET_PARTITIONS);
    // Ballista 55's static planner, not its adaptive one (the default):
    // the adaptive graph cannot recover from losing an executor once a
    // stage it fed has started. The job then hangs forever ("Can't find
    // active stage to update stage outputs"; apache/datafusion-ballista#1601
    // was closed unmerged). Seen when the executor running a write's commit
    // was killed; the static graph re-runs the lost map tasks and the commit
    // (test: write_safety.rs, `..._finished_by_a_second_attempt`).
    // `SET ballista.planner.adaptive.enabled = true` brings it back.
    let config = config.set_bool(ADAPTIVE_PLANNER, false);
    // Ballista's sort shuffle buffers 256 MiB of a map task's input before
    // it spills, and holds more than twice that resident: 2.1 GB on an
    // executor with 8 slots in `sluice-bench partitioned --rows 10000000
    // --processes 2 --slots 8`, 0.75 GB with 32 MiB, the job as fast (33.1
    // against 32.8 s). With 64 MiB, 20 M rows on 4 slots: peak 1.98 GB
    // against 2.54 GB, 61.0 against 61.6 s.
    // `SET ballista.shuffle.sort_based.memory_limit_per_task_bytes` overrides it.
    let config = config.set_usize(SORT_SHUFFLE_MEMORY, SORT_SHUFFLE_MEMORY_BYTES);
    config
        .with_ballista_logical_extension_codec(Arc::new(SluiceLogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(SluicePhysicalCodec::default()))
}

/// Runtime with sluice's object store registry.
pub fn runtime_env() -> Result<Arc<RuntimeEnv>> {
    runtime_env_for(&SessionConfig::new())
}

/// Runtime with sluice's object store registry, local files as `config`'s
/// [`LocalAccess`] allows (servers).
pub fn runtime_env_for(config: &SessionConfig) -> Result<Arc<RuntimeEnv>> {
    let stores = SluiceObjectStores::with_local(&LocalAccess::of(config));
    Ok(Arc::new(
        RuntimeEnvBuilder::new()
            .with_object_store_registry(Arc::new(stores))
            .build()?,
    ))
}

/// Registers sluice's functions on a context. Done after Ballista upgrades a
/// state, because that upgrade replaces the scalar function list.
pub fn register_functions(ctx: &SessionContext) {
    for udf in sluice_udfs::scalar_functions() {
        ctx.register_udf(udf.as_ref().clone());
    }
    ctx.register_udtf("range", Arc::new(sluice_udfs::range::RangeFunction));
    ctx.register_udtf(
        "skewed_events",
        Arc::new(sluice_udfs::skewed::SkewedEventsFunction),
    );
}

/// The state the scheduler plans with (and executors decode with): DataFusion
/// defaults, sluice's physical planner for writes, functions and stores.
pub fn server_state(config: SessionConfig) -> Result<SessionState> {
    // Ballista's scheduler builds every client's session here, with the
    // settings the client sent.
    super::limits::check_settings(&config)?;
    let config = config
        .with_ballista_logical_extension_codec(Arc::new(SluiceLogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(SluicePhysicalCodec::default()));
    let mut functions = ballista_core::extension::ballista_scalar_functions();
    functions.extend(sluice_udfs::scalar_functions());
    let runtime = runtime_env_for(&config)?;
    let mut state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_query_planner(Arc::new(SluiceQueryPlanner))
        .with_scalar_functions(functions)
        .with_aggregate_functions(ballista_core::extension::ballista_aggregate_functions())
        .with_window_functions(ballista_core::extension::ballista_window_functions())
        .build();
    install_table_factories(&mut state);
    Ok(state)
}

/// The state a client starts from before Ballista turns it into a remote one
/// (dialling the scheduler and executors over `tls` when set).
pub fn client_state(tls: Option<&crate::tls::ClusterTls>) -> Result<SessionState> {
    // Pull tracking records the scheduler's job id as soon as the job is
    // accepted; push tracking only reports it with the first status change,
    // which leaves the progress bar blind for a short job.
    let config = session_config().set_bool(ballista_core::config::BALLISTA_CLIENT_PULL, true);
    let config = match tls {
        Some(tls) => tls.install(config),
        None => config,
    };
    let mut state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime_env()?)
        .build();
    install_table_factories(&mut state);
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballista_core::config::BallistaConfig;

    /// The sort shuffle's per-task buffer as executors will read it.
    fn sort_shuffle_buffer(config: &SessionConfig) -> usize {
        config
            .options()
            .extensions
            .get::<BallistaConfig>()
            .cloned()
            .unwrap_or_default()
            .shuffle_sort_based_memory_limit_per_task_bytes()
    }

    #[test]
    fn sort_shuffle_buffer_is_sluices_default_and_a_set_wins() {
        let config = session_config();
        assert_eq!(sort_shuffle_buffer(&config), SORT_SHUFFLE_MEMORY_BYTES);
        let config = config.set_usize(SORT_SHUFFLE_MEMORY, 1 << 20);
        assert_eq!(sort_shuffle_buffer(&config), 1 << 20);
    }
}
