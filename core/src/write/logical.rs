//! The logical write node the client builds, and the extension planner that
//! turns it into `CommitExec(CoalescePartitionsExec(WriterExec(input)))` on
//! the scheduler. The coalesce is where Ballista cuts the stage: one task per
//! input partition writes, then one task commits.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, DFSchemaRef, Result, internal_err};
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::Partitioning;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

use super::chunks::{CHUNK_COLUMN, RouteSpec, SkewRouteExec};
use super::commit::CommitExec;
use super::spec::WriteSpec;
use super::writer::WriterExec;
use crate::dynamo::{DynamoCommitExec, DynamoWriteNode, DynamoWriterExec};

/// Schema of a write statement's result: one row of totals.
pub fn write_result_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("rows", DataType::UInt64, false),
            Field::new("files", DataType::UInt64, false),
            Field::new("bytes", DataType::UInt64, false),
            Field::new("write_id", DataType::Utf8, false),
            Field::new("output", DataType::Utf8, false),
            // The whole commit step, staging cleanup included.
            Field::new("commit_ms", DataType::UInt64, false),
        ]))
    });
    Arc::clone(&SCHEMA)
}

#[derive(Debug, Clone)]
pub struct WriteNode {
    pub input: LogicalPlan,
    pub spec: WriteSpec,
    schema: DFSchemaRef,
}

impl WriteNode {
    pub fn try_new(input: LogicalPlan, spec: WriteSpec) -> Result<Self> {
        let schema = Arc::new(DFSchema::try_from(write_result_schema())?);
        Ok(Self {
            input,
            spec,
            schema,
        })
    }

    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(self),
        })
    }
}

impl PartialEq for WriteNode {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec && self.input == other.input
    }
}
impl Eq for WriteNode {}
impl Hash for WriteNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.spec.hash(state);
        self.input.hash(state);
    }
}
impl PartialOrd for WriteNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.spec.partial_cmp(&other.spec)
    }
}

impl UserDefinedLogicalNodeCore for WriteNode {
    fn name(&self) -> &str {
        "SluiceWrite"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SluiceWrite: url={}, format={:?}, overwrite={}, write_id={}",
            self.spec.url, self.spec.format, self.spec.overwrite, self.spec.write_id
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        match inputs.pop() {
            Some(input) if inputs.is_empty() => Self::try_new(input, self.spec.clone()),
            _ => internal_err!("SluiceWrite takes exactly one input"),
        }
    }
}

/// Plans [`WriteNode`]s; registered on every session that plans physically.
#[derive(Debug, Default)]
pub struct WritePlanner;

#[async_trait]
impl ExtensionPlanner for WritePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let [input] = physical_inputs else {
            return Ok(None);
        };
        if let Some(write) = node.as_any().downcast_ref::<DynamoWriteNode>() {
            let writer = Arc::new(DynamoWriterExec::new(Arc::clone(input), write.spec.clone()));
            let gathered = Arc::new(CoalescePartitionsExec::new(writer));
            return Ok(Some(Arc::new(DynamoCommitExec::new(
                gathered,
                write.spec.clone(),
            ))));
        }
        let Some(write) = node.as_any().downcast_ref::<WriteNode>() else {
            return Ok(None);
        };
        let input = match RouteSpec::for_write(&write.spec, session.config().target_partitions()) {
            // The one shuffle, by chunk, planned here so that its partition
            // count is the one the chunk tags were chosen for.
            Some(route) => {
                let partitions = route.partitions;
                let routed: Arc<dyn ExecutionPlan> =
                    Arc::new(SkewRouteExec::new(Arc::clone(input), route));
                let chunk = Column::new_with_schema(CHUNK_COLUMN, &routed.schema())?;
                Arc::new(RepartitionExec::try_new(
                    routed,
                    Partitioning::Hash(vec![Arc::new(chunk)], partitions),
                )?)
            }
            None => Arc::clone(input),
        };
        let writer = Arc::new(WriterExec::new(input, write.spec.clone()));
        let gathered = Arc::new(CoalescePartitionsExec::new(writer));
        Ok(Some(Arc::new(CommitExec::new(
            gathered,
            write.spec.clone(),
        ))))
    }
}

/// DataFusion's planner plus [`WritePlanner`].
#[derive(Debug, Default)]
pub struct SluiceQueryPlanner;

#[async_trait]
impl QueryPlanner for SluiceQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(WritePlanner)])
            .create_physical_plan(logical_plan, session_state)
            .await
    }
}
