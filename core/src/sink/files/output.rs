//! The files one writer partition produces: where each goes (a multipart
//! upload to its final key, or a staged file), how it is encoded (Parquet,
//! CSV, NDJSON), and, for a Hive-partitioned write, one file per partition
//! value with a cap on open files and buffered bytes per task.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::config::{ConfigField, TableParquetOptions};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use futures::StreamExt;
use futures::future::BoxFuture;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterPropertiesBuilder;

use super::hive::{group_rows, partition_key_columns};
use super::markers;
use super::spec::PartitionStyle;
use super::spec::{CHUNK_COLUMN, Committer, TextOptions, WriteFormat, WriteSpec};
use crate::error::SluiceError;
use crate::storage::multipart::{MultipartFileWriter, PART_SIZE};
use crate::storage::s3;

/// An upload's row group smaller than this is not written out early to free
/// memory: most of what an open upload holds is its unsent parts, which a
/// flush does not free. A staged file's row group is all it holds, so it is
/// written out at any size (a small row group costs readers less than the
/// extra file that finishing the file early would make).
const MIN_FLUSH_BYTES: usize = 1024 * 1024;

/// One file a writer produced, as its output row reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Written {
    /// Directory under the output (`k=v/...`), empty when unpartitioned.
    pub dir: String,
    /// The staged file, or for a multipart upload its final key; empty when
    /// a partitioned writer's input was empty.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// A pending multipart upload: its id and part ids (a JSON list).
    pub upload_id: Option<String>,
    pub parts: Option<String>,
    /// Rows per source split (a JSON object), when the write counts by a
    /// column (`WriteSpec::count_by`) and the file's rows have it.
    #[serde(default)]
    pub splits: Option<String>,
}

/// Past this many distinct values a file stops counting rows by split: a
/// batch reads a few hundred splits, so more means the column is not one.
const MAX_SPLITS: usize = 10_000;

/// A file's rows counted by the value of one column.
struct SplitCounter {
    column: usize,
    counts: Option<BTreeMap<String, u64>>,
}

impl SplitCounter {
    /// Counts by the first of `names` the schema has, if any.
    fn new(names: &[String], schema: &Schema) -> Option<Self> {
        let column = names.iter().find_map(|n| schema.index_of(n).ok())?;
        Some(Self {
            column,
            counts: Some(BTreeMap::new()),
        })
    }

    fn count(&mut self, batch: &RecordBatch) -> Result<()> {
        let Some(counts) = self.counts.as_mut() else {
            return Ok(());
        };
        let values = arrow::compute::cast(batch.column(self.column), &DataType::Utf8)?;
        let values = datafusion::common::cast::as_string_array(&values)?;
        for v in values.iter() {
            let v = v.unwrap_or("null");
            // A key is allocated once per split, not once per row.
            match counts.get_mut(v) {
                Some(n) => *n += 1,
                None => {
                    if counts.len() >= MAX_SPLITS {
                        self.counts = None;
                        return Ok(());
                    }
                    counts.insert(v.to_string(), 1);
                }
            }
        }
        Ok(())
    }

    /// The counts as the report's JSON, or `None` when the column had too
    /// many values to be a split.
    fn report(&self) -> Option<String> {
        self.counts
            .as_ref()
            .and_then(|c| serde_json::to_string(c).ok())
    }
}

pub fn write_error(path: &str, reason: String) -> DataFusionError {
    DataFusionError::External(Box::new(SluiceError::Write {
        path: path.to_string(),
        reason,
    }))
}

/// Where a file's bytes go.
enum Sink {
    Upload(MultipartFileWriter),
    Staged(BufWriter),
}

impl Sink {
    fn buffered(&self) -> usize {
        match self {
            Sink::Upload(u) => u.buffered(),
            Sink::Staged(_) => 0,
        }
    }
}

impl AsyncFileWriter for Sink {
    fn write(&mut self, bs: bytes::Bytes) -> BoxFuture<'_, Result<(), ParquetError>> {
        match self {
            Sink::Upload(u) => u.write(bs),
            Sink::Staged(s) => AsyncFileWriter::write(s, bs),
        }
    }

    fn complete(&mut self) -> BoxFuture<'_, Result<(), ParquetError>> {
        match self {
            Sink::Upload(u) => u.complete(),
            Sink::Staged(s) => AsyncFileWriter::complete(s),
        }
    }
}

// One per open file, a few dozen per task at most: size does not matter.
#[allow(clippy::large_enum_variant)]
enum Encoder {
    Parquet(AsyncArrowWriter<Sink>),
    Text {
        sink: Sink,
        options: TextOptions,
        header_written: bool,
        bytes: u64,
    },
}

/// A file being written.
pub struct OpenFile {
    encoder: Encoder,
    format: WriteFormat,
    schema: SchemaRef,
    stem: String,
    dir: String,
    path: Path,
    shown: String,
    rows: u64,
    upload: bool,
    splits: Option<SplitCounter>,
}

/// What a writer needs to open files: the spec, its store and task context.
pub struct FileFactory<'a> {
    pub spec: &'a WriteSpec,
    pub store: Arc<dyn ObjectStore>,
    pub context: &'a TaskContext,
    /// The attempt's name: staged files and upload markers are per attempt.
    pub task: &'a str,
    /// The name final keys are made from: the stage-wide partition when the
    /// executor said it (the same for every attempt), else `task`.
    pub key_task: &'a str,
}

impl FileFactory<'_> {
    /// Opens the task's file `suffix` (`""`, `-f0001`, ...) in output
    /// subdirectory `dir`.
    pub async fn open(&self, suffix: &str, dir: &str, schema: SchemaRef) -> Result<OpenFile> {
        let spec = self.spec;
        let url = spec.output_url()?;
        let stem = format!("{}{suffix}", self.task);
        let stem = stem.as_str();
        let (sink, path, shown) = if spec.uses_multipart()? {
            let s3 = s3::s3_store(&url)?;
            let key = spec.final_path_in(dir, &format!("{}{suffix}", self.key_task))?;
            let shown = format!(
                "{}{}",
                spec.url,
                key.as_ref()
                    .trim_start_matches(spec.base_path()?.as_ref())
                    .trim_start_matches('/')
            );
            let upload_id = markers::start_upload(&s3, &self.store, spec, self.task, &key)
                .await
                .map_err(|e| write_error(&shown, e.to_string()))?;
            let sink = Sink::Upload(MultipartFileWriter::new(s3, key.clone(), upload_id));
            (sink, key, shown)
        } else {
            let path = spec.staging_path(stem)?;
            let shown = format!(
                "{}://{}/{}",
                url.scheme(),
                url.host_str().unwrap_or_default(),
                path
            );
            let sink = Sink::Staged(BufWriter::new(Arc::clone(&self.store), path.clone()));
            (sink, path, shown)
        };
        let upload = matches!(sink, Sink::Upload(_));
        let encoder = match spec.format {
            WriteFormat::Parquet => {
                let props = parquet_properties(spec, &schema, self.context)?.build();
                // The schema is already in `props`' metadata; stop the writer adding it twice.
                let options = ArrowWriterOptions::new()
                    .with_properties(props)
                    .with_skip_arrow_metadata(true);
                Encoder::Parquet(
                    AsyncArrowWriter::try_new_with_options(sink, Arc::clone(&schema), options)
                        .map_err(|e| write_error(&shown, e.to_string()))?,
                )
            }
            WriteFormat::Csv | WriteFormat::Json => Encoder::Text {
                sink,
                options: TextOptions::parse(spec.format, &spec.options)?,
                header_written: false,
                bytes: 0,
            },
        };
        Ok(OpenFile {
            encoder,
            format: spec.format,
            splits: SplitCounter::new(&spec.count_by, &schema),
            schema,
            stem: stem.to_string(),
            dir: dir.to_string(),
            path,
            shown,
            rows: 0,
            upload,
        })
    }

    /// Finishes a file: for an upload, sends its last part and leaves it
    /// open; for the rename committers, runs their task commit.
    pub async fn finish(&self, mut file: OpenFile) -> Result<Written> {
        let shown = file.shown.clone();
        let fail = |e: &dyn std::fmt::Display| write_error(&shown, e.to_string());
        if file.format == WriteFormat::Csv {
            // A file with no rows still gets its header line.
            file.write_text(&RecordBatch::new_empty(Arc::clone(&file.schema)))
                .await?;
        }
        let (bytes, sink) = match file.encoder {
            Encoder::Parquet(mut w) => {
                w.finish().await.map_err(|e| fail(&e))?;
                (w.bytes_written() as u64, w.into_inner())
            }
            Encoder::Text {
                mut sink, bytes, ..
            } => {
                sink.complete().await.map_err(|e| fail(&e))?;
                (bytes, sink)
            }
        };
        let mut written = Written {
            dir: file.dir.clone(),
            path: file.path.to_string(),
            rows: file.rows,
            bytes,
            upload_id: None,
            parts: None,
            splits: file.splits.as_ref().and_then(SplitCounter::report),
        };
        match sink {
            Sink::Upload(upload) => {
                let pending = upload.pending();
                written.parts = Some(serde_json::to_string(&pending.parts).map_err(|e| fail(&e))?);
                written.upload_id = Some(pending.upload_id);
            }
            Sink::Staged(_) => {
                // Written after the write ended (this task was cut off): it
                // may be after the client's sweep, so it is ours to remove.
                if let Err(e) = self.spec.check_lock_present(&self.store).await {
                    let _ = self.store.delete(&file.path).await;
                    return Err(e.into());
                }
                // The rename committers' task commit (comparison shapes, see `Committer`).
                let to = match self.spec.committer {
                    Committer::Auto => None,
                    Committer::RenameV1 => Some(self.spec.task_committed_path(&file.stem)?),
                    Committer::RenameV2 => Some(self.spec.final_path_in(&file.dir, &file.stem)?),
                };
                if let Some(to) = to {
                    self.store
                        .rename(&file.path, &to)
                        .await
                        .map_err(|e| fail(&e))?;
                    written.path = to.to_string();
                }
            }
        }
        Ok(written)
    }
}

impl OpenFile {
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        if let Some(splits) = self.splits.as_mut() {
            splits.count(batch)?;
        }
        if let Encoder::Parquet(w) = &mut self.encoder {
            let shown = &self.shown;
            return w
                .write(batch)
                .await
                .map_err(|e| write_error(shown, e.to_string()));
        }
        self.write_text(batch).await
    }

    async fn write_text(&mut self, batch: &RecordBatch) -> Result<()> {
        let Encoder::Text {
            sink,
            options,
            header_written,
            bytes,
        } = &mut self.encoder
        else {
            return Ok(());
        };
        let fail = |e: &dyn std::fmt::Display| write_error(&self.shown, e.to_string());
        if batch.num_rows() == 0 && (*header_written || self.format != WriteFormat::Csv) {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(batch.get_array_memory_size());
        match self.format {
            WriteFormat::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(options.header && !*header_written)
                    .with_delimiter(options.delimiter)
                    .build(&mut buf);
                w.write(batch).map_err(|e| fail(&e))?;
                *header_written = true;
            }
            _ => {
                let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
                w.write(batch).map_err(|e| fail(&e))?;
                w.finish().map_err(|e| fail(&e))?;
            }
        }
        *bytes += buf.len() as u64;
        sink.write(buf.into()).await.map_err(|e| fail(&e))
    }

    /// Writes out a Parquet file's row group in progress (for an upload, one
    /// of at least [`MIN_FLUSH_BYTES`]); whether it did.
    pub async fn flush_row_group(&mut self) -> Result<bool> {
        let Encoder::Parquet(w) = &mut self.encoder else {
            return Ok(false);
        };
        if w.in_progress_rows() == 0 || (self.upload && w.memory_size() < MIN_FLUSH_BYTES) {
            return Ok(false);
        }
        let shown = &self.shown;
        w.flush()
            .await
            .map_err(|e| write_error(shown, e.to_string()))?;
        Ok(true)
    }

    /// Encoded bytes so far, the row group in progress estimated.
    pub fn size(&self) -> u64 {
        match &self.encoder {
            Encoder::Parquet(w) => (w.bytes_written() + w.in_progress_size()) as u64,
            Encoder::Text { bytes, .. } => *bytes,
        }
    }

    /// Bytes held in memory for this file: an unflushed Parquet row group
    /// and multipart parts not yet sent.
    pub fn buffered(&self) -> usize {
        match &self.encoder {
            // The sink is out of reach inside the Parquet writer: count an
            // upload's unsent parts at their typical two.
            Encoder::Parquet(w) => w.memory_size() + if self.upload { 2 * PART_SIZE } else { 0 },
            Encoder::Text { sink, .. } => sink.buffered(),
        }
    }
}

/// CSV options a statement may give (`OPTIONS ('format.has_header' 'false',
/// 'format.delimiter' '|')`), DataFusion's names.
/// Writes one input partition. Unpartitioned: one file named `stem`, even
/// when empty. Partitioned: one file per partition value seen (per chunk in
/// a skew-aware write), and none when the input is empty. Either way a file
/// is finished early at `write.target_file_rows` rows or about
/// `write.target_file_bytes` encoded bytes (a new one follows), and, when
/// partitioned, past the open-file and buffered-byte caps.
pub async fn write_partition(
    factory: &FileFactory<'_>,
    mut input: SendableRecordBatchStream,
) -> Result<Vec<Written>> {
    let spec = factory.spec;
    let schema = input.schema();
    let key_columns = partition_key_columns(&schema, &spec.partition_by)?;
    // A skew-aware write tags each row with its chunk: one file per chunk.
    let chunk_column = schema.index_of(CHUNK_COLUMN).ok();
    let data_columns: Vec<usize> = (0..schema.fields().len())
        .filter(|i| !key_columns.contains(i) && Some(*i) != chunk_column)
        .collect();
    let data_schema: SchemaRef = Arc::new(Schema::new(
        data_columns
            .iter()
            .map(|&i| schema.field(i).clone())
            .collect::<Vec<_>>(),
    ));
    let limit = spec.target_file_rows.unwrap_or(u64::MAX).max(1);
    let byte_limit = spec.target_file_bytes.unwrap_or(u64::MAX).max(1);
    // Unpartitioned writes without a target keep the plain stem.
    let numbered = !key_columns.is_empty()
        || spec.target_file_rows.is_some()
        || spec.target_file_bytes.is_some();
    let mut open: HashMap<(String, i64), (OpenFile, u64)> = HashMap::new();
    let mut done = Vec::new();
    let mut next_file = 0usize;
    let mut clock = 0u64;
    let open_file = |dir: &str, next_file: &mut usize| {
        let suffix = if numbered {
            format!("-f{:04}", *next_file)
        } else {
            String::new()
        };
        *next_file += 1;
        let schema = Arc::clone(&data_schema);
        let dir = dir.to_string();
        async move { factory.open(&suffix, &dir, schema).await }
    };
    if key_columns.is_empty() {
        // Even an empty partition gets its file.
        let file = open_file("", &mut next_file).await?;
        open.insert((String::new(), 0), (file, 0));
    }
    while let Some(batch) = input.next().await {
        let batch = batch?;
        let data = batch.project(&data_columns)?;
        let groups = if key_columns.is_empty() {
            vec![((String::new(), 0), None)]
        } else {
            let chunks =
                chunk_column.and_then(|i| batch.column(i).as_any().downcast_ref::<Int64Array>());
            let mut groups = vec![];
            for (dir, rows) in group_rows(
                &batch,
                &spec.partition_by,
                &key_columns,
                spec.partition_style == PartitionStyle::Values,
            )? {
                match chunks {
                    Some(chunks) => {
                        for (chunk, rows) in split_by_chunk(chunks, rows) {
                            groups.push(((dir.clone(), chunk), Some(rows)));
                        }
                    }
                    None => groups.push(((dir, 0), Some(rows))),
                }
            }
            groups
        };
        for (key, rows) in groups {
            let dir = &key.0;
            let part = match rows {
                Some(rows) => take_record_batch(&data, &UInt32Array::from(rows))?,
                None => data.clone(),
            };
            let mut offset = 0;
            while offset < part.num_rows() {
                clock += 1;
                if !open.contains_key(&key) {
                    if open.len() >= spec.max_open_files.max(1)
                        && let Some(oldest) = open
                            .iter()
                            .min_by_key(|(_, (_, used))| *used)
                            .map(|(k, _)| k.clone())
                        && let Some((file, _)) = open.remove(&oldest)
                    {
                        done.push(factory.finish(file).await?);
                    }
                    let file = open_file(dir, &mut next_file).await?;
                    open.insert(key.clone(), (file, clock));
                }
                let Some((file, used)) = open.get_mut(&key) else {
                    break;
                };
                let room = limit.saturating_sub(file.rows()).max(1);
                let take =
                    (part.num_rows() - offset).min(usize::try_from(room).unwrap_or(usize::MAX));
                file.write(&part.slice(offset, take)).await?;
                *used = clock;
                offset += take;
                if (file.rows() >= limit || file.size() >= byte_limit)
                    && let Some((full, _)) = open.remove(&key)
                {
                    done.push(factory.finish(full).await?);
                }
            }
        }
        // Over the memory cap: write out the row group of the Parquet file
        // holding the most (the file stays open, so its value keeps its
        // file count), and finish a file only when that frees nothing.
        while open.values().map(|(f, _)| f.buffered()).sum::<usize>() > spec.max_buffered_bytes
            && let Some(biggest) = open
                .iter()
                .max_by_key(|(_, (f, _))| f.buffered())
                .map(|(k, _)| k.clone())
        {
            let flushed = match open.get_mut(&biggest) {
                Some((file, _)) => file.flush_row_group().await?,
                None => break,
            };
            if !flushed && let Some((file, _)) = open.remove(&biggest) {
                done.push(factory.finish(file).await?);
            }
        }
    }
    for (_, (file, _)) in open {
        done.push(factory.finish(file).await?);
    }
    Ok(done)
}

/// `rows` split by their chunk tag, in first-seen order.
fn split_by_chunk(chunks: &Int64Array, rows: Vec<u32>) -> Vec<(i64, Vec<u32>)> {
    let mut out: Vec<(i64, Vec<u32>)> = vec![];
    for row in rows {
        let chunk = chunks.value(row as usize);
        match out.iter_mut().find(|(c, _)| *c == chunk) {
            Some((_, rows)) => rows.push(row),
            None => out.push((chunk, vec![row])),
        }
    }
    out
}

/// Writer properties as DataFusion's `COPY` would use them: the session's
/// `datafusion.execution.parquet.*` settings, then the statement's options.
pub fn parquet_properties(
    spec: &WriteSpec,
    schema: &SchemaRef,
    ctx: &TaskContext,
) -> Result<WriterPropertiesBuilder> {
    let mut options = TableParquetOptions {
        global: ctx.session_config().options().execution.parquet.clone(),
        ..Default::default()
    };
    for (key, value) in &spec.options {
        let key = key.strip_prefix("format.").unwrap_or(key);
        options.set(key, value)?;
    }
    // Like DataFusion's ParquetSink: the arrow schema travels in the footer's
    // key-value metadata unless the user turned it off.
    if !options.global.skip_arrow_metadata {
        options.arrow_schema(schema);
    }
    WriterPropertiesBuilder::try_from(&options)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::{MAX_SPLITS, SplitCounter};

    #[test]
    fn rows_are_counted_by_the_first_split_column_the_rows_have() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Utf8, true),
            Field::new("partition", DataType::Int32, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(Int32Array::from(vec![Some(3), Some(0), Some(3)])),
            ],
        )
        .unwrap();
        let names = ["shard_id".to_string(), "partition".to_string()];
        let mut counter = SplitCounter::new(&names, &schema).unwrap();
        counter.count(&batch).unwrap();
        counter.count(&batch).unwrap();
        assert_eq!(counter.report().unwrap(), r#"{"0":2,"3":4}"#);
        // Rows without any of the columns are not counted.
        assert!(SplitCounter::new(&names[..1], &schema).is_none());
        // A column with more values than splits ever have stops counting.
        let many = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec!["x"; MAX_SPLITS + 1])),
                Arc::new(Int32Array::from_iter_values(0..=MAX_SPLITS as i32)),
            ],
        )
        .unwrap();
        counter.count(&many).unwrap();
        assert_eq!(counter.report(), None);
    }
}
