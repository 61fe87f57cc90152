//! sluice's engine pieces, shared by the CLI, the scheduler and the executors:
//! job files ([`job`]), the distributed write path ([`write`]), the codecs that
//! carry sluice's plan nodes between processes ([`codec`]), session setup
//! ([`session`]), configuration ([`config`]) and the job runner ([`runner`]).

pub mod codec;
pub mod config;
pub mod error;
pub mod job;
pub mod runner;
pub mod session;
pub mod write;

pub use error::SluiceError;
