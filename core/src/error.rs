//! sluice's library errors. Each names what failed and where, so the CLI can
//! print it as is; [`SluiceError::into_datafusion`] carries one through
//! DataFusion and Ballista without losing its text.

use datafusion::error::DataFusionError;

#[derive(Debug, thiserror::Error)]
pub enum SluiceError {
    #[error(
        "{file}:{line}: unknown variable ${{{name}}} (set it with `SET {name}=...;` or `--var {name}=...`)"
    )]
    UnknownVariable {
        file: String,
        line: usize,
        name: String,
    },
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}:{line}: statement failed: {source}")]
    Statement {
        file: String,
        line: usize,
        #[source]
        source: Box<DataFusionError>,
    },
    #[error("unsupported output format '{format}' (supported: parquet, csv, json)")]
    UnsupportedFormat { format: String },
    #[error("invalid output location '{url}': {reason}")]
    InvalidOutput { url: String, reason: String },
    #[error("output location '{url}' is not writable: {reason}")]
    Unwritable { url: String, reason: String },
    #[error("writing {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("commit of write {write_id} to {url} failed: {reason}")]
    Commit {
        write_id: String,
        url: String,
        reason: String,
    },
    #[error("scheduler at {endpoint} is unreachable: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error("{file}:{line}: interrupted before this statement ran")]
    Interrupted { file: String, line: usize },
    #[error("codec: {0}")]
    Codec(String),
}

impl SluiceError {
    pub fn into_datafusion(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
    }
}

impl From<SluiceError> for DataFusionError {
    fn from(e: SluiceError) -> Self {
        e.into_datafusion()
    }
}

impl SluiceError {
    /// Wraps an engine error with the job file and line it came from.
    pub fn in_statement(
        file: &str,
        line: usize,
    ) -> impl Fn(DataFusionError) -> SluiceError + Copy + '_ {
        move |e| SluiceError::Statement {
            file: file.to_string(),
            line,
            source: Box::new(e),
        }
    }
}
