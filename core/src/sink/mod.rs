//! Where jobs write: each sink in its own module, independent of the others.
//! A sink owns its options ("spec"), its logical write node, the physical
//! shape that node becomes, and its writer and commit operators.

pub mod dynamo;
pub mod files;
