//! Ceilings on the session settings a client may raise. Each of these sizes
//! what the scheduler plans (a stage holds one task per partition, in the
//! scheduler's memory, with every running job) or what an executor allocates
//! per task, so one client's `SET` of a huge value would take the whole
//! cluster down. The scheduler checks every session it plans with (a client
//! can send any settings); sluice's own client checks after each `SET` so
//! the error names the job's line.

use datafusion::common::{DataFusionError, Result};
use datafusion::prelude::SessionConfig;

use super::session::SORT_SHUFFLE_MEMORY;

/// The most partitions a session may ask for: as many as `range` takes.
pub const MAX_TARGET_PARTITIONS: usize = 10_000;

const MIB: usize = 1024 * 1024;

/// (setting, ceiling, what the setting sizes).
pub const SETTING_CEILINGS: &[(&str, usize, &str)] = &[
    (
        "datafusion.execution.target_partitions",
        MAX_TARGET_PARTITIONS,
        "one task per partition in a stage",
    ),
    (
        "datafusion.execution.batch_size",
        MIB,
        "rows an operator holds per batch",
    ),
    (
        "datafusion.execution.planning_concurrency",
        1024,
        "planning tasks at once",
    ),
    (
        "datafusion.execution.meta_fetch_concurrency",
        1024,
        "file metadata reads at once",
    ),
    (
        SORT_SHUFFLE_MEMORY,
        1024 * MIB,
        "a map task's shuffle buffer",
    ),
    (
        "ballista.shuffle.sort_based.batch_size",
        MIB,
        "rows a shuffle writer holds per batch",
    ),
    (
        "ballista.shuffle.reader.max_bytes_in_flight",
        1024 * MIB,
        "shuffle bytes a reduce task fetches at once",
    ),
    (
        "ballista.shuffle.max_concurrent_read_requests",
        1024,
        "shuffle fetches a reduce task runs at once",
    ),
    (
        "ballista.shuffle.writer_channel_capacity",
        1024,
        "batches queued per shuffle writer",
    ),
];

/// Fails on the first setting of `config` above its ceiling, naming the
/// setting, its value and the ceiling.
pub fn check_settings(config: &SessionConfig) -> Result<()> {
    for entry in config.options().entries() {
        let Some((_, ceiling, sizes)) = SETTING_CEILINGS
            .iter()
            .find(|(key, _, _)| key.eq_ignore_ascii_case(&entry.key))
        else {
            continue;
        };
        let Some(value) = entry.value.as_deref() else {
            continue;
        };
        // Ballista keeps its settings as text; one it cannot read as a
        // number fails where Ballista reads it, with Ballista's own error.
        let Ok(number) = value.trim().parse::<u128>() else {
            continue;
        };
        if number > *ceiling as u128 {
            return Err(DataFusionError::Configuration(format!(
                "{} = {number} is over sluice's ceiling of {ceiling} ({sizes}); \
                 a larger value would let one job exhaust the cluster's memory",
                entry.key
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::session::session_config;

    #[test]
    fn sluices_defaults_are_within_the_ceilings() -> Result<()> {
        check_settings(&session_config())
    }

    #[test]
    fn a_setting_over_its_ceiling_is_refused_by_name() -> Result<()> {
        let mut config = session_config();
        config.options_mut().set(
            "datafusion.execution.target_partitions",
            &MAX_TARGET_PARTITIONS.to_string(),
        )?;
        check_settings(&config)?;
        config
            .options_mut()
            .set("datafusion.execution.target_partitions", "1000000000")?;
        let message = check_settings(&config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains(
                "datafusion.execution.target_partitions = 1000000000 is over sluice's ceiling of 10000"
            ),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn ballista_settings_are_bounded_too() -> Result<()> {
        let mut config = session_config();
        config
            .options_mut()
            .set(SORT_SHUFFLE_MEMORY, "1099511627776")?;
        let message = check_settings(&config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains(&format!("{SORT_SHUFFLE_MEMORY} = 1099511627776 is over")),
            "{message}"
        );
        Ok(())
    }
}
