//! Skew-aware distribution of a partitioned write (`write.distribution`
//! `skew`, the default when `write.target_file_rows` is set).
//!
//! Each partition value `k` should get `ceil(rows_k / T)` files of at most
//! `T` rows, and its rows should be written by as many tasks as it has
//! files, without counting the rows in a separate pass first. Ballista's
//! adaptive planner cannot do this for us: its only post-shuffle rule
//! coalesces whole partitions, and its rule list is fixed. So the counting
//! happens in the one shuffle's map side, as the rows pass:
//!
//! - [`SkewRouteExec`] (map side) groups each batch by partition value and
//!   asks the cluster's coordinator (the HTTP service in the scheduler, see
//!   [`crate::coordinator::placement`]) to place that many rows of each value.
//! - The coordinator keeps a running row count per value for
//!   the write and cuts each value's rows into chunks of exactly `T` rows in
//!   arrival order; every chunk gets the next cluster-wide sequence number.
//! - Each row is tagged with its chunk (`__sluice_chunk`), and the shuffle
//!   hashes on that tag. Tags are chosen so that chunk `s` lands in shuffle
//!   partition `s mod R`, which spreads a large value's chunks round robin
//!   over the reduce tasks.
//! - The writer (reduce side) writes one file per chunk.
//!
//! Counts follow this run's data, whatever the shares. A map task that is
//! retried asks again, so a failed attempt leaves gaps (smaller files), never
//! lost or duplicated rows: the shuffle, not the count, carries the rows.
//! Without a coordinator every value becomes one chunk (as `hash`), with a
//! warning.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::Time;
use datafusion::physical_plan::repartition::BatchPartitioner;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::hive::{group_rows, partition_key_columns};
use super::spec::{CHUNK_COLUMN, Distribution, WriteSpec};
use crate::coordinator::CoordinatorHandle;
use crate::coordinator::placement::{ChunkRequest, ChunkResponse};
/// Timeout of one placement call; past it the task falls back to `hash`.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Candidate tags examined per step when looking for tags of a partition.
const TAG_SCAN: i64 = 4096;
/// Bound on the tag search (every partition gets tags long before).
const TAG_SCAN_LIMIT: i64 = 1 << 26;

/// What the map side of a skew-aware write needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
pub struct RouteSpec {
    pub write_id: String,
    pub partition_by: Vec<String>,
    pub target_rows: u64,
    /// Shuffle partitions (reduce tasks) the chunks spread over.
    pub partitions: usize,
}

impl RouteSpec {
    /// The routing of `spec`, when it is a skew-aware partitioned write with
    /// a row target.
    pub fn for_write(spec: &WriteSpec, partitions: usize) -> Option<Self> {
        if spec.partition_by.is_empty() || spec.distribution != Distribution::Skew {
            return None;
        }
        Some(Self {
            write_id: spec.write_id.clone(),
            partition_by: spec.partition_by.clone(),
            target_rows: spec.target_file_rows?,
            partitions: partitions.max(1),
        })
    }
}

/// Chunk tags for `partitions` shuffle partitions: tag `s` is an `Int64`
/// that DataFusion's hash repartitioning (which Ballista's shuffle writer
/// reproduces byte for byte) sends to partition `s mod partitions`.
struct Tags {
    partitions: usize,
    by_partition: Vec<Vec<i64>>,
    next_candidate: i64,
}

impl Tags {
    fn new(partitions: usize) -> Self {
        Self {
            partitions: partitions.max(1),
            by_partition: vec![vec![]; partitions.max(1)],
            next_candidate: 0,
        }
    }

    fn tag(&mut self, seq: u64) -> Result<i64> {
        let n = self.partitions as u64;
        let (p, k) = ((seq % n) as usize, (seq / n) as usize);
        while self.by_partition.get(p).is_some_and(|t| t.len() <= k) {
            self.scan()?;
        }
        self.by_partition
            .get(p)
            .and_then(|t| t.get(k))
            .copied()
            .ok_or_else(|| DataFusionError::Internal(format!("no chunk tag for {seq}")))
    }

    fn scan(&mut self) -> Result<()> {
        if self.next_candidate >= TAG_SCAN_LIMIT {
            return Err(DataFusionError::Internal(
                "chunk tag search exhausted".to_string(),
            ));
        }
        let from = self.next_candidate;
        self.next_candidate += TAG_SCAN;
        let schema = Arc::new(Schema::new(vec![Field::new(
            CHUNK_COLUMN,
            DataType::Int64,
            false,
        )]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(
                from..self.next_candidate,
            ))],
        )?;
        let key: Arc<dyn PhysicalExpr> = Arc::new(Column::new(CHUNK_COLUMN, 0));
        let mut partitioner =
            BatchPartitioner::new_hash_partitioner(vec![key], self.partitions, Time::new())?;
        let by_partition = &mut self.by_partition;
        partitioner.partition(batch, |p, part| {
            if let (Some(tags), Some(values)) = (
                by_partition.get_mut(p),
                part.column(0).as_any().downcast_ref::<Int64Array>(),
            ) {
                tags.extend(values.values().iter().copied());
            }
            Ok(())
        })
    }
}

/// Map side of a skew-aware write: appends [`CHUNK_COLUMN`].
#[derive(Debug)]
pub struct SkewRouteExec {
    input: Arc<dyn ExecutionPlan>,
    spec: RouteSpec,
    properties: Arc<PlanProperties>,
}

/// The input schema plus the chunk column.
pub fn routed_schema(input: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(CHUNK_COLUMN, DataType::Int64, false));
    Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()))
}

impl SkewRouteExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, spec: RouteSpec) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(routed_schema(&input.schema())),
            input.output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            input,
            spec,
            properties: Arc::new(properties),
        }
    }

    pub fn spec(&self) -> &RouteSpec {
        &self.spec
    }

    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }
}

impl DisplayAs for SkewRouteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SluiceSkewRouteExec: by={:?}, target_rows={}, partitions={}",
            self.spec.partition_by, self.spec.target_rows, self.spec.partitions
        )
    }
}

impl ExecutionPlan for SkewRouteExec {
    crate::exec::single_input_plan!("SluiceSkewRouteExec");

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let coordinator = CoordinatorHandle::of(context.session_config());
        let input = self.input.execute(partition, context)?;
        let key_columns = partition_key_columns(&input.schema(), &self.spec.partition_by)?;
        let schema = self.properties.eq_properties.schema().clone();
        let router = Placer {
            spec: self.spec.clone(),
            key_columns,
            tags: Tags::new(self.spec.partitions),
            url: coordinator.url.clone(),
            http: coordinator.http.clone(),
            coordinator,
            schema: Arc::clone(&schema),
        };
        let stream =
            futures::stream::unfold((input, router), |(mut input, mut router)| async move {
                let batch = input.next().await?;
                let out = match batch {
                    Ok(batch) => router.route(batch).await,
                    Err(e) => Err(e),
                };
                Some((out, (input, router)))
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Warn once per process when placement falls back to `hash`.
static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

struct Placer {
    spec: RouteSpec,
    key_columns: Vec<usize>,
    tags: Tags,
    /// The coordinator; `url` is dropped after a failed call.
    coordinator: Arc<CoordinatorHandle>,
    url: Option<String>,
    http: reqwest::Client,
    schema: SchemaRef,
}

impl Placer {
    async fn route(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let groups = group_rows(&batch, &self.spec.partition_by, &self.key_columns, false)?;
        let placed = match self.place(&groups).await {
            Ok(placed) => Some(placed),
            Err(reason) => {
                if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        write_id = %self.spec.write_id,
                        %reason,
                        "skew-aware placement unavailable: each partition value goes to one \
                         writer (as write.distribution 'hash'); the data is unaffected"
                    );
                }
                // Stay on the fallback for this partition: no more timeouts.
                self.url = None;
                None
            }
        };
        let mut chunk = vec![0i64; batch.num_rows()];
        for (i, (dir, rows)) in groups.iter().enumerate() {
            match placed.as_ref().and_then(|p| p.segments.get(i)) {
                Some(runs) => {
                    let mut at = rows.iter();
                    for &(seq, n) in runs {
                        let tag = self.tags.tag(seq)?;
                        for row in at.by_ref().take(n as usize) {
                            chunk[*row as usize] = tag;
                        }
                    }
                }
                None => {
                    let tag = fallback_tag(dir);
                    for row in rows {
                        chunk[*row as usize] = tag;
                    }
                }
            }
        }
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(Int64Array::from(chunk)));
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    async fn place(
        &self,
        groups: &[(String, Vec<u32>)],
    ) -> std::result::Result<ChunkResponse, String> {
        let req = ChunkRequest {
            write_id: self.spec.write_id.clone(),
            target_rows: self.spec.target_rows,
            counts: groups
                .iter()
                .map(|(dir, rows)| (dir.clone(), rows.len() as u64))
                .collect(),
        };
        if let Some(local) = &self.coordinator.local {
            let book = &local.placement;
            return book
                .allocate(&req)
                .map_err(|e| format!("coordinator refused the placement: {e}"));
        }
        let Some(url) = &self.url else {
            return Err("no coordinator configured (the executor's --coordinator-url)".to_string());
        };
        let span = tracing::debug_span!("sluice.chunks.place", values = req.counts.len());
        let resp: ChunkResponse = async {
            self.http
                .post(format!("{url}/v1/chunks"))
                .timeout(CALL_TIMEOUT)
                .json(&req)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)?
                .json()
                .await
        }
        .instrument(span)
        .await
        .map_err(|e| format!("coordinator at {url}: {e}"))?;
        // A reply that does not cover the rows exactly is not used.
        let covers = resp.segments.len() == groups.len()
            && resp.segments.iter().zip(groups).all(|(runs, (_, rows))| {
                runs.iter().map(|r| r.1).sum::<u64>() == rows.len() as u64
            });
        if covers {
            Ok(resp)
        } else {
            Err(format!(
                "coordinator at {url} answered a placement that does not cover the batch"
            ))
        }
    }
}

/// A value's tag when it is not placed by the coordinator: negative, so it
/// never names a placed chunk, and the same for the value in every task.
fn fallback_tag(dir: &str) -> i64 {
    // FNV-1a: stable across processes, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    -1 - (h >> 2) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_land_in_their_partition() -> Result<()> {
        let partitions = 7;
        let mut tags = Tags::new(partitions);
        let values: Vec<i64> = (0..50).map(|s| tags.tag(s)).collect::<Result<_>>()?;
        let mut distinct = values.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), values.len());
        // Partition the tags the way the shuffle does.
        let schema = Arc::new(Schema::new(vec![Field::new(
            CHUNK_COLUMN,
            DataType::Int64,
            false,
        )]));
        let key: Arc<dyn PhysicalExpr> = Arc::new(Column::new(CHUNK_COLUMN, 0));
        let mut partitioner =
            BatchPartitioner::new_hash_partitioner(vec![key], partitions, Time::new())?;
        for (seq, value) in values.iter().enumerate() {
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Int64Array::from(vec![*value]))],
            )?;
            partitioner.partition(batch, |p, _| {
                assert_eq!(p, seq % partitions, "tag {value} of chunk {seq}");
                Ok(())
            })?;
        }
        Ok(())
    }

    #[test]
    fn fallback_tags_are_negative_and_stable() {
        assert!(fallback_tag("id=1") < 0);
        assert_eq!(fallback_tag("id=1"), fallback_tag("id=1"));
        assert_ne!(fallback_tag("id=1"), fallback_tag("id=2"));
    }
}
