//! sluice's engine pieces, shared by the CLI, the scheduler and the executors:
//! job files ([`job`]), the distributed write path ([`write`]), the codecs that
//! carry sluice's plan nodes between processes ([`codec`]), session setup
//! ([`session`]), directory tables that skip `_SUCCESS` ([`tables`]), configuration ([`config`]), Prometheus metrics ([`metrics`]) and the job runner
//! ([`runner`]), the DynamoDB sink ([`dynamo`]) and the AWS configuration and credentials they share ([`aws`]).

pub mod alloc;
pub mod aws;
pub mod codec;
pub mod config;
pub mod dynamo;
pub mod error;
pub mod job;
pub mod metrics;
pub mod runner;
pub mod session;
pub mod tables;
pub mod write;

pub use error::SluiceError;
