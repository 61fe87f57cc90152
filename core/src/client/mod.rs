//! The client: job files ([`job`]), the runner that takes a job statement by
//! statement to a scheduler ([`runner`]), the scheduler's REST API
//! ([`rest`]), what a run reports ([`report`]), the checks made before a
//! write ([`preflight`]) and which statements are sluice writes
//! ([`inspect`]). Only `sluice` (the CLI) uses it.

pub mod inspect;
pub mod job;
pub mod preflight;
pub mod report;
pub mod rest;
pub mod runner;

pub use report::{
    DynamoOutcome, JobProgress, JobReport, NoProgress, Progress, StatementOutcome, WriteOutcome,
};
pub use rest::{SchedulerApi, connect, rest_base, wait_for_scheduler};
pub use runner::{BatchWrites, DeferredWrite, Interrupter, JobRunner};
