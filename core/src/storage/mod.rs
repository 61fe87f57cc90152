//! How sluice reaches AWS, for every process: the shared SDK configuration
//! and credential chain ([`aws`]), S3 stores and their registry ([`s3`]),
//! S3 multipart upload calls ([`multipart`]) and the DynamoDB client
//! ([`dynamodb`]). No plan or sink logic: the sinks and the coordinator
//! build on these.

pub mod aws;
pub mod dynamodb;
pub mod multipart;
pub mod s3;
