//! Sources a job reads that are not files: [`kafka`] topics and
//! [`shards`] (DynamoDB Streams, Kinesis), each a table whose scan reads a
//! given set of ranges (a stream's batch) as the partitions of a Ballista
//! job, so the executors, not the client, fetch; and [`dynamodb`], the
//! rate-limited parallel read of a DynamoDB table; and [`json_lines`], JSON
//! files read line by line so that bad lines become rows with an `_error`.

pub mod dynamodb;
pub mod json_lines;
pub mod kafka;
pub mod shards;
