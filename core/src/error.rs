//! sluice's library errors. Each names what failed and where, so the CLI can
//! print it as is; [`SluiceError::into_datafusion`] carries one through
//! DataFusion and Ballista without losing its text.

use datafusion::error::DataFusionError;

/// `Debug` as the message and its causes ([`render`]), for errors that
/// travel through Ballista: a failed task's error reaches the client as
/// `{:?}` of the whole chain (`DataFusionError(Shared(External(...)))`),
/// where a struct dump is noise and only this text survives (the causes
/// too: `source()` does not cross the wire).
macro_rules! debug_as_display {
    ($t:ty) => {
        impl ::std::fmt::Debug for $t {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&$crate::error::render(self))
            }
        }
    };
}
pub(crate) use debug_as_display;

#[derive(thiserror::Error)]
pub enum SluiceError {
    #[error(
        "{file}:{line}: unknown variable ${{{name}}} (set it with `SET {name}=...;` or `--var {name}=...`)"
    )]
    UnknownVariable {
        file: String,
        line: usize,
        name: String,
    },
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}:{line}: statement failed: {source}")]
    Statement {
        file: String,
        line: usize,
        #[source]
        source: Box<DataFusionError>,
    },
    /// A micro-batch's recorded write could not be published.
    #[error("publishing write {write_id} to {url}: {source}")]
    Publish {
        write_id: String,
        url: String,
        #[source]
        source: Box<DataFusionError>,
    },
    #[error("unsupported output format '{format}' (supported: parquet, csv, json)")]
    UnsupportedFormat { format: String },
    #[error("invalid output location '{url}': {reason}")]
    InvalidOutput { url: String, reason: String },
    #[error("write to '{url}': option '{key}' {reason} (valid: {valid})")]
    BadWriteOption {
        url: String,
        key: String,
        reason: String,
        valid: String,
    },
    #[error(
        "write to '{url}': option '{key}' looks like a credential; statements do not take credentials (they would travel in the plan): give the processes AWS credentials through their environment, profile or instance role"
    )]
    CredentialOption { url: String, key: String },
    #[error("output location '{url}' is not writable: {reason}")]
    Unwritable { url: String, reason: String },
    #[error("writing {path}: {reason}")]
    Write { path: String, reason: String },
    /// An error of a higher layer (a sink's lock, say), shown as its own.
    #[error(transparent)]
    Layer(Box<dyn std::error::Error + Send + Sync + 'static>),
    #[error("commit of write {write_id} to {url} failed: {reason}")]
    Commit {
        write_id: String,
        url: String,
        reason: String,
    },
    /// A store call of the commit or its cleanup failed; the cause follows.
    #[error("commit of write {write_id} to {url}: {what}")]
    CommitStore {
        write_id: String,
        url: String,
        what: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("reading {path}")]
    ConfigRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML")]
    ConfigToml {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{variable}={value} is not host:port")]
    BadAddress {
        variable: &'static str,
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("serving metrics on {addr}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("scheduler at {endpoint} is unreachable: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// The scheduler restarted, forgot the job or stopped answering while
    /// the job ran: nothing of it is committed.
    #[error("the scheduler at {endpoint} lost job {job}: {reason}")]
    SchedulerLost {
        endpoint: String,
        job: String,
        reason: String,
    },
    /// The job waited with no executor alive to run it, past the client's
    /// bound: it was cancelled, nothing of it committed.
    #[error(
        "job {job} waited {waited_s}s at the scheduler at {endpoint} with no executor alive to run it, and was cancelled; start executors (or check that they reach the scheduler), or raise no_executor_timeout_secs"
    )]
    NoExecutors {
        endpoint: String,
        job: String,
        waited_s: u64,
    },
    #[error("calling the scheduler at {url}")]
    SchedulerCall {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("opening a session with the scheduler at {endpoint}")]
    Session {
        endpoint: String,
        #[source]
        source: Box<DataFusionError>,
    },
    #[error("the scheduler answered {url} with HTTP {status}")]
    SchedulerAnswer { url: String, status: u16 },
    #[error("configuration: {0}")]
    Config(String),
    #[error("{file}:{line}: interrupted before this statement ran")]
    Interrupted { file: String, line: usize },
    #[error("codec: {0}")]
    Codec(String),
    /// A broken invariant of sluice itself (a bug, reported, not a panic).
    #[error("internal error: {0}")]
    Internal(String),
    #[error("building an HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

crate::error::debug_as_display!(SluiceError);

impl SluiceError {
    pub fn into_datafusion(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
    }
}

impl From<SluiceError> for DataFusionError {
    fn from(e: SluiceError) -> Self {
        e.into_datafusion()
    }
}

impl SluiceError {
    /// Wraps an engine error with the job file and line it came from.
    pub fn in_statement(
        file: &str,
        line: usize,
    ) -> impl Fn(DataFusionError) -> SluiceError + Copy + '_ {
        move |e| SluiceError::Statement {
            file: file.to_string(),
            line,
            source: Box::new(e),
        }
    }
}

/// The categories DataFusion and its dependencies put before a message
/// ("External error: ..."): noise to a user, dropped when rendering.
const ENGINE_PREFIXES: [&str; 7] = [
    "External error: ",
    "Execution error: ",
    "Error during planning: ",
    "Arrow error: ",
    "Object Store error: ",
    "Parquet error: ",
    "sql parser error: ",
];

/// Debug-formatted causes DataFusion puts in its own messages
/// (`SQL error: ParserError("...")`): shown as their text.
const DEBUG_WRAPPERS: [&str; 2] = ["ParserError(\"", "TokenizerError(\""];

/// The `Debug` wrappers of a task error as Ballista reports it
/// (`Task failed ...: DataFusionError(Shared(External(...)))`).
const DEBUG_ENUMS: [&str; 15] = [
    "DataFusionError(",
    "Shared(",
    "External(",
    "ArrowError(",
    "Execution(",
    "Internal(",
    "Plan(",
    "ObjectStore(",
    "ExternalError(",
    // Arrow's own: what a cast or a function failed on.
    "CastError(",
    "ParseError(",
    "ComputeError(",
    "InvalidArgumentError(",
    "ArithmeticOverflow(",
    "JsonError(",
];

/// `text` with the enum wrappers of a `Debug`-printed error chain taken
/// off (each closes at the end of the text), quoted messages unquoted.
fn strip_debug_wrappers(text: String) -> String {
    let mut text = text.trim_end().to_string();
    while text.ends_with(')') {
        let Some((at, wrapper)) = DEBUG_ENUMS
            .iter()
            .filter_map(|w| text.find(w).map(|i| (i, *w)))
            .min()
        else {
            break;
        };
        let inner_start = at + wrapper.len();
        let mut inner = text[inner_start..text.len() - 1].to_string();
        if inner.len() >= 2 && inner.starts_with('"') && inner.ends_with('"') {
            inner = inner[1..inner.len() - 1]
                .replace("\\\"", "\"")
                .replace("\\n", " ");
        }
        text = format!("{}{inner}", &text[..at]);
    }
    text
}

/// `text` without the engine's category prefixes and debug wrappers.
fn clean(text: &str) -> String {
    let mut text = strip_debug_wrappers(text.to_string());
    for prefix in ENGINE_PREFIXES {
        text = text.replace(prefix, "");
    }
    for wrapper in DEBUG_WRAPPERS {
        while let Some(start) = text.find(wrapper) {
            let inner = start + wrapper.len();
            let Some(len) = text[inner..].find("\")") else {
                break;
            };
            let unwrapped = text[inner..inner + len].replace("\\\"", "\"");
            text.replace_range(start..inner + len + 2, &unwrapped);
        }
    }
    text.trim().to_string()
}

/// What AWS error bodies and request dumps can carry that must not reach a
/// log or a terminal: the signed request (`CanonicalRequest`, holding the
/// session token), the string to sign, the signature, and credential ids.
static SECRETS: std::sync::LazyLock<Result<Vec<(regex::Regex, &'static str)>, regex::Error>> =
    std::sync::LazyLock::new(|| {
        Ok(vec![
            (
                regex::Regex::new(
                    r"(?s)<(CanonicalRequest|CanonicalRequestBytes|StringToSign|StringToSignBytes|SignatureProvided|AWSAccessKeyId)>.*?</[A-Za-z]+>",
                )?,
                "<$1>[redacted]</$1>",
            ),
            (
                regex::Regex::new(
                    r#"(?i)(x-amz-security-token|x-amz-signature|x-amz-credential|sessiontoken|secretaccesskey)(\\?"?\s*[=:]\s*\\?"?)[^\s,&;<>"\\]+"#,
                )?,
                "$1$2[redacted]",
            ),
            // `Name=value` only: prose like "looks like a credential: ..."
            // stays readable.
            (
                regex::Regex::new(
                    r"(?i)\b(signature|credential|aws_secret_access_key|aws_session_token)(\s*=\s*)[^\s,&;<>]+",
                )?,
                "$1$2[redacted]",
            ),
            (
                regex::Regex::new(r"(?:AKIA|ASIA)[A-Z0-9]{16}")?,
                "[redacted key id]",
            ),
        ])
    });

/// `text` with what [`SECRETS`] matches replaced. A pattern that does not
/// compile (it cannot: they are constants) redacts everything rather than
/// nothing.
pub fn redact(text: &str) -> String {
    match SECRETS.as_ref() {
        Ok(patterns) => patterns.iter().fold(text.to_string(), |t, (re, with)| {
            re.replace_all(&t, *with).into_owned()
        }),
        Err(_) => "[an error message, redacted]".to_string(),
    }
}

/// A log writer that redacts what [`redact`] matches from every line before
/// it reaches `W`: a logged error (sluice's, Ballista's, the AWS SDK's) may
/// quote a signed request. The log formatter writes each event in one call.
pub struct Redacting<W>(pub W);

impl<W: std::io::Write> std::io::Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Standard error through [`Redacting`], as the binaries log.
pub fn redacting_stderr() -> Redacting<std::io::Stderr> {
    Redacting(std::io::stderr())
}

/// An error and its causes as one line, each cause once: a level whose
/// text an outer level already shows (DataFusion's wrappers repeat their
/// cause in their own message and again as `source`) is left out, and the
/// engine's category prefixes are dropped.
pub fn render(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut level = Some(err);
    while let Some(e) = level {
        let text = clean(&e.to_string());
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        level = e.source();
    }
    redact(&parts.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn log_lines_are_redacted_on_their_way_out() {
        use std::io::Write;
        let mut out = Redacting(Vec::new());
        let line = "WARN put failed: <StringToSign>AWS4-HMAC-SHA256 secret-bits</StringToSign>\n";
        assert_eq!(out.write(line.as_bytes()).ok(), Some(line.len()));
        let written = String::from_utf8_lossy(&out.0).to_string();
        assert!(!written.contains("secret-bits"), "{written}");
        assert!(written.starts_with("WARN put failed"), "{written}");
    }

    #[test]
    fn aws_error_bodies_lose_signed_requests_tokens_and_key_ids() {
        let body = "SignatureDoesNotMatch: <Error><Code>SignatureDoesNotMatch</Code>\
            <AWSAccessKeyId>ASIAABCDEFGHIJKLMNOP</AWSAccessKeyId>\
            <StringToSign>AWS4-HMAC-SHA256\n20261126T000000Z\nabc</StringToSign>\
            <SignatureProvided>deadbeef</SignatureProvided>\
            <CanonicalRequest>PUT\n/b/k\n\nhost:s3\nx-amz-security-token:ToKeNsecret\n</CanonicalRequest>\
            </Error> (request X-Amz-Credential=AKIAABCDEFGHIJKLMNOP/2026 Signature=cafe1234)";
        let e = DataFusionError::External(body.into());
        let text = render(&e);
        for secret in [
            "ToKeNsecret",
            "ASIAABCDEFGHIJKLMNOP",
            "AKIAABCDEFGHIJKLMNOP",
            "deadbeef",
            "cafe1234",
            "20261126T000000Z",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("SignatureDoesNotMatch"), "{text}");
        assert!(
            text.contains("<CanonicalRequest>[redacted]</CanonicalRequest>"),
            "{text}"
        );
        // Quoted dumps: a header map printed with Debug, a JSON credential.
        let quoted = r#"headers: {"x-amz-security-token": "QuOtEdToken", "authorization": "AWS4-HMAC-SHA256"} {"SessionToken":"JsOnToken","SecretAccessKey" : "JsOnSecret"}"#;
        // And the same inside a Debug dump, which escapes the quotes.
        for text in [redact(quoted), redact(&format!("{quoted:?}"))] {
            for secret in ["QuOtEdToken", "JsOnToken", "JsOnSecret"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
        // Ordinary messages pass unchanged.
        for plain in [
            "table 'x' not found",
            "option 'aws.secret_access_key' looks like a credential: statements do not take credentials",
        ] {
            assert_eq!(redact(plain), plain);
        }
    }

    #[test]
    fn each_cause_is_rendered_once() {
        let inner = DataFusionError::Plan("table 'x' not found".into());
        let outer = SluiceError::Statement {
            file: "job.sql".into(),
            line: 3,
            source: Box::new(DataFusionError::Context("planning".into(), Box::new(inner))),
        };
        let text = render(&outer);
        assert_eq!(text.matches("table 'x' not found").count(), 1, "{text}");
        assert!(text.starts_with("job.sql:3: statement failed"), "{text}");
        assert!(!text.contains("Error during planning"), "{text}");
    }

    #[test]
    fn a_parser_error_is_shown_once_as_text() {
        let parser = datafusion::sql::sqlparser::parser::ParserError::ParserError(
            "Expected: end of statement, found: FRM".into(),
        );
        let e = DataFusionError::SQL(Box::new(parser), None);
        let text = render(&e);
        assert_eq!(text.matches("Expected").count(), 1, "{text}");
        assert!(!text.contains("ParserError("), "{text}");
    }

    #[test]
    fn a_task_error_from_an_executor_reads_as_its_message() {
        let task = "Job 1 failed: Task failed due to runtime execution error: \
                    DataFusionError(Shared(External(DataFusionError(External(2 items lost)))))";
        let e = DataFusionError::Execution(task.into());
        assert_eq!(
            render(&e),
            "Job 1 failed: Task failed due to runtime execution error: 2 items lost"
        );
        let quoted = "error: DataFusionError(Execution(\"no \\\"x\\\" here\"))";
        assert_eq!(clean(quoted), "error: no \"x\" here");
        let e = SluiceError::Internal("bug".into());
        assert_eq!(format!("{e:?}"), format!("{e}"));
        // With a cause, as `render` shows it: the cause crosses Ballista.
        let e = SluiceError::CommitStore {
            write_id: "w".into(),
            url: "s3://b/o/".into(),
            what: "removing the old _SUCCESS".into(),
            source: Box::new(object_store::Error::NotImplemented {
                operation: "delete".into(),
                implementer: "x".into(),
            }),
        };
        assert_eq!(
            format!("{e:?}"),
            format!(
                "commit of write w to s3://b/o/: removing the old _SUCCESS: {}",
                e.source().map(|s| s.to_string()).unwrap_or_default()
            )
        );
        // Trailing whitespace after a task error does not keep its wrappers.
        assert_eq!(
            clean("failed: DataFusionError(Shared(External(DataFusionError(External(x)))))\n"),
            "failed: x"
        );
    }

    #[test]
    fn a_cause_not_in_the_message_is_appended() {
        #[derive(Debug, thiserror::Error)]
        #[error("reaching the scheduler")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("connection refused"));
        assert_eq!(render(&e), "reaching the scheduler: connection refused");
    }
}
