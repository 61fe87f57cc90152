//! Checks made before a write runs: the output can be written (a local
//! directory created and written, an object store listed), so that a bad
//! bucket, credentials or endpoint fail in seconds, naming the URL and the
//! cause.

use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::object_store::ObjectStoreRegistry;

use datafusion::sql::parser::{DFParser, Statement};

use crate::error::SluiceError;
use crate::sink::files::WriteSpec;
use crate::sink::files::spec::{has_user_info, is_credential};
use crate::storage::s3::{S3Endpoint, xml_values};

/// How long the pre-run check of an object store output may take (the
/// store's own request timeouts and retries apply inside it).
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(45);

/// Shortens an object store error to what a user acts on: S3's error code
/// and message instead of its XML, what to set when no credentials were
/// found, and the endpoint that could not be reached.
fn explain_store_error(err: &object_store::Error) -> String {
    let raw = crate::error::render(err);
    if let (Some(code), Some(message)) = (
        xml_values(&raw, "Code").pop(),
        xml_values(&raw, "Message").pop(),
    ) {
        return format!("{code}: {message}");
    }
    if let Some(at) = raw.find("no AWS credentials") {
        return raw[at..].to_string();
    }
    let lower = raw.to_ascii_lowercase();
    let cause = if lower.contains("connection refused") {
        Some("connection refused")
    } else if lower.contains("dns error") || lower.contains("failed to lookup") {
        Some("host not found")
    } else if lower.contains("timed out") {
        Some("timed out")
    } else {
        None
    };
    if let Some(cause) = cause {
        let at = S3Endpoint::from_env();
        let endpoint = at
            .endpoint
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", at.region));
        return format!("cannot reach the S3 endpoint {endpoint}: {cause}");
    }
    raw
}

/// Fails early, before any task runs, when the output cannot be written: a
/// local directory that cannot be created or written, or an object store
/// whose bucket, credentials or endpoint do not answer a listing.
pub(super) async fn preflight_output(
    spec: &WriteSpec,
    registry: &Arc<dyn ObjectStoreRegistry>,
) -> Result<(), SluiceError> {
    let url = spec.output_url()?;
    if url.scheme() != "file" {
        let unreachable = |reason: String| SluiceError::Unwritable {
            url: spec.url.clone(),
            reason,
        };
        let store = registry
            .get_store(&url)
            .map_err(|e| unreachable(crate::error::render(&e)))?;
        let base = spec.base_path()?;
        return match tokio::time::timeout(PREFLIGHT_TIMEOUT, store.list_with_delimiter(Some(&base)))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unreachable(explain_store_error(&e))),
            Err(_) => Err(unreachable(format!(
                "no answer within {}s",
                PREFLIGHT_TIMEOUT.as_secs()
            ))),
        };
    }
    let unwritable = |reason: String| SluiceError::Unwritable {
        url: spec.url.clone(),
        reason,
    };
    let dir = url
        .to_file_path()
        .map_err(|_| unwritable("not a local path".into()))?;
    if dir.exists() && !dir.is_dir() {
        return Err(unwritable("it exists and is not a directory".into()));
    }
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| unwritable(format!("cannot create {}: {e}", dir.display())))?;
    let probe = dir.join(format!(".sluice-probe-{}", spec.write_id));
    tokio::fs::write(&probe, b"")
        .await
        .map_err(|e| unwritable(format!("cannot create files in {}: {e}", dir.display())))?;
    let _ = tokio::fs::remove_file(&probe).await;
    Ok(())
}

/// Refuses a statement that carries a secret, before it is planned: plans
/// travel to the scheduler, which serves them over REST (`/api/job/{id}/stages`),
/// and executors log them. A table's or a `COPY`'s credential-like option
/// (`aws.secret_access_key`, ...) and a URL with user info are refused, named
/// by the option or the statement, never by the value.
pub(super) fn refuse_secrets(text: &str, file: &str, line: usize) -> Result<(), SluiceError> {
    let refused = |what: String| SluiceError::Syntax {
        file: file.to_string(),
        line,
        message: format!(
            "{what}: statements do not take credentials (they would travel in the plan); give them to the processes through their environment, profile or instance role"
        ),
    };
    if has_user_info(text) {
        return Err(refused("a URL with user info (user:password@)".into()));
    }
    let keys: Vec<String> = match DFParser::parse_sql(text) {
        Ok(mut statements) => match statements.pop_front() {
            Some(Statement::CreateExternalTable(t)) => {
                t.options.iter().map(|(k, _)| k.clone()).collect()
            }
            Some(Statement::CopyTo(c)) => c.options.iter().map(|(k, _)| k.clone()).collect(),
            _ => vec![],
        },
        // Not DataFusion's dialect (a Spark write): its options are checked
        // with the write.
        Err(_) => vec![],
    };
    match keys.iter().find(|k| is_credential(k)) {
        Some(key) => Err(refused(format!("option '{key}' looks like a credential"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::refuse_secrets;

    #[test]
    fn secrets_in_statements_are_refused_without_being_echoed() {
        for text in [
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 's3://b/x/' OPTIONS ('aws.secret_access_key' 'hunter2')",
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 's3://AKID:hunter2@b/x/'",
            "COPY (SELECT 1) TO 's3://b/o/' STORED AS PARQUET OPTIONS ('aws.session_token' 'hunter2')",
            "INSERT OVERWRITE DIRECTORY 'https://u:hunter2@h/o' USING PARQUET SELECT 1",
        ] {
            let err = refuse_secrets(text, "j.sql", 4)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.starts_with("j.sql:4: "), "{text}: {err}");
            assert!(err.contains("credentials"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        for text in [
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 's3://b/x/' OPTIONS ('format.compression' 'zstd')",
            "SELECT 'a@b' AS email",
            "SELECT * FROM t WHERE url = 'https://example.com/a@b'",
        ] {
            assert!(refuse_secrets(text, "j.sql", 1).is_ok(), "{text}");
        }
    }
}
