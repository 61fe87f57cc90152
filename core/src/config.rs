//! Typed client configuration, documented in one place (README, "Configuration").
//! Sources, later ones winning: built-in defaults, a TOML file (`--config`,
//! `SLUICE_CONFIG`, or `./sluice.toml` when present), `SLUICE_*` environment
//! variables, then command-line flags (applied by the CLI).

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::error::SluiceError;

/// The binaries' `--version`: the version, and whether this is a test
/// build (test-only SQL functions or the benchmark's rename committers
/// compiled in), which `deploy/install.sh` refuses to install.
pub const VERSION: &str = match (
    sluice_udfs::TEST_FUNCTIONS,
    cfg!(feature = "bench-committers"),
) {
    (false, false) => env!("CARGO_PKG_VERSION"),
    (true, false) => concat!(env!("CARGO_PKG_VERSION"), " (test build: test-functions)"),
    (false, true) => concat!(env!("CARGO_PKG_VERSION"), " (test build: bench-committers)"),
    (true, true) => concat!(
        env!("CARGO_PKG_VERSION"),
        " (test build: test-functions, bench-committers)"
    ),
};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SluiceConfig {
    /// Scheduler `host:port` for `submit`, `jobs`, `status`, `cancel`.
    pub scheduler: String,
    /// The cluster's coordinator, `host:port` or a URL (default: the
    /// scheduler's host, port 50090; https with TLS), for `submit` and
    /// `limiter`.
    pub coordinator: Option<String>,
    /// Executors the embedded cluster of `sluice run` starts. One by default:
    /// Ballista reads a shuffle section held by another executor whole into
    /// memory (a streaming read only for its own files), so two executors in
    /// one process ran a 100 M-row partitioned write out of memory (24 GB)
    /// where one executor finished it at 9.4 GB.
    pub executors: usize,
    /// Task slots (vcores) per embedded executor (0: the core count).
    pub executor_slots: usize,
    /// Seconds to wait for a scheduler to answer before giving up.
    pub connect_timeout_secs: u64,
    /// Seconds a submitted job may wait with no executor alive before it is
    /// cancelled and fails (Ballista would keep it queued forever).
    pub no_executor_timeout_secs: u64,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides it.
    pub log: String,
    /// Output locations (and everything under them) that no overwrite may
    /// replace, e.g. `["s3://warehouse/raw/", "/var/"]`. Bucket and
    /// filesystem roots are always refused.
    pub protected_outputs: Vec<String>,
    /// Cluster TLS (all three or none): the CA bundle, and this client's
    /// certificate and key (`sluice certs`).
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for SluiceConfig {
    fn default() -> Self {
        Self {
            scheduler: "localhost:50050".to_string(),
            coordinator: None,
            executors: 1,
            executor_slots: 0,
            connect_timeout_secs: 10,
            no_executor_timeout_secs: 120,
            log: DEFAULT_LOG.to_string(),
            protected_outputs: vec![],
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl SluiceConfig {
    /// Loads defaults, then the file, then `SLUICE_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, SluiceError> {
        let file: Option<PathBuf> = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("SLUICE_CONFIG").map(PathBuf::from))
            .or_else(|| {
                let local = PathBuf::from("sluice.toml");
                local.exists().then_some(local)
            });
        let mut figment = Figment::from(Serialized::defaults(Self::default()));
        if let Some(path) = &file {
            if !path.exists() {
                return Err(SluiceError::Config(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment
            .merge(Env::prefixed("SLUICE_").ignore(&["config"]))
            .extract()
            .map_err(|e| SluiceError::Config(e.to_string()))
    }

    /// Task slots (vcores) per embedded executor; see [`default_slots`].
    pub fn slots(&self) -> usize {
        if self.executor_slots > 0 {
            return self.executor_slots;
        }
        default_slots()
    }
}

/// Layers a server binary's flags the same way as the client's settings: a
/// TOML file (keys are the long flag names, `bind-port = 50050`) gives
/// defaults, `SLUICE_<FLAG>` variables override the file, flags override both.
pub fn layered_command(
    mut cmd: clap::Command,
    file: Option<&Path>,
) -> Result<clap::Command, SluiceError> {
    let mut from_file: std::collections::HashMap<String, String> = Default::default();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| SluiceError::ConfigRead {
            path: path.display().to_string(),
            source,
        })?;
        let table: toml::Table =
            text.parse()
                .map_err(|source: toml::de::Error| SluiceError::ConfigToml {
                    path: path.display().to_string(),
                    source: Box::new(source),
                })?;
        for (key, value) in table {
            let value = match value {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            from_file.insert(key.replace('_', "-"), value);
        }
    }
    let known: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    if let Some(unknown) = from_file.keys().find(|k| !known.contains(k)) {
        return Err(SluiceError::Config(format!(
            "unknown setting '{unknown}' in config file (settings are the long flag names)"
        )));
    }
    cmd = cmd.mut_args(|arg| {
        let Some(long) = arg.get_long().map(str::to_string) else {
            return arg;
        };
        if long == "help" || long == "version" {
            return arg;
        }
        let env = format!("SLUICE_{}", long.replace('-', "_").to_ascii_uppercase());
        let arg = arg.env(env);
        match from_file.get(&long) {
            Some(v) => arg.default_value(v.clone()),
            None => arg,
        }
    });
    Ok(cmd)
}

/// Finds `--config FILE` in raw arguments before clap runs.
pub fn config_file_arg(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("SLUICE_CONFIG").map(PathBuf::from)
}

/// sluice's own warnings only: a dependency's warnings and errors (the AWS
/// SDK retrying a credential source, Ballista's spill notices, the embedded
/// executors' poll loops as the process stops) repeat or pre-empt the one
/// error the CLI prints; `--log warn` (or any filter) shows them.
pub const DEFAULT_LOG: &str =
    "off,sluice_core=warn,sluice_cli=warn,sluice_executor=warn,sluice_scheduler=warn";

/// Default vcores per executor: twice the cores, at least 16. Ballista 55
/// hands a task as many partitions as its executor has free vcores, and each
/// wave of tasks costs a scheduling round trip (~60 ms under pull
/// scheduling), so more vcores mean fewer round trips while the CPU stays
/// shared. Measured on 2 cores, 2 executors, a 100-partition write of 100
/// rows (release): 964 ms with 4 vcores each, 412 ms with 16, 315 ms with 64.
/// The cost is memory: each running partition may buffer a Parquet row group.
pub fn default_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores).max(16)
}

#[cfg(test)]
// figment's test jail returns its own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_override_defaults() -> Result<(), SluiceError> {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "executors = 4\nscheduler = \"h:1\"\n")?;
            jail.set_env("SLUICE_SCHEDULER", "e:2");
            let c = SluiceConfig::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.executors, 4);
            assert_eq!(c.scheduler, "e:2");
            assert_eq!(c.connect_timeout_secs, 10);
            Ok(())
        });
        Ok(())
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = SluiceConfig::load(Some(Path::new("/nonexistent/sluice.toml")));
        assert!(err.is_err_and(|e| e.to_string().contains("/nonexistent/sluice.toml")));
    }
}
