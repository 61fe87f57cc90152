//! Sources a job reads that are not files: [`kafka`] topics and
//! [`shards`] (DynamoDB Streams, Kinesis). Each is a
//! table whose scan reads a given set of ranges (a stream's batch) as the
//! partitions of a Ballista job, so the executors, not the client, fetch.

pub mod kafka;
pub mod shards;
