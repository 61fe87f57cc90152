//! The file sink: Parquet, CSV and NDJSON to a local directory or S3,
//! through sluice's distributed writer and committer. A writer operator runs
//! in every task of the write stage, then one commit operator makes the
//! output visible. DataFusion's `DataSinkExec` needs a single input
//! partition, which would funnel every row through one task; this path keeps
//! the writes parallel.
//!
//! - [`spec`]: what a write asks for (options, checked on the client)
//! - [`node`]: the logical node and its physical shape
//! - [`route`]: the map side of a skew-aware partitioned write
//! - [`writer`], [`output`], [`hive`]: the writer operator, its files, Hive
//!   partition directories
//! - [`markers`]: the record of every multipart upload started
//! - [`commit`], [`committer`], [`manifest`]: the commit operator, its
//!   algorithm, the `_SUCCESS` manifest
//! - [`lock`]: one write at a time per output, surviving a dead client
//! - [`clean`]: cleanup of writes that will never commit

pub mod clean;
pub mod commit;
pub mod committer;
pub mod hive;
pub mod lock;
pub mod manifest;
pub mod markers;
mod metrics;
pub mod node;
pub mod output;
pub mod route;
pub mod spec;
pub mod writer;

pub use clean::{CleanedWrite, abandon, clean_abandoned, remove_staging};
pub use commit::{CommitExec, CommitReport, write_result_schema};
pub use committer::{commit, finish, unpublished};
pub use manifest::{CommittedFile, SuccessData};
pub use node::{WriteNode, plan_write, size_skew_shuffles};
pub use route::{RouteSpec, SkewRouteExec};
pub use spec::{
    COMMITTER_OPTION, Committer, STAGING_DIR, SUCCESS_FILE, WriteFormat, WriteSpec,
    normalize_output_url,
};
pub use writer::{WriterExec, WrittenFile, attach_global_partitions, written_file_schema};
