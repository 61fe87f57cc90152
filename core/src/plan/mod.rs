//! The plan pieces every process shares: the session (functions, object
//! stores, table factories, sluice's planner), the codecs that carry sluice's
//! plan nodes from client to scheduler to executors, and the directory
//! tables that read only data files.

pub mod codec;
pub mod dynamodb;
pub mod limits;
pub mod planner;
pub mod session;
pub mod tables;

pub use planner::{SluiceQueryPlanner, WritePlanner};
