//! The file source: a directory table (`CREATE EXTERNAL TABLE t STORED AS
//! PARQUET|CSV|JSON LOCATION 'dir/'`) read by a stream. Each batch takes the
//! files not taken yet, oldest first (modification time, then name), at
//! most `max_files` of them; a file is a split read whole (`0..size`).
//!
//! As Spark's file source, it remembers the files it took, and forgets (and
//! ignores) files more than `max_file_age` older than the newest it took,
//! so its memory and the checkpoint's state stay bounded. Producers must
//! make a file appear whole (an S3 PUT, or a rename into the directory):
//! a file is taken as it is when listed. Files in subdirectories are taken
//! too (a producer's `yyyy/MM/dd/HH/` prefixes), except under hidden ones
//! (`_x/`, `.x/`), by their path under the source.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::datasource::listing::ListingTableUrl;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::error::StreamError;
use super::source::{BatchInputs, Planned, Range, Source, SourceLag};
use crate::clock::Clock;

/// How long one listing or footer read may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Footer reads in flight at once.
const FOOTER_READS: usize = 16;

#[derive(Debug, Clone)]
pub struct FileSourceOptions {
    pub max_files: usize,
    pub max_file_age: Duration,
}

impl Default for FileSourceOptions {
    fn default() -> Self {
        Self {
            max_files: 1000,
            max_file_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

pub struct FileSource {
    table: String,
    /// The directory's URL, ending in `/`.
    location: String,
    extension: String,
    parquet: bool,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// Files taken: name under the directory -> modification time (ms).
    seen: HashMap<String, i64>,
    newest_ms: i64,
    options: FileSourceOptions,
    /// With `--available-now`: only these files.
    frozen: Option<HashSet<String>>,
    clock: Arc<dyn Clock>,
}

/// What the checkpoint keeps of a file source.
#[derive(Debug, Default, Serialize, Deserialize)]
struct FileSourceState {
    seen: HashMap<String, i64>,
}

struct Listed {
    name: String,
    size: u64,
    modified_ms: i64,
}

impl FileSource {
    pub fn new(
        table: &str,
        location: &str,
        format: &str,
        store: Arc<dyn ObjectStore>,
        options: FileSourceOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StreamError> {
        let bad = |what: String| StreamError::Source {
            table: table.to_string(),
            location: location.to_string(),
            what,
        };
        let url = ListingTableUrl::parse(location).map_err(|e| bad(e.to_string()))?;
        let extension = match format.to_ascii_uppercase().as_str() {
            "PARQUET" => ".parquet",
            "CSV" => ".csv",
            "JSON" => ".json",
            "ARROW" => ".arrow",
            other => return Err(bad(format!("{other} files cannot be streamed"))),
        };
        if options.max_files == 0 {
            return Err(bad("max_files_per_batch must be at least 1".into()));
        }
        Ok(Self {
            table: table.to_string(),
            location: url.as_str().to_string(),
            extension: extension.to_string(),
            parquet: extension == ".parquet",
            store,
            prefix: url.prefix().clone(),
            seen: HashMap::new(),
            newest_ms: i64::MIN,
            options,
            frozen: None,
            clock,
        })
    }

    fn error(&self, what: String) -> StreamError {
        StreamError::Source {
            table: self.table.clone(),
            location: self.location.clone(),
            what,
        }
    }

    /// The directory's data files, hidden (`_x`, `.x`) names left out.
    async fn list(&self) -> Result<Vec<Listed>, StreamError> {
        let listing = self.store.list(Some(&self.prefix)).try_collect::<Vec<_>>();
        let metas = tokio::time::timeout(CALL_TIMEOUT, listing)
            .await
            .map_err(|_| self.error(format!("listing took over {CALL_TIMEOUT:?}")))?
            .map_err(|e| self.error(format!("listing failed: {e}")))?;
        let mut out = Vec::new();
        for meta in metas {
            let Some(name) = meta
                .location
                .prefix_match(&self.prefix)
                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>())
            else {
                continue;
            };
            if name
                .iter()
                .any(|p| p.starts_with('_') || p.starts_with('.'))
            {
                continue;
            }
            let joined = name.join("/");
            if !joined.ends_with(&self.extension) {
                continue;
            }
            out.push(Listed {
                name: joined,
                size: meta.size,
                modified_ms: meta.last_modified.timestamp_millis(),
            });
        }
        Ok(out)
    }

    /// A listed file's path: its name is the listing's path below the
    /// directory (parts as the store encodes them, joined by `/`).
    fn path_of(&self, name: &str) -> Path {
        let joined = if self.prefix.as_ref().is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        };
        // Names come from the store's own listing, so they parse as they are.
        Path::parse(&joined).unwrap_or_else(|_| Path::from(joined))
    }

    fn too_old(&self, modified_ms: i64) -> bool {
        let age = self.options.max_file_age.as_millis() as i64;
        self.newest_ms != i64::MIN && modified_ms < self.newest_ms.saturating_sub(age)
    }
}

#[async_trait]
impl Source for FileSource {
    fn table(&self) -> &str {
        &self.table
    }

    async fn plan(&mut self) -> Result<Planned, StreamError> {
        let mut fresh: Vec<Listed> = self
            .list()
            .await?
            .into_iter()
            // An empty file may still be being written (or holds no
            // rows): it waits until it has content.
            .filter(|f| f.size > 0)
            .filter(|f| !self.seen.contains_key(&f.name) && !self.too_old(f.modified_ms))
            .filter(|f| {
                self.frozen
                    .as_ref()
                    .is_none_or(|only| only.contains(&f.name))
            })
            .collect();
        fresh.sort_by(|a, b| (a.modified_ms, &a.name).cmp(&(b.modified_ms, &b.name)));
        let rest = fresh.split_off(fresh.len().min(self.options.max_files));
        let now_ms = self.clock.wall().timestamp_millis();
        let lag = SourceLag {
            source: self.table.clone(),
            pending: rest.len() as u64,
            pending_bytes: rest.iter().map(|f| f.size).sum(),
            age_ms: rest
                .first()
                .map_or(0, |f| now_ms.saturating_sub(f.modified_ms).max(0) as u64),
        };
        let ranges = fresh
            .into_iter()
            .map(|f| Range {
                source: self.table.clone(),
                split: f.name,
                start: 0,
                end: f.size as i64,
                modified_ms: Some(f.modified_ms),
                ..Default::default()
            })
            .collect();
        Ok(Planned { ranges, lag })
    }

    fn taken(&mut self, ranges: &[Range]) {
        for r in ranges.iter().filter(|r| r.source == self.table) {
            let modified = r.modified_ms.unwrap_or(0);
            self.newest_ms = self.newest_ms.max(modified);
            self.seen.insert(r.split.clone(), modified);
        }
        let age = self.options.max_file_age.as_millis() as i64;
        let horizon = self.newest_ms.saturating_sub(age);
        self.seen.retain(|_, m| *m >= horizon);
    }

    fn snapshot(&self) -> serde_json::Value {
        serde_json::json!(FileSourceState {
            seen: self.seen.clone()
        })
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), StreamError> {
        let state: FileSourceState = serde_json::from_value(state.clone())
            .map_err(|e| self.error(format!("its checkpointed state is unreadable: {e}")))?;
        self.newest_ms = state.seen.values().copied().max().unwrap_or(i64::MIN);
        self.seen = state.seen;
        Ok(())
    }

    fn bind(&self, ranges: &[&Range], batch: &mut BatchInputs) -> Result<(), StreamError> {
        let files = ranges
            .iter()
            .map(|r| crate::storage::object_url(&self.location, &self.path_of(&r.split)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(e))?;
        batch
            .files
            .insert(&self.location, files)
            .map_err(|e| self.error(e.to_string()))
    }

    fn bytes(&self, range: &Range) -> Option<u64> {
        u64::try_from(range.end - range.start).ok()
    }

    async fn rows(&self, ranges: &[&Range]) -> Vec<Option<u64>> {
        if !self.parquet {
            return vec![None; ranges.len()];
        }
        let files: Vec<object_store::ObjectMeta> = ranges
            .iter()
            .map(|r| object_store::ObjectMeta {
                location: self.path_of(&r.split),
                last_modified: chrono::DateTime::from_timestamp_millis(r.modified_ms.unwrap_or(0))
                    .unwrap_or_default(),
                size: r.end.max(0) as u64,
                e_tag: None,
                version: None,
            })
            .collect();
        let store = Arc::clone(&self.store);
        futures::stream::iter(files)
            .map(move |meta| footer_rows(Arc::clone(&store), meta))
            .buffered(FOOTER_READS)
            .collect()
            .await
    }

    async fn freeze(&mut self) -> Result<(), StreamError> {
        let names = self.list().await?.into_iter().map(|f| f.name).collect();
        self.frozen = Some(names);
        Ok(())
    }
}

/// A Parquet file's row count, from its footer.
async fn footer_rows(store: Arc<dyn ObjectStore>, meta: object_store::ObjectMeta) -> Option<u64> {
    use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
    let read = async {
        DFParquetMetadata::new(store.as_ref(), &meta)
            .with_metadata_size_hint(Some(64 * 1024))
            .fetch_metadata()
            .await
    };
    match tokio::time::timeout(CALL_TIMEOUT, read).await {
        Ok(Ok(m)) => u64::try_from(m.file_metadata().num_rows()).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    async fn put(store: &InMemory, name: &str) -> Result<(), object_store::Error> {
        store
            .put(&Path::from(format!("in/{name}")), PutPayload::from("x"))
            .await
            .map(|_| ())
    }

    fn source(store: Arc<InMemory>, max_files: usize) -> Result<FileSource, StreamError> {
        FileSource::new(
            "src",
            "memory:///in/",
            "json",
            store,
            FileSourceOptions {
                max_files,
                ..Default::default()
            },
            crate::clock::system(),
        )
    }

    #[tokio::test]
    async fn batches_take_new_files_oldest_first_capped_and_skip_hidden()
    -> Result<(), Box<dyn std::error::Error>> {
        let store = Arc::new(InMemory::new());
        for name in ["b.json", "a.json", "_SUCCESS", ".x.json", "c.csv"] {
            put(&store, name).await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut s = source(Arc::clone(&store), 1)?;
        let first = s.plan().await?;
        // Oldest first: b was written before a.
        assert_eq!(first.ranges.len(), 1);
        assert_eq!(first.ranges[0].split, "b.json");
        assert_eq!((first.lag.pending, first.lag.pending_bytes), (1, 1));
        s.taken(&first.ranges);
        let second = s.plan().await?;
        assert_eq!(second.ranges[0].split, "a.json");
        assert_eq!(second.lag.pending, 0);
        s.taken(&second.ranges);
        assert!(s.plan().await?.ranges.is_empty());
        // A restart restores what was taken.
        let mut again = source(Arc::clone(&store), 10)?;
        again.restore(&s.snapshot())?;
        assert!(again.plan().await?.ranges.is_empty());
        put(&store, "d.json").await?;
        let third = again.plan().await?;
        assert_eq!(third.ranges.len(), 1);
        assert_eq!(third.ranges[0].split, "d.json");
        again.taken(&third.ranges);
        // An empty file (perhaps still being written) waits for content.
        store
            .put(&Path::from("in/e.json"), PutPayload::from(""))
            .await?;
        assert!(again.plan().await?.ranges.is_empty());
        put(&store, "e.json").await?;
        assert_eq!(again.plan().await?.ranges[0].split, "e.json");
        Ok(())
    }

    #[tokio::test]
    async fn available_now_ignores_later_files() -> Result<(), Box<dyn std::error::Error>> {
        let store = Arc::new(InMemory::new());
        put(&store, "a.json").await?;
        let mut s = source(Arc::clone(&store), 10)?;
        s.freeze().await?;
        put(&store, "b.json").await?;
        let planned = s.plan().await?;
        assert_eq!(planned.ranges.len(), 1);
        s.taken(&planned.ranges);
        assert!(s.plan().await?.ranges.is_empty());
        Ok(())
    }

    /// Files under subdirectories (a producer's `yyyy/MM/dd/` prefixes) are
    /// taken as they arrive, by their path under the source; hidden
    /// directories (`_staging/`, `.tmp/`) are not.
    #[tokio::test]
    async fn files_in_subdirectories_are_taken_and_hidden_ones_are_not()
    -> Result<(), Box<dyn std::error::Error>> {
        let store = Arc::new(InMemory::new());
        put(&store, "2026/11/26/a.json").await?;
        put(&store, "_staging/x.json").await?;
        put(&store, "2026/.tmp/y.json").await?;
        let mut s = source(Arc::clone(&store), 10)?;
        let first = s.plan().await?;
        let splits: Vec<&str> = first.ranges.iter().map(|r| r.split.as_str()).collect();
        assert_eq!(splits, ["2026/11/26/a.json"]);
        s.taken(&first.ranges);
        put(&store, "2026/11/27/b.json").await?;
        let second = s.plan().await?;
        let splits: Vec<&str> = second.ranges.iter().map(|r| r.split.as_str()).collect();
        assert_eq!(splits, ["2026/11/27/b.json"]);
        Ok(())
    }
}
