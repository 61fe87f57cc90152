//! How sluice reaches AWS, for every process: the shared SDK configuration
//! and credential chain ([`aws`]), local files and who may reach them
//! ([`local`]), S3 stores and their registry ([`s3`]),
//! S3 multipart upload calls ([`multipart`]) and the DynamoDB client
//! ([`dynamodb`]). No plan or sink logic: the sinks and the coordinator
//! build on these.

pub mod aws;
pub mod dynamodb;
pub mod local;
pub mod multipart;
pub mod s3;
