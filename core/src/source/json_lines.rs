//! Newline-delimited JSON files that keep their bad lines: a JSON directory
//! table with declared columns and `OPTIONS ('max_bad_records' 'N')`.
//!
//! DataFusion's JSON reader fails a whole file on one bad line, so one bad
//! file would stop a stream for good. This table reads each file line by
//! line and parses each line as a Kafka table parses a value
//! ([`super::kafka::parse_values`]). Its columns are the declared ones, then
//! `_file` (the file's URL), `_line` (from 1), `_raw` (the line as text) and
//! `_error` (why the line did not parse; its declared columns are then
//! null). A job routes the bad lines to a dead-letter write with SQL. More
//! than `max_bad_records` bad lines in one file fail the read, naming the
//! file and line. Blank lines are skipped, as JSON readers do.
//!
//! One scan partition per file (an `exec::PartScanExec` part), read
//! on the executor through the session's object stores, each call bounded.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result, plan_err};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::CreateExternalTable;
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use super::kafka::{Declared, parse_values};

/// The option that makes a JSON directory table keep its bad lines.
pub const MAX_BAD_RECORDS: &str = "max_bad_records";
/// How long reading one file may take.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// What the table reads: enough to rebuild it on the scheduler and to scan
/// it on an executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonLinesSpec {
    pub table: String,
    /// Full URLs, one scan partition each.
    pub files: Vec<String>,
    pub declared: Vec<Declared>,
    pub max_bad_records: u64,
}

impl JsonLinesSpec {
    pub fn schema(&self) -> Result<SchemaRef> {
        let mut fields: Vec<Field> = Declared::schema(&self.declared)?
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        fields.extend(fixed_fields());
        fields.push(Field::new(super::kafka::ERROR_COLUMN, DataType::Utf8, true));
        Ok(Arc::new(arrow::datatypes::Schema::new(fields)))
    }

    /// The table `cmd` declares over `files`: declared columns required,
    /// `max_bad_records` the only option.
    pub fn from_command(cmd: &CreateExternalTable, files: Vec<String>) -> Result<Self> {
        let mut max_bad_records = None;
        for (raw_key, value) in &cmd.options {
            let key = raw_key.trim_start_matches("format.").to_ascii_lowercase();
            if key != MAX_BAD_RECORDS {
                return plan_err!(
                    "{}: a JSON table with {MAX_BAD_RECORDS} takes no other option, got {raw_key}",
                    cmd.name
                );
            }
            max_bad_records = Some(value.trim().parse::<u64>().map_err(|_| {
                DataFusionError::Plan(format!(
                    "{}: option {raw_key} must be a number, got '{value}'",
                    cmd.name
                ))
            })?);
        }
        let Some(max_bad_records) = max_bad_records else {
            return plan_err!("{}: no {MAX_BAD_RECORDS} option", cmd.name);
        };
        if cmd.schema.fields().is_empty() {
            return plan_err!(
                "{}: a JSON table with {MAX_BAD_RECORDS} needs its columns declared (they are parsed from each line)",
                cmd.name
            );
        }
        if !cmd.table_partition_cols.is_empty() {
            return plan_err!(
                "{}: a JSON table with {MAX_BAD_RECORDS} reads its files' lines only; PARTITIONED BY is not supported",
                cmd.name
            );
        }
        let declared = Declared::from_command(cmd, &fixed_fields(), "JSON lines")?;
        Ok(Self {
            table: cmd.name.to_string(),
            files,
            declared,
            max_bad_records,
        })
    }

    /// Whether `cmd` asks for this table (a JSON table with the option).
    pub fn wanted(cmd: &CreateExternalTable) -> bool {
        cmd.file_type.eq_ignore_ascii_case("JSON")
            && cmd.options.keys().any(|k| {
                k.trim_start_matches("format.")
                    .eq_ignore_ascii_case(MAX_BAD_RECORDS)
            })
    }
}

fn fixed_fields() -> Vec<Field> {
    vec![
        Field::new("_file", DataType::Utf8, false),
        Field::new("_line", DataType::Int64, false),
        Field::new("_raw", DataType::Utf8, false),
    ]
}

/// The files' lines as a table.
pub type JsonLinesTable = super::SourceTable<JsonLinesSpec>;

#[async_trait]
impl super::SourceSpec for JsonLinesSpec {
    fn table_schema(&self) -> Result<SchemaRef> {
        self.schema()
    }

    async fn plan_scan(&self, _state: &dyn Session) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(JsonLinesScanExec::try_new(self.clone())?))
    }
}

/// Reads the files its input's part indices name, file by file, a chunk
/// of lines at a time.
pub type JsonLinesScanExec = crate::exec::PartScanExec<JsonLinesSpec>;

impl crate::exec::PartRead for JsonLinesSpec {
    const NAME: &'static str = "JsonLinesScanExec";

    fn schema(&self) -> Result<SchemaRef> {
        JsonLinesSpec::schema(self)
    }

    fn parts(&self) -> usize {
        self.files.len()
    }

    fn describe(&self) -> String {
        format!("{} files of {}", self.files.len(), self.table)
    }

    fn read_part(
        self: Arc<Self>,
        schema: SchemaRef,
        i: usize,
        context: Arc<TaskContext>,
    ) -> futures::stream::BoxStream<'static, Result<RecordBatch>> {
        match self.files.get(i).cloned() {
            Some(url) => read_file(self, schema, url, context),
            None => futures::stream::once(async move {
                Err(DataFusionError::Internal(format!(
                    "JsonLinesScanExec: no file {i}"
                )))
            })
            .boxed(),
        }
    }
}

/// Where a file's read is.
struct Reading {
    spec: Arc<JsonLinesSpec>,
    schema: SchemaRef,
    declared: SchemaRef,
    url: String,
    chunks: Option<futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>>,
    /// Bytes after the last newline seen.
    carry: Vec<u8>,
    /// The number of the next line.
    line: i64,
    bad: u64,
    done: bool,
}

/// One file's lines as batches of the table's schema, read chunk by chunk
/// (each chunk's wait bounded by [`READ_TIMEOUT`]).
fn read_file(
    spec: Arc<JsonLinesSpec>,
    schema: SchemaRef,
    url: String,
    context: Arc<TaskContext>,
) -> futures::stream::BoxStream<'static, Result<RecordBatch>> {
    let declared = match Declared::schema(&spec.declared) {
        Ok(d) => d,
        Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
    };
    let state = Reading {
        spec,
        schema,
        declared,
        url,
        chunks: None,
        carry: Vec::new(),
        line: 1,
        bad: 0,
        done: false,
    };
    let stream = futures::stream::try_unfold((state, context), |(mut r, context)| async move {
        loop {
            if r.done {
                return Ok(None);
            }
            let failed = |what: String| DataFusionError::Execution(format!("{}: {what}", r.url));
            if r.chunks.is_none() {
                let parsed = ListingTableUrl::parse(&r.url)?;
                let store = context.runtime_env().object_store(parsed.object_store())?;
                let span = tracing::info_span!("json_lines.read_file", file = %r.url);
                let get = tracing::Instrument::instrument(store.get(parsed.prefix()), span);
                let got = tokio::time::timeout(READ_TIMEOUT, get)
                    .await
                    .map_err(|_| failed(format!("no answer within {READ_TIMEOUT:?}")))?
                    .map_err(|e| failed(format!("reading failed: {e}")))?;
                r.chunks = Some(got.into_stream());
            }
            let next = match r.chunks.as_mut() {
                Some(chunks) => tokio::time::timeout(READ_TIMEOUT, chunks.next())
                    .await
                    .map_err(|_| failed(format!("no data within {READ_TIMEOUT:?}")))?,
                None => None,
            };
            let at_end = match next {
                Some(chunk) => {
                    let chunk = chunk.map_err(|e| failed(format!("reading failed: {e}")))?;
                    if r.line == 1 && r.carry.is_empty() {
                        // A byte-order mark is not part of the first line.
                        r.carry.extend_from_slice(
                            chunk.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&chunk),
                        );
                    } else {
                        r.carry.extend_from_slice(&chunk);
                    }
                    false
                }
                None => true,
            };
            // Whole lines, or at the end the rest; on at most a chunk of lines.
            let cut = if at_end {
                r.carry.len()
            } else {
                match r.carry.iter().rposition(|b| *b == b'\n') {
                    Some(i) => i + 1,
                    None => continue,
                }
            };
            let text: Vec<u8> = r.carry.drain(..cut).collect();
            if at_end {
                r.done = true;
            }
            let mut lines: Vec<(i64, &[u8])> = Vec::new();
            for l in text.split(|b| *b == b'\n') {
                let number = r.line;
                r.line += 1;
                let l = l.strip_suffix(b"\r").unwrap_or(l);
                if !l.iter().all(u8::is_ascii_whitespace) {
                    lines.push((number, l));
                }
            }
            // `split` yields an empty piece after a final newline: not a line.
            if text.last() == Some(&b'\n') {
                r.line -= 1;
            }
            if lines.is_empty() {
                continue;
            }
            // One object-store chunk's lines: as bounded as the chunk.
            let (batch, bad) = to_batch(&r.schema, &r.declared, &r.url, &lines)?;
            let allowed = r.spec.max_bad_records.saturating_sub(r.bad) as usize;
            if let Some((line, why)) = bad.get(allowed) {
                return Err(failed(format!(
                    "line {line}: bad line {} of this file, over max_bad_records {}: {why}",
                    r.bad + allowed as u64 + 1,
                    r.spec.max_bad_records
                )));
            }
            r.bad += bad.len() as u64;
            return Ok(Some((batch, (r, context))));
        }
    });
    stream.boxed()
}

/// The lines as a batch, and the bad ones' line numbers and reasons.
fn to_batch(
    schema: &SchemaRef,
    declared: &SchemaRef,
    url: &str,
    lines: &[(i64, &[u8])],
) -> Result<(RecordBatch, Vec<(i64, String)>)> {
    let values: Vec<Option<&[u8]>> = lines.iter().map(|(_, l)| Some(*l)).collect();
    let parsed =
        parse_values(declared, &values).map_err(|e| DataFusionError::External(e.into()))?;
    let rows = arrow::array::UInt32Array::from(parsed.row_of);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for column in parsed.decoded.columns() {
        // A bad line has no row: `take` gives it nulls.
        columns.push(arrow::compute::take(column.as_ref(), &rows, None)?);
    }
    columns.push(Arc::new(StringArray::from(vec![url; lines.len()])));
    columns.push(Arc::new(Int64Array::from_iter_values(
        lines.iter().map(|(n, _)| *n),
    )));
    columns.push(Arc::new(StringArray::from_iter_values(
        lines.iter().map(|(_, l)| String::from_utf8_lossy(l)),
    )));
    let mut errors = StringBuilder::new();
    let mut bad = Vec::new();
    for ((n, _), why) in lines.iter().zip(&parsed.errors) {
        match why {
            Some(why) => {
                let why = why.replace("the value", "the line");
                errors.append_value(&why);
                bad.push((*n, why));
            }
            None => errors.append_null(),
        }
    }
    columns.push(Arc::new(errors.finish()));
    Ok((RecordBatch::try_new(Arc::clone(schema), columns)?, bad))
}

/// The JSON files under a directory (full URLs, subdirectories included,
/// hidden ones below it left out), for a table outside a stream.
pub async fn list_files(session: &dyn Session, dir: &ListingTableUrl) -> Result<Vec<String>> {
    use futures::TryStreamExt;
    let store = session.runtime_env().object_store(dir.object_store())?;
    let listing = store.list(Some(dir.prefix())).try_collect::<Vec<_>>();
    let metas = tokio::time::timeout(READ_TIMEOUT, listing)
        .await
        .map_err(|_| {
            DataFusionError::Execution(format!("{dir}: listing took over {READ_TIMEOUT:?}"))
        })?
        .map_err(|e| DataFusionError::Execution(format!("{dir}: listing failed: {e}")))?;
    let base = dir.object_store();
    // Hidden below the directory only: the directory's own path may hold
    // a `.` or `_` name (a temporary directory).
    let hidden = |m: &object_store::ObjectMeta| match m.location.prefix_match(dir.prefix()) {
        Some(mut parts) => {
            parts.any(|p| p.as_ref().starts_with('_') || p.as_ref().starts_with('.'))
        }
        None => true,
    };
    let mut files: Vec<String> = metas
        .into_iter()
        .filter(|m| m.location.as_ref().ends_with(".json") && !hidden(m))
        .map(|m| crate::storage::object_url(base.as_str(), &m.location))
        .collect::<Result<_, _>>()
        .map_err(DataFusionError::Execution)?;
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max_bad_records: u64) -> JsonLinesSpec {
        JsonLinesSpec {
            table: "t".into(),
            files: vec![],
            declared: vec![
                Declared {
                    name: "id".into(),
                    data_type: "Int64".into(),
                    nullable: false,
                },
                Declared {
                    name: "v".into(),
                    data_type: "Utf8".into(),
                    nullable: true,
                },
            ],
            max_bad_records,
        }
    }

    #[test]
    fn each_line_parses_or_says_why_not() -> Result<()> {
        let s = spec(10);
        let schema = s.schema()?;
        let declared = Declared::schema(&s.declared)?;
        let lines: Vec<(i64, &[u8])> = vec![
            (1, br#"{"id": 1, "v": "a"}"#),
            (2, b"not json"),
            (4, br#"{"v": "no id"}"#),
            (5, br#"{"id": "x"}"#),
            (6, br#"{"id": 6}"#),
        ];
        let (batch, bad) = to_batch(&schema, &declared, "file:///d/a.json", &lines)?;
        assert_eq!(batch.num_rows(), 5);
        let lines_of_bad: Vec<i64> = bad.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines_of_bad, [2, 4, 5]);
        assert!(bad[0].1.contains("the line is not JSON"), "{bad:?}");
        assert!(bad[1].1.contains("required field id"), "{bad:?}");
        let column = |name: &str| -> Result<ArrayRef> {
            Ok(Arc::clone(batch.column(schema.index_of(name)?)))
        };
        let ids = column("id")?;
        let ids = ids
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("id".into()))?;
        assert_eq!(
            ids.iter().collect::<Vec<_>>(),
            [Some(1), None, None, None, Some(6)]
        );
        let raw = column("_raw")?;
        let raw = raw
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| DataFusionError::Internal("_raw".into()))?;
        assert_eq!(raw.value(1), "not json");
        Ok(())
    }
}
