//! Codecs that let sluice's plan nodes travel from client to scheduler to
//! executors. They wrap Ballista's own codecs and pass every node they do not
//! own through unchanged; the same pair is installed on all three.
//!
//! sluice's nodes are encoded as a magic prefix plus JSON: they carry a few
//! small fields, and JSON keeps them readable in a debugger.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::catalog::TableProvider;
use datafusion::common::{DataFusionError, Result, TableReference};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};
use sluice_udfs::range::{RangeExec, RangeSpec, RangeTable};
use sluice_udfs::skewed::{SkewedExec, SkewedTable};

use crate::sink::dynamo::{DynamoCommitExec, DynamoSpec, DynamoWriteNode, DynamoWriterExec};
use crate::sink::files::{CommitExec, RouteSpec, SkewRouteExec, WriteNode, WriteSpec, WriterExec};
use crate::source::dynamodb::{DynamoScanExec, ScanSpec, ScanTableSpec};
use crate::source::json_lines::{JsonLinesScanExec, JsonLinesSpec, JsonLinesTable};
use crate::source::kafka::{KafkaScanExec, KafkaSpec, KafkaTable};
use crate::source::shards::{ShardScanExec, ShardSpec, ShardTable};

const MAGIC: &[u8] = b"SLUICE1\0";

#[derive(Serialize, Deserialize)]
struct RangeSpecDto {
    start: i64,
    end: i64,
    step: i64,
    partitions: usize,
}

impl From<RangeSpec> for RangeSpecDto {
    fn from(s: RangeSpec) -> Self {
        Self {
            start: s.start,
            end: s.end,
            step: s.step,
            partitions: s.partitions,
        }
    }
}

impl RangeSpecDto {
    fn into_spec(self) -> Result<RangeSpec> {
        RangeSpec::new(self.start, self.end, self.step, self.partitions)
    }
}

#[derive(Serialize, Deserialize)]
enum LogicalNode {
    Write(WriteSpec),
    Dynamo(DynamoSpec),
}

#[derive(Serialize, Deserialize)]
enum TableNode {
    Range(RangeSpecDto),
    Skewed { spec: RangeSpecDto, seed: i64 },
    Kafka(KafkaSpec),
    Shards(Box<ShardSpec>),
    Dynamo(ScanTableSpec),
    JsonLines(JsonLinesSpec),
}

#[derive(Serialize, Deserialize)]
enum PhysicalNode {
    Range {
        spec: RangeSpecDto,
        with_id: bool,
    },
    Skewed {
        spec: RangeSpecDto,
        seed: i64,
        columns: Vec<usize>,
    },
    SkewRoute(RouteSpec),
    KafkaScan(KafkaSpec),
    JsonLinesScan(JsonLinesSpec),
    ShardScan(Box<ShardSpec>),
    DynamoScan(ScanSpec),
    Writer(WriteSpec),
    Commit(WriteSpec),
    DynamoWriter(DynamoSpec),
    DynamoCommit(DynamoSpec),
}

fn encode<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<()> {
    buf.extend_from_slice(MAGIC);
    serde_json::to_writer(buf, value).map_err(|e| DataFusionError::External(Box::new(e)))
}

/// `Some` when `buf` holds one of sluice's nodes.
fn decode<T: for<'de> Deserialize<'de>>(buf: &[u8]) -> Option<Result<T>> {
    let body = buf.strip_prefix(MAGIC)?;
    Some(serde_json::from_slice(body).map_err(|e| DataFusionError::External(Box::new(e))))
}

fn one_input<T: Clone>(inputs: &[T], what: &str) -> Result<T> {
    match inputs {
        [only] => Ok(only.clone()),
        _ => Err(DataFusionError::Internal(format!(
            "{what} expects one input, got {}",
            inputs.len()
        ))),
    }
}

#[derive(Debug, Default)]
pub struct SluiceLogicalCodec {
    inner: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for SluiceLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        match decode::<LogicalNode>(buf) {
            Some(node) => match node? {
                LogicalNode::Write(spec) => {
                    let input = one_input(inputs, "SluiceWrite")?;
                    Ok(Extension {
                        node: Arc::new(WriteNode::try_new(input, spec)?),
                    })
                }
                LogicalNode::Dynamo(spec) => {
                    let input = one_input(inputs, "SluiceDynamoWrite")?;
                    Ok(Extension {
                        node: Arc::new(DynamoWriteNode::try_new(input, spec)?),
                    })
                }
            },
            None => self.inner.try_decode(buf, inputs, ctx),
        }
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        let any = node.node.as_any();
        if let Some(write) = any.downcast_ref::<WriteNode>() {
            return encode(&LogicalNode::Write(write.spec.clone()), buf);
        }
        if let Some(write) = any.downcast_ref::<DynamoWriteNode>() {
            return encode(&LogicalNode::Dynamo(write.spec.clone()), buf);
        }
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        match decode::<TableNode>(buf) {
            Some(node) => match node? {
                TableNode::Range(spec) => Ok(Arc::new(RangeTable {
                    spec: spec.into_spec()?,
                })),
                TableNode::Skewed { spec, seed } => Ok(Arc::new(SkewedTable {
                    spec: spec.into_spec()?,
                    seed,
                })),
                TableNode::Kafka(spec) => Ok(Arc::new(KafkaTable::try_new(spec)?)),
                TableNode::JsonLines(spec) => Ok(Arc::new(JsonLinesTable::try_new(spec)?)),
                TableNode::Shards(spec) => Ok(Arc::new(ShardTable::try_new(*spec)?)),
                TableNode::Dynamo(spec) => Ok(Arc::new(super::dynamodb::from_scan_spec(spec)?)),
            },
            None => self
                .inner
                .try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if let Some(range) = node.downcast_ref::<RangeTable>() {
            return encode(&TableNode::Range(range.spec.into()), buf);
        }
        if let Some(kafka) = node.downcast_ref::<KafkaTable>() {
            return encode(&TableNode::Kafka(kafka.spec.clone()), buf);
        }
        if let Some(lines) = node.downcast_ref::<JsonLinesTable>() {
            return encode(&TableNode::JsonLines(lines.spec.clone()), buf);
        }
        if let Some(shards) = node.downcast_ref::<ShardTable>() {
            return encode(&TableNode::Shards(Box::new(shards.spec.clone())), buf);
        }
        if let Some(spec) = node
            .downcast_ref::<crate::sink::dynamo::DynamoTable>()
            .and_then(super::dynamodb::scan_spec)
        {
            return encode(&TableNode::Dynamo(spec), buf);
        }
        if let Some(skewed) = node.downcast_ref::<SkewedTable>() {
            return encode(
                &TableNode::Skewed {
                    spec: skewed.spec.into(),
                    seed: skewed.seed,
                },
                buf,
            );
        }
        self.inner.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }
}

#[derive(Debug, Default)]
pub struct SluicePhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for SluicePhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(node) = decode::<PhysicalNode>(buf) else {
            return self.inner.try_decode(buf, inputs, ctx, proto_converter);
        };
        Ok(match node? {
            PhysicalNode::Range { spec, with_id } => Arc::new(RangeExec::try_new(
                spec.into_spec()?,
                with_id,
                one_input(inputs, "RangeExec")?,
            )?),
            PhysicalNode::Skewed {
                spec,
                seed,
                columns,
            } => Arc::new(SkewedExec::try_new(
                spec.into_spec()?,
                seed,
                columns,
                one_input(inputs, "SkewedExec")?,
            )?),
            PhysicalNode::KafkaScan(spec) => Arc::new(KafkaScanExec::try_new(
                spec,
                one_input(inputs, "KafkaScanExec")?,
            )?),
            PhysicalNode::JsonLinesScan(spec) => Arc::new(JsonLinesScanExec::with_input(
                spec,
                one_input(inputs, "JsonLinesScanExec")?,
            )?),
            PhysicalNode::ShardScan(spec) => Arc::new(ShardScanExec::with_input(
                *spec,
                one_input(inputs, "ShardScanExec")?,
            )?),
            PhysicalNode::DynamoScan(spec) => Arc::new(DynamoScanExec::with_input(
                spec,
                one_input(inputs, "DynamoScanExec")?,
            )?),
            PhysicalNode::SkewRoute(spec) => Arc::new(SkewRouteExec::new(
                one_input(inputs, "SluiceSkewRouteExec")?,
                spec,
            )),
            PhysicalNode::Writer(spec) => Arc::new(WriterExec::new(
                one_input(inputs, "SluiceWriterExec")?,
                spec,
            )),
            PhysicalNode::Commit(spec) => Arc::new(CommitExec::new(
                one_input(inputs, "SluiceCommitExec")?,
                spec,
            )),
            PhysicalNode::DynamoWriter(spec) => Arc::new(DynamoWriterExec::new(
                one_input(inputs, "SluiceDynamoWriterExec")?,
                spec,
            )),
            PhysicalNode::DynamoCommit(spec) => Arc::new(DynamoCommitExec::new(
                one_input(inputs, "SluiceDynamoCommitExec")?,
                spec,
            )),
        })
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(range) = node.downcast_ref::<RangeExec>() {
            return encode(
                &PhysicalNode::Range {
                    spec: range.spec().into(),
                    with_id: range.with_id(),
                },
                buf,
            );
        }
        if let Some(skewed) = node.downcast_ref::<SkewedExec>() {
            return encode(
                &PhysicalNode::Skewed {
                    spec: skewed.spec().into(),
                    seed: skewed.seed(),
                    columns: skewed.columns().to_vec(),
                },
                buf,
            );
        }
        if let Some(route) = node.downcast_ref::<SkewRouteExec>() {
            return encode(&PhysicalNode::SkewRoute(route.spec().clone()), buf);
        }
        if let Some(writer) = node.downcast_ref::<WriterExec>() {
            return encode(&PhysicalNode::Writer(writer.spec().clone()), buf);
        }
        if let Some(commit) = node.downcast_ref::<CommitExec>() {
            return encode(&PhysicalNode::Commit(commit.spec().clone()), buf);
        }
        if let Some(scan) = node.downcast_ref::<KafkaScanExec>() {
            return encode(&PhysicalNode::KafkaScan(scan.spec().clone()), buf);
        }
        if let Some(scan) = node.downcast_ref::<JsonLinesScanExec>() {
            return encode(&PhysicalNode::JsonLinesScan(scan.spec().clone()), buf);
        }
        if let Some(scan) = node.downcast_ref::<ShardScanExec>() {
            return encode(&PhysicalNode::ShardScan(Box::new(scan.spec().clone())), buf);
        }
        if let Some(scan) = node.downcast_ref::<DynamoScanExec>() {
            return encode(&PhysicalNode::DynamoScan(scan.spec().clone()), buf);
        }
        if let Some(writer) = node.downcast_ref::<DynamoWriterExec>() {
            return encode(&PhysicalNode::DynamoWriter(writer.spec().clone()), buf);
        }
        if let Some(commit) = node.downcast_ref::<DynamoCommitExec>() {
            return encode(&PhysicalNode::DynamoCommit(commit.spec().clone()), buf);
        }
        self.inner.try_encode(node, buf, proto_converter)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion_proto::physical_plan::DefaultPhysicalProtoConverter;
    use sluice_udfs::range::slice_schema;

    use super::*;
    use crate::sink::dynamo::{DynamoOptions, TableShape};
    use crate::sink::files::{WriteFormat, WriteSpec};

    fn write_spec() -> Result<WriteSpec> {
        let options = BTreeMap::from([("write.target_file_rows".to_string(), "10".to_string())]);
        Ok(
            WriteSpec::new("s3://bucket/out", WriteFormat::Parquet, true, options)?
                .with_partition_by(vec!["id".into()]),
        )
    }

    fn dynamo_spec() -> DynamoSpec {
        DynamoSpec {
            table: "events".into(),
            write_id: "w1".into(),
            options: DynamoOptions {
                max_units: Some(300.0),
                ..DynamoOptions::default()
            },
            shape: TableShape {
                keys: vec![("pk".into(), "S".into())],
                indexes: vec![],
                provisioned_wcu: Some(600.0),
                on_demand_max: None,
                ..Default::default()
            },
            budget_hint: 300.0,
        }
    }

    /// Encodes `node`, decodes it over the same inputs, and encodes the
    /// result again: the bytes match, so every field survived.
    fn physical_round_trip(node: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        let codec = SluicePhysicalCodec::default();
        let converter = DefaultPhysicalProtoConverter {};
        let mut first = vec![];
        codec.try_encode(Arc::clone(&node), &mut first, &converter)?;
        assert!(
            first.starts_with(MAGIC),
            "{} not encoded by sluice",
            node.name()
        );
        let inputs: Vec<Arc<dyn ExecutionPlan>> = node.children().into_iter().cloned().collect();
        let decoded = codec.try_decode(&first, &inputs, &TaskContext::default(), &converter)?;
        let mut second = vec![];
        codec.try_encode(Arc::clone(&decoded), &mut second, &converter)?;
        assert_eq!(first, second, "{}", node.name());
        assert_eq!(decoded.name(), node.name());
        assert_eq!(decoded.schema(), node.schema(), "{}", node.name());
        Ok(decoded)
    }

    #[test]
    fn every_physical_node_round_trips() -> Result<()> {
        let slices: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(slice_schema()));
        let range = RangeSpec::new(0, 100, 3, 4)?;
        let nodes: Vec<Arc<dyn ExecutionPlan>> = vec![
            Arc::new(RangeExec::try_new(range, true, Arc::clone(&slices))?),
            Arc::new(RangeExec::try_new(range, false, Arc::clone(&slices))?),
            Arc::new(SkewedExec::try_new(
                range,
                7,
                vec![0, 1],
                Arc::clone(&slices),
            )?),
        ];
        for node in nodes {
            physical_round_trip(node)?;
        }
        let rows = Arc::new(EmptyExec::new(sluice_udfs::range::range_schema()));
        let spec = write_spec()?;
        let route = RouteSpec::for_write(&spec, 5).ok_or_else(|| {
            DataFusionError::Internal("a skew write with a target has a route".into())
        })?;
        let decoded =
            physical_round_trip(Arc::new(SkewRouteExec::new(rows.clone(), route.clone())))?;
        assert_eq!(
            decoded.downcast_ref::<SkewRouteExec>().map(|r| r.spec()),
            Some(&route)
        );
        let decoded = physical_round_trip(Arc::new(WriterExec::new(rows.clone(), spec.clone())))?;
        assert_eq!(
            decoded.downcast_ref::<WriterExec>().map(|w| w.spec()),
            Some(&spec)
        );
        let decoded = physical_round_trip(Arc::new(CommitExec::new(rows.clone(), spec.clone())))?;
        assert_eq!(
            decoded.downcast_ref::<CommitExec>().map(|c| c.spec()),
            Some(&spec)
        );
        let dynamo = dynamo_spec();
        let decoded = physical_round_trip(Arc::new(DynamoWriterExec::new(
            rows.clone(),
            dynamo.clone(),
        )))?;
        assert_eq!(
            decoded.downcast_ref::<DynamoWriterExec>().map(|w| w.spec()),
            Some(&dynamo)
        );
        let decoded = physical_round_trip(Arc::new(DynamoCommitExec::new(rows, dynamo.clone())))?;
        assert_eq!(
            decoded.downcast_ref::<DynamoCommitExec>().map(|c| c.spec()),
            Some(&dynamo)
        );
        Ok(())
    }

    #[test]
    fn every_logical_node_and_table_round_trips() -> Result<()> {
        let codec = SluiceLogicalCodec::default();
        let ctx = TaskContext::default();
        let input = LogicalPlan::EmptyRelation(EmptyRelation {
            produce_one_row: false,
            schema: Arc::new(datafusion::common::DFSchema::try_from(
                sluice_udfs::range::range_schema(),
            )?),
        });
        let spec = write_spec()?;
        let dynamo = dynamo_spec();
        let nodes = [
            Extension {
                node: Arc::new(WriteNode::try_new(input.clone(), spec.clone())?),
            },
            Extension {
                node: Arc::new(DynamoWriteNode::try_new(input.clone(), dynamo.clone())?),
            },
        ];
        for node in nodes {
            let mut buf = vec![];
            codec.try_encode(&node, &mut buf)?;
            let decoded = codec.try_decode(&buf, std::slice::from_ref(&input), &ctx)?;
            let any = decoded.node.as_any();
            if let Some(w) = any.downcast_ref::<WriteNode>() {
                assert_eq!(w.spec, spec);
            } else if let Some(w) = any.downcast_ref::<DynamoWriteNode>() {
                assert_eq!(w.spec, dynamo);
            } else {
                return Err(DataFusionError::Internal(format!(
                    "decoded {} as something else",
                    node.node.name()
                )));
            }
        }
        let range = RangeSpec::new(5, 50, 5, 3)?;
        let tables: Vec<Arc<dyn TableProvider>> = vec![
            Arc::new(RangeTable { spec: range }),
            Arc::new(SkewedTable {
                spec: range,
                seed: 9,
            }),
        ];
        let name = TableReference::bare("t");
        for table in tables {
            let mut buf = vec![];
            codec.try_encode_table_provider(&name, Arc::clone(&table), &mut buf)?;
            let decoded = codec.try_decode_table_provider(&buf, &name, table.schema(), &ctx)?;
            if let Some(r) = decoded.downcast_ref::<RangeTable>() {
                assert_eq!(r.spec, range);
            } else if let Some(s) = decoded.downcast_ref::<SkewedTable>() {
                assert_eq!((s.spec, s.seed), (range, 9));
            } else {
                return Err(DataFusionError::Internal("decoded another table".into()));
            }
        }
        Ok(())
    }
}
