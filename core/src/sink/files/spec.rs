//! What a write statement asks for, decided on the client and carried
//! unchanged through the logical and physical plans to every task.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use url::Url;

use datafusion::common::config::{ConfigField, TableParquetOptions};

use crate::error::SluiceError;

/// File formats the distributed writer can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
pub enum WriteFormat {
    Parquet,
    Csv,
    /// Newline-delimited JSON.
    Json,
}

impl WriteFormat {
    pub fn parse(name: &str) -> Result<Self, SluiceError> {
        match name.to_ascii_lowercase().as_str() {
            "parquet" => Ok(Self::Parquet),
            "csv" => Ok(Self::Csv),
            "json" | "ndjson" => Ok(Self::Json),
            other => Err(SluiceError::UnsupportedFormat {
                format: other.to_string(),
            }),
        }
    }

    pub fn extension(&self) -> &'static str {
        match self {
            Self::Parquet => "parquet",
            Self::Csv => "csv",
            Self::Json => "json",
        }
    }
}

/// How a write makes its files visible. `Auto` is the one to use: multipart
/// uploads on S3, staged files and a rename at commit elsewhere. The rename
/// shapes of Hadoop's FileOutputCommitter exist to be measured against it
/// (`sluice-bench s3-commit`); on S3 each rename is a copy and a delete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
pub enum Committer {
    #[default]
    Auto,
    /// v1: the task renames its file into a task-committed area, the job
    /// commit renames it again into place.
    RenameV1,
    /// v2: the task renames its file into place itself (visible before the
    /// job commits); the job commit only writes the manifest.
    RenameV2,
}

/// The statement option that picks a [`Committer`].
pub const COMMITTER_OPTION: &str = "sluice.committer";

impl Committer {
    pub fn parse(value: &str) -> Result<Self, SluiceError> {
        match value.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            #[cfg(feature = "bench-committers")]
            "rename-v1" => Ok(Self::RenameV1),
            #[cfg(feature = "bench-committers")]
            "rename-v2" => Ok(Self::RenameV2),
            #[cfg(not(feature = "bench-committers"))]
            "rename-v1" | "rename-v2" => Err(SluiceError::InvalidOutput {
                url: String::new(),
                reason: format!(
                    "{COMMITTER_OPTION} '{value}' is a benchmark's comparison, built only into benchmark and test binaries (feature bench-committers); use auto"
                ),
            }),
            other => Err(SluiceError::InvalidOutput {
                url: String::new(),
                reason: format!(
                    "unknown {COMMITTER_OPTION} '{other}' (expected auto, rename-v1 or rename-v2)"
                ),
            }),
        }
    }
}

/// The column carrying a row's chunk from the map side of a skew-aware
/// write (`route`) to the writer.
pub const CHUNK_COLUMN: &str = "__sluice_chunk";

/// Directory under the output where tasks stage files before the commit.
/// Hidden (leading `_`) so engines listing the output skip it.
pub const STAGING_DIR: &str = "_sluice_staging";
/// The manifest the commit writes last.
pub const SUCCESS_FILE: &str = "_SUCCESS";

/// One write: where, how, and the id that names its files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
pub struct WriteSpec {
    /// Output directory URL, always ending in `/`.
    pub url: String,
    pub format: WriteFormat,
    /// Replace what the directory held (`INSERT OVERWRITE`), or add to it (`COPY`).
    pub overwrite: bool,
    /// Unique per statement; names the staging directory and the final files.
    pub write_id: String,
    /// Format options (`compression`, ...), as in `COPY ... OPTIONS`.
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub committer: Committer,
    /// Hive-style partition columns (`k=v/` directories), in order.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// How partition directories are named (`write.partition_style`).
    #[serde(default)]
    pub partition_style: PartitionStyle,
    /// Files a partitioned writer keeps open at once.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: usize,
    /// Bytes a partitioned writer may buffer before finishing files early.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: usize,
    /// Rows after which a writer starts a new file (per partition value).
    #[serde(default)]
    pub target_file_rows: Option<u64>,
    /// Encoded bytes after which a writer starts a new file.
    #[serde(default)]
    pub target_file_bytes: Option<u64>,
    /// How rows reach the writers of a partitioned write.
    #[serde(default)]
    pub distribution: Distribution,
    /// How long to wait for another write holding the output's lock
    /// (`write.lock_wait`; 0: fail at once, naming the holder).
    #[serde(default)]
    pub lock_wait_ms: u64,
    /// How long the lock outlives a client that stopped renewing it
    /// (`write.lock_ttl`).
    #[serde(default = "default_lock_ttl_ms")]
    pub lock_ttl_ms: u64,
    /// The output lock generation this write holds (set by the client once
    /// it holds it); the commit and the writers check it is still held.
    #[serde(default)]
    pub lock_generation: Option<u64>,
    /// Columns a micro-batch's writers count rows by (the first one the
    /// written rows have): the source split each row came from, so a
    /// batch accounts for its input split by split.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub count_by: Vec<String>,
    /// A micro-batch's write: the commit task records the commit's intent
    /// and publishes nothing; the client publishes every write of the batch
    /// once the batch's commit record is written (`committer::finish`), so
    /// no write of a batch is visible before the batch commits.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub defer_publish: bool,
}

/// How a partitioned write distributes rows to its writers
/// (`OPTIONS ('write.distribution' 'skew'|'hash'|'none')`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
pub enum Distribution {
    /// One shuffle in which each value's rows are cut into chunks of
    /// `write.target_file_rows` as they pass, one file per chunk, a large
    /// value's chunks spread over the writers (see [`super::route`]).
    /// Without a target it is `Hash`.
    #[default]
    Skew,
    /// One shuffle by the partition columns: each value is written by one
    /// writer, which rolls files at `write.target_file_rows`.
    Hash,
    /// Write where the rows are: each task writes every value it sees.
    None,
}

/// How a partitioned write names its directories
/// (`OPTIONS ('write.partition_style' 'hive'|'values')`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
pub enum PartitionStyle {
    /// `k=v/k2=v2/`, which Hive, Spark, Athena and sluice read back as
    /// columns.
    #[default]
    Hive,
    /// `v/v2/`, Firehose's `yyyy/MM/dd/HH/` layout; readers see no
    /// partition columns, so keep the values in the rows too.
    Values,
}

pub const PARTITION_STYLE_OPTION: &str = "write.partition_style";
pub const TARGET_FILE_ROWS_OPTION: &str = "write.target_file_rows";
pub const TARGET_FILE_BYTES_OPTION: &str = "write.target_file_bytes";
pub const DISTRIBUTION_OPTION: &str = "write.distribution";
pub const LOCK_WAIT_OPTION: &str = "write.lock_wait";
pub const LOCK_TTL_OPTION: &str = "write.lock_ttl";

fn default_lock_ttl_ms() -> u64 {
    super::lock::DEFAULT_TTL.as_millis() as u64
}

/// A duration option: `30s`, `2m`, `500ms`, or a number of seconds.
fn take_duration(
    options: &mut BTreeMap<String, String>,
    key: &str,
    default: std::time::Duration,
) -> Result<std::time::Duration, SluiceError> {
    match options.remove(key) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(secs) => Ok(std::time::Duration::from_secs(secs)),
            Err(_) => humantime::parse_duration(v.trim()).map_err(|e| SluiceError::InvalidOutput {
                url: String::new(),
                reason: format!("{key} must be a duration like 30s or 2m, got '{v}': {e}"),
            }),
        },
    }
}

/// The statement options that cap a partitioned writer.
pub const MAX_OPEN_FILES_OPTION: &str = "write.max_open_files";
pub const MAX_BUFFERED_BYTES_OPTION: &str = "write.max_buffered_bytes";

fn default_max_open_files() -> usize {
    32
}

fn default_max_buffered_bytes() -> usize {
    256 * 1024 * 1024
}

/// CSV and NDJSON writers' options (`format.has_header`, `format.delimiter`).
#[derive(Debug, Clone, Copy)]
pub struct TextOptions {
    pub header: bool,
    pub delimiter: u8,
}

const TEXT_OPTIONS: &str = "format.has_header, format.delimiter";

impl TextOptions {
    pub fn parse(
        format: WriteFormat,
        options: &BTreeMap<String, String>,
    ) -> Result<Self, SluiceError> {
        let mut out = Self {
            header: true,
            delimiter: b',',
        };
        let bad = |key: &str, reason: String| SluiceError::BadWriteOption {
            url: String::new(),
            key: key.to_string(),
            reason,
            valid: TEXT_OPTIONS.to_string(),
        };
        for (key, value) in options {
            match key.strip_prefix("format.").unwrap_or(key) {
                "has_header" => {
                    out.header = value
                        .parse()
                        .map_err(|_| bad(key, format!("must be true or false, got '{value}'")))?;
                }
                "delimiter" => match value.as_bytes() {
                    [b] => out.delimiter = *b,
                    _ => return Err(bad(key, format!("must be one byte, got '{value}'"))),
                },
                _ => {
                    return Err(bad(
                        key,
                        format!("is not a {} write option", format.extension()),
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// Whether an option key looks like a credential: those never belong in a
/// statement, whose options travel in the plan (and the scheduler serves
/// plans over REST).
pub fn is_credential(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.starts_with("aws.")
        || [
            "secret",
            "access_key",
            "session_token",
            "password",
            "credential",
        ]
        .iter()
        .any(|w| key.contains(w))
}

/// Checks the options left for the format's encoder, on the client, so a
/// bad one fails the statement before anything runs, naming the option and
/// the valid ones.
fn check_format_options(
    url: &str,
    format: WriteFormat,
    options: &BTreeMap<String, String>,
) -> Result<(), SluiceError> {
    if let Some(key) = options.keys().find(|k| is_credential(k)) {
        return Err(SluiceError::CredentialOption {
            url: url.to_string(),
            key: key.clone(),
        });
    }
    let named = |e: SluiceError| match e {
        SluiceError::BadWriteOption {
            key, reason, valid, ..
        } => SluiceError::BadWriteOption {
            url: url.to_string(),
            key,
            reason,
            valid,
        },
        other => other,
    };
    match format {
        WriteFormat::Csv | WriteFormat::Json => {
            TextOptions::parse(format, options).map_err(named)?;
        }
        WriteFormat::Parquet => {
            let mut parquet = TableParquetOptions::default();
            for (key, value) in options {
                let short = key.strip_prefix("format.").unwrap_or(key);
                if let Err(e) = parquet.set(short, value) {
                    let valid = TableParquetOptions::default()
                        .entries()
                        .into_iter()
                        .map(|e| e.key)
                        .filter(|k| !k.contains("::"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(SluiceError::BadWriteOption {
                        url: url.to_string(),
                        key: key.clone(),
                        reason: crate::error::render(&e),
                        valid: format!("{valid}, and sluice's write.* options"),
                    });
                }
            }
        }
    }
    Ok(())
}

fn take_usize(
    options: &mut BTreeMap<String, String>,
    key: &str,
    default: usize,
) -> Result<usize, SluiceError> {
    match options.remove(key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| SluiceError::InvalidOutput {
            url: String::new(),
            reason: format!("{key} must be a whole number, got '{v}'"),
        }),
    }
}

impl WriteSpec {
    pub fn new(
        url: &str,
        format: WriteFormat,
        overwrite: bool,
        options: BTreeMap<String, String>,
    ) -> Result<Self, SluiceError> {
        // Option errors name the statement's output.
        let named = |e: SluiceError| match e {
            SluiceError::InvalidOutput { reason, .. } => SluiceError::InvalidOutput {
                url: url.to_string(),
                reason,
            },
            other => other,
        };
        let mut options = options;
        let committer = match options.remove(COMMITTER_OPTION) {
            Some(v) => Committer::parse(&v).map_err(named)?,
            None => Committer::Auto,
        };
        let max_open_files = take_usize(
            &mut options,
            MAX_OPEN_FILES_OPTION,
            default_max_open_files(),
        )
        .map_err(named)?;
        let max_buffered_bytes = take_usize(
            &mut options,
            MAX_BUFFERED_BYTES_OPTION,
            default_max_buffered_bytes(),
        )
        .map_err(named)?;
        let target_file_rows =
            match take_usize(&mut options, TARGET_FILE_ROWS_OPTION, 0).map_err(named)? {
                0 => None,
                n => Some(n as u64),
            };
        let target_file_bytes =
            match take_usize(&mut options, TARGET_FILE_BYTES_OPTION, 0).map_err(named)? {
                0 => None,
                n => Some(n as u64),
            };
        let distribution = match options.remove(DISTRIBUTION_OPTION).as_deref() {
            None | Some("skew") => Distribution::Skew,
            Some("hash") => Distribution::Hash,
            Some("none") => Distribution::None,
            Some(other) => {
                return Err(SluiceError::InvalidOutput {
                    url: url.to_string(),
                    reason: format!(
                        "unknown {DISTRIBUTION_OPTION} '{other}' (expected skew, hash or none)"
                    ),
                });
            }
        };
        let partition_style = match options.remove(PARTITION_STYLE_OPTION).as_deref() {
            None | Some("hive") => PartitionStyle::Hive,
            Some("values") => PartitionStyle::Values,
            Some(other) => {
                return Err(SluiceError::InvalidOutput {
                    url: url.to_string(),
                    reason: format!(
                        "unknown {PARTITION_STYLE_OPTION} '{other}' (expected hive or values)"
                    ),
                });
            }
        };
        let lock_wait =
            take_duration(&mut options, LOCK_WAIT_OPTION, Default::default()).map_err(named)?;
        let lock_ttl = take_duration(&mut options, LOCK_TTL_OPTION, super::lock::DEFAULT_TTL)
            .map_err(named)?;
        // S3 keeps modification times to the second, and clocks differ:
        // a lease shorter than this expires while renewed.
        if lock_ttl < std::time::Duration::from_secs(2)
            || lock_ttl > std::time::Duration::from_secs(3600)
        {
            return Err(named(SluiceError::InvalidOutput {
                url: String::new(),
                reason: format!("{LOCK_TTL_OPTION} must be between 2s and 1h"),
            }));
        }
        if lock_wait > std::time::Duration::from_secs(24 * 3600) {
            return Err(named(SluiceError::InvalidOutput {
                url: String::new(),
                reason: format!("{LOCK_WAIT_OPTION} must be at most 24h"),
            }));
        }
        check_format_options(url, format, &options)?;
        let normalized = normalize_output_url(url)?;
        if overwrite && normalized.path().trim_matches('/').is_empty() {
            return Err(SluiceError::InvalidOutput {
                url: url.to_string(),
                reason: "an overwrite replaces everything under its location; refusing to overwrite a bucket or filesystem root".into(),
            });
        }
        Ok(Self {
            url: normalized.to_string(),
            format,
            overwrite,
            write_id: uuid::Uuid::new_v4().simple().to_string(),
            options,
            committer,
            partition_by: vec![],
            partition_style,
            max_open_files,
            max_buffered_bytes,
            target_file_rows,
            target_file_bytes,
            distribution,
            lock_wait_ms: lock_wait.as_millis() as u64,
            lock_ttl_ms: lock_ttl.as_millis() as u64,
            lock_generation: None,
            count_by: vec![],
            defer_publish: false,
        })
    }

    /// Where this write's commit records what it is doing, so a second
    /// attempt of the commit finishes the same commit.
    pub fn intent_path(&self) -> Result<object_store::path::Path, SluiceError> {
        Ok(self.staging_prefix()?.join("commit.json"))
    }

    /// The output's lock (see [`super::lock`]).
    pub fn lock(
        &self,
        store: std::sync::Arc<dyn object_store::ObjectStore>,
        clock: std::sync::Arc<dyn crate::clock::Clock>,
    ) -> Result<super::lock::OutputLock, SluiceError> {
        Ok(super::lock::OutputLock::new(
            store,
            &self.base_path()?,
            &self.url,
            clock,
        ))
    }

    /// This write's lock generation and its output's lock, if it holds one
    /// (a write planned without one, by a test of one operator, is not checked).
    fn held_lock(
        &self,
        store: &std::sync::Arc<dyn object_store::ObjectStore>,
    ) -> Result<Option<(u64, super::lock::OutputLock)>, super::lock::LockError> {
        let Some(generation) = self.lock_generation else {
            return Ok(None);
        };
        let base = self.base_path().map_err(|e| super::lock::LockError::Lost {
            url: self.url.clone(),
            write_id: self.write_id.clone(),
            reason: e.to_string(),
        })?;
        let lock = super::lock::OutputLock::new(
            std::sync::Arc::clone(store),
            &base,
            &self.url,
            crate::clock::system(),
        );
        Ok(Some((generation, lock)))
    }

    /// Fails unless this write's lock generation is still its output's lock,
    /// whatever its age (the writers' check; see `OutputLock::check_present`).
    pub async fn check_lock_present(
        &self,
        store: &std::sync::Arc<dyn object_store::ObjectStore>,
    ) -> Result<(), super::lock::LockError> {
        match self.held_lock(store)? {
            Some((generation, lock)) => lock.check_present(generation, &self.write_id).await,
            None => Ok(()),
        }
    }

    /// Fails unless this write still holds its output's lock.
    pub async fn check_lock(
        &self,
        store: &std::sync::Arc<dyn object_store::ObjectStore>,
    ) -> Result<(), super::lock::LockError> {
        match self.held_lock(store)? {
            Some((generation, lock)) => lock.check(generation, &self.write_id).await,
            None => Ok(()),
        }
    }

    /// The same write, partitioned by `columns` (Hive directories).
    pub fn with_partition_by(mut self, columns: Vec<String>) -> Self {
        self.partition_by = columns;
        self
    }

    /// `base/dir` (or `base` when `dir` is empty).
    fn dir_path(&self, dir: &str) -> Result<object_store::path::Path, SluiceError> {
        let mut path = self.base_path()?;
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        Ok(path)
    }

    /// Whether writers stream multipart uploads to the final keys.
    pub fn uses_multipart(&self) -> Result<bool, SluiceError> {
        Ok(self.committer == Committer::Auto && crate::storage::s3::is_s3(&self.output_url()?))
    }

    /// The commit of this write failed for `reason`.
    pub fn commit_failed(&self, reason: String) -> SluiceError {
        SluiceError::Commit {
            write_id: self.write_id.clone(),
            url: self.url.clone(),
            reason,
        }
    }

    /// A store call of this write's commit or cleanup failed.
    pub fn store_failed(&self, what: String, source: object_store::Error) -> SluiceError {
        SluiceError::CommitStore {
            write_id: self.write_id.clone(),
            url: self.url.clone(),
            what,
            source: Box::new(source),
        }
    }

    /// The committer that will run, by name: `multipart`, `staging`,
    /// `rename-v1` or `rename-v2` (metrics label them so; the manifest
    /// prefixes the first two with `sluice-`).
    pub fn committer_label(&self) -> Result<&'static str, SluiceError> {
        Ok(match self.committer {
            Committer::Auto if self.uses_multipart()? => "multipart",
            Committer::Auto => "staging",
            Committer::RenameV1 => "rename-v1",
            Committer::RenameV2 => "rename-v2",
        })
    }

    /// Where a v1 task commit moves its file (still hidden under staging).
    pub fn task_committed_path(&self, stem: &str) -> Result<object_store::path::Path, SluiceError> {
        Ok(self
            .staging_prefix()?
            .join("committed")
            .join(format!("{stem}.{}.inprogress", self.format.extension())))
    }

    pub fn output_url(&self) -> Result<Url, SluiceError> {
        Url::parse(&self.url).map_err(|e| SluiceError::InvalidOutput {
            url: self.url.clone(),
            reason: e.to_string(),
        })
    }

    /// Object-store path of the output directory (no trailing slash).
    pub fn base_path(&self) -> Result<object_store::path::Path, SluiceError> {
        let url = self.output_url()?;
        object_store::path::Path::from_url_path(url.path()).map_err(|e| {
            SluiceError::InvalidOutput {
                url: self.url.clone(),
                reason: e.to_string(),
            }
        })
    }

    pub fn staging_prefix(&self) -> Result<object_store::path::Path, SluiceError> {
        Ok(self
            .base_path()?
            .join(STAGING_DIR)
            .join(self.write_id.as_str()))
    }

    /// Where the markers of this write's multipart uploads live.
    pub fn uploads_prefix(&self) -> Result<object_store::path::Path, SluiceError> {
        Ok(self.staging_prefix()?.join("uploads"))
    }

    /// A staged file. The `.inprogress` suffix keeps readers that list the
    /// output recursively and filter on `.parquet` from picking it up.
    pub fn staging_path(&self, stem: &str) -> Result<object_store::path::Path, SluiceError> {
        Ok(self
            .staging_prefix()?
            .join(format!("{stem}.{}.inprogress", self.format.extension())))
    }

    /// The write's part of its files' names: a random write id's first 12
    /// characters, or the whole id of a stream's batch (its stream's id and
    /// batch number, which must all be there to keep batches apart).
    pub fn file_tag(&self) -> &str {
        // A batch's id holds `b` and `l`, never all hex: one of 32
        // characters is still a batch's.
        let random =
            self.write_id.len() == 32 && self.write_id.chars().all(|c| c.is_ascii_hexdigit());
        if random {
            self.write_id.get(..12).unwrap_or(&self.write_id)
        } else {
            &self.write_id
        }
    }

    /// The final key of a file written in place (multipart upload): named by
    /// the task attempt that wrote it, since the upload fixes the key.
    pub fn final_path_in(
        &self,
        dir: &str,
        stem: &str,
    ) -> Result<object_store::path::Path, SluiceError> {
        let short = self.file_tag();
        Ok(self
            .dir_path(dir)?
            .join(format!("part-{stem}-{short}.{}", self.format.extension())))
    }

    pub fn final_path(
        &self,
        dir: &str,
        partition: usize,
    ) -> Result<object_store::path::Path, SluiceError> {
        let short = self.file_tag();
        Ok(self.dir_path(dir)?.join(format!(
            "part-{partition:05}-{short}.{}",
            self.format.extension()
        )))
    }
}

/// Whether `text` holds a URL with user info (`scheme://user:secret@host`).
pub fn has_user_info(text: &str) -> bool {
    text.match_indices("://").any(|(at, _)| {
        let rest = &text[at + 3..];
        let authority = rest
            .split(|c: char| c == '/' || c == '\'' || c == '"' || c.is_whitespace())
            .next()
            .unwrap_or_default();
        authority.contains('@')
    })
}

/// Turns what a user wrote (`/tmp/out`, `out/`, `file:///x`, `s3://b/p`) into an
/// absolute directory URL ending in `/`.
pub fn normalize_output_url(raw: &str) -> Result<Url, SluiceError> {
    let invalid = |reason: String| SluiceError::InvalidOutput {
        url: raw.to_string(),
        reason,
    };
    if raw.trim().is_empty() {
        return Err(invalid("the output location is empty".into()));
    }
    if has_user_info(raw) {
        // Never echo it: the user info may be a secret.
        return Err(SluiceError::InvalidOutput {
            url: "<a URL with user info>".into(),
            reason: "credentials in a URL (user:password@) travel in the plan; give them to the processes through their environment, profile or instance role".into(),
        });
    }
    let mut url = match Url::parse(raw) {
        Ok(u) if u.scheme().len() > 1 => u,
        _ => {
            let path = std::path::Path::new(raw);
            let abs = if path.is_absolute() {
                path.to_path_buf()
            } else {
                std::env::current_dir()
                    .map_err(|e| invalid(e.to_string()))?
                    .join(path)
            };
            Url::from_directory_path(&abs).map_err(|_| invalid("not a valid local path".into()))?
        }
    };
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_become_directory_urls() -> Result<(), SluiceError> {
        let u = normalize_output_url("/tmp/x")?;
        assert_eq!(u.as_str(), "file:///tmp/x/");
        let u = normalize_output_url("s3://bucket/a/b")?;
        assert_eq!(u.as_str(), "s3://bucket/a/b/");
        assert!(normalize_output_url("  ").is_err());
        Ok(())
    }

    #[test]
    fn final_names_follow_the_index_and_staging_stays_apart() -> Result<(), SluiceError> {
        let spec = WriteSpec::new("/tmp/o", WriteFormat::Parquet, true, BTreeMap::new())?;
        assert_eq!(spec.final_path("", 3)?, spec.final_path("", 3)?);
        assert_ne!(spec.final_path("", 3)?, spec.final_path("", 4)?);
        assert!(spec.final_path("", 3)?.as_ref().ends_with(".parquet"));
        assert!(
            spec.final_path("k=a/j=1", 3)?
                .as_ref()
                .starts_with("tmp/o/k=a/j=1/part-00003-")
        );
        let staged = spec.staging_path("s001.0-t000002.0-p0003")?;
        assert!(staged.as_ref().contains(STAGING_DIR));
        assert!(staged.as_ref().contains(&spec.write_id));
        Ok(())
    }

    /// A random write id's files carry its first 12 characters; a stream
    /// batch's id whole, even one of 32 characters.
    #[test]
    fn file_tags_keep_a_batch_id_whole() -> Result<(), SluiceError> {
        let mut spec = WriteSpec::new("/tmp/o", WriteFormat::Json, false, BTreeMap::new())?;
        assert_eq!(spec.file_tag(), &spec.write_id[..12]);
        spec.write_id = "6bc4c03a71a9b1000000r1a2b3c4dl23".into();
        assert_eq!(spec.write_id.len(), 32);
        assert_eq!(spec.file_tag(), spec.write_id);
        Ok(())
    }
}
