//! Micro-batch streams (`sluice stream JOB.sql --checkpoint URL`): the same
//! job file run again and again over what arrived since the last batch,
//! each batch's input recorded before it runs and its commit recorded after,
//! so a stream killed at any point and restarted neither loses nor repeats
//! a record.
//!
//! - [`source`]: what a streaming source is (a table whose batch input is a
//!   set of `(split, start, end)` ranges), [`files`], the file source, and
//!   [`kafka`], the Kafka source, and [`shards`], DynamoDB Streams and Kinesis
//! - [`checkpoint`]: the checkpoint's records (`offsets/N`, `commits/N`,
//!   compacted `state/N`) and its lock
//! - [`trigger`]: when batches run (Spark's ProcessingTime, once, available-now)
//! - [`info`]: what each batch reports (delays, rates, lag), and its metrics
//! - [`alarm`]: rules over those reports, and their webhook and command
//! - [`runner`]: the loop that ties them to the client's job runner
//! - [`status`]: what `sluice stream status` reads from a checkpoint

pub mod alarm;
pub mod checkpoint;
pub mod error;
pub mod files;
pub mod info;
pub mod isolate;
pub mod kafka;
pub mod runner;
pub mod shards;
pub mod source;
pub mod status;
pub mod trigger;

pub use alarm::{AlarmEvent, AlarmRule, AlarmState};
pub use checkpoint::Checkpoint;
pub use error::StreamError;
pub use info::BatchInfo;
pub use runner::{StreamObserver, StreamOptions, StreamRunner, StreamSummary};
pub use status::{StreamStatus, status};
pub use trigger::Trigger;
