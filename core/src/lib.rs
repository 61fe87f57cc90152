//! sluice's engine, in layers; a module uses only the layers below it
//! (checked by `tests/layers.rs`):
//!
//! 1. base: [`error`], [`clock`], [`config`], [`metrics`], [`alloc`],
//!    [`exec`] (operator boilerplate), [`tls`] (cluster mutual TLS)
//! 2. [`storage`]: how every process reaches S3 and DynamoDB
//! 3. [`coordinator`]: the cluster service that placement and leases go
//!    through (in the scheduler)
//! 4. [`sink`]: each sink (files, DynamoDB) with its operators; [`source`]:
//!    sources that are not files (Kafka), with their scan operators
//! 5. [`plan`]: session, codecs, planner and tables every process shares
//! 6. [`client`]: job files, the runner and the scheduler's REST API
//! 7. [`stream`]: micro-batch runs of a job over what arrived since the last batch
//!
//! `ARCHITECTURE.md` at the repository root follows one job through them.

pub mod alloc;
pub mod client;
pub mod clock;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod exec;
pub mod metrics;
pub mod plan;
pub mod sink;
pub mod source;
pub mod storage;
pub mod stream;
pub mod tls;

pub use error::SluiceError;
