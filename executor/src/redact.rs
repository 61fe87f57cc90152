//! A task's error leaves the executor redacted. Ballista sends a failed
//! task's error to the scheduler as text (`{:?}` of the error, with every
//! cause), which keeps it in the job and serves it on its REST API
//! (`/api/job/{id}`) and to `sluice status`; an S3 or DynamoDB error can
//! quote the signed request (signature, session token, key id). Logs are
//! redacted by the binaries' log writer; this covers the error that
//! travels. An error with nothing to redact is passed on as it is, so
//! Ballista still tells a shuffle fetch failure or an I/O error (retried)
//! from the rest by its type.

use std::fmt;
use std::sync::Arc;

use ballista_core::error::BallistaError;
use ballista_core::serde::protobuf::{
    RuntimeStatsReport, ShuffleWritePartition, TaskColumnStats, WindowStateReport,
};
use ballista_executor::execution_engine::QueryStageExecutor;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::metrics::MetricsSet;

/// A query stage whose errors are redacted on their way out.
#[derive(Debug)]
pub struct RedactedStage(pub Arc<dyn QueryStageExecutor>);

impl fmt::Display for RedactedStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// `e`, or its redacted text when it quotes a secret. Ballista decides
/// from the error's type whether a task is retried (I/O) or its input's map
/// stage re-run (a shuffle fetch failure), so those keep their type.
pub fn redacted(e: DataFusionError) -> DataFusionError {
    // The form Ballista sends: Debug, causes included.
    let text = format!("{e:?}");
    let clean = sluice_core::error::redact(&text);
    if clean == text {
        return e;
    }
    match e {
        DataFusionError::IoError(io) => {
            DataFusionError::IoError(std::io::Error::new(io.kind(), clean))
        }
        DataFusionError::External(inner) => match inner.downcast::<BallistaError>() {
            Ok(b) => match *b {
                // Between executors' Flight ports: no AWS request in it.
                fetch @ BallistaError::FetchFailed(..) => {
                    DataFusionError::External(Box::new(fetch))
                }
                BallistaError::IoError(io) => DataFusionError::External(Box::new(
                    BallistaError::IoError(std::io::Error::new(io.kind(), clean)),
                )),
                _ => DataFusionError::Execution(clean),
            },
            Err(_) => DataFusionError::Execution(clean),
        },
        _ => DataFusionError::Execution(clean),
    }
}

#[async_trait::async_trait]
impl QueryStageExecutor for RedactedStage {
    async fn execute_query_stage(
        &self,
        task_id: usize,
        context: Arc<TaskContext>,
    ) -> Result<Vec<ShuffleWritePartition>> {
        self.0
            .execute_query_stage(task_id, context)
            .await
            .map_err(redacted)
    }

    fn collect_plan_metrics(&self) -> Vec<MetricsSet> {
        self.0.collect_plan_metrics()
    }

    fn collect_runtime_stats_reports(&self) -> Vec<RuntimeStatsReport> {
        self.0.collect_runtime_stats_reports()
    }

    fn collect_window_state_reports(&self) -> Result<Vec<WindowStateReport>> {
        self.0.collect_window_state_reports().map_err(redacted)
    }

    fn collect_column_stats(&self) -> Vec<TaskColumnStats> {
        self.0.collect_column_stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quoted_signature_is_redacted_and_a_clean_error_keeps_its_type() {
        let signed = DataFusionError::External(Box::new(std::io::Error::other(
            "S3 said SignatureDoesNotMatch for GET /b/k?X-Amz-Credential=AKIAABCDEFGHIJKLMNOP/20261126&X-Amz-Signature=0123abcd",
        )));
        let text = redacted(signed).to_string();
        assert!(
            !text.contains("0123abcd") && !text.contains("AKIAABCDEFGHIJKLMNOP"),
            "{text}"
        );
        assert!(text.contains("SignatureDoesNotMatch"), "{text}");
        let io = DataFusionError::IoError(std::io::Error::other("connection reset"));
        assert!(matches!(redacted(io), DataFusionError::IoError(_)));
        // An I/O error that quotes a secret is still an I/O error (retried).
        let io = DataFusionError::IoError(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            r#"reset while sending {"x-amz-security-token": "QuOtEdToken"}"#,
        ));
        match redacted(io) {
            DataFusionError::IoError(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
                assert!(!e.to_string().contains("QuOtEdToken"), "{e}");
            }
            other => panic!("not an I/O error: {other:?}"),
        }
    }
}
