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

use crate::dynamo::{DynamoCommitExec, DynamoSpec, DynamoWriteNode, DynamoWriterExec};
use crate::write::chunks::{RouteSpec, SkewRouteExec};
use crate::write::{CommitExec, WriteNode, WriteSpec, WriterExec};

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
        if let Some(writer) = node.downcast_ref::<DynamoWriterExec>() {
            return encode(&PhysicalNode::DynamoWriter(writer.spec().clone()), buf);
        }
        if let Some(commit) = node.downcast_ref::<DynamoCommitExec>() {
            return encode(&PhysicalNode::DynamoCommit(commit.spec().clone()), buf);
        }
        self.inner.try_encode(node, buf, proto_converter)
    }
}
