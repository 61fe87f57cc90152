//! sluice's physical planning: DataFusion's planner plus [`WritePlanner`],
//! which turns each sink's logical write node into that sink's operators.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

use crate::sink::dynamo::DynamoWriteNode;
use crate::sink::files::WriteNode;

/// Plans the sinks' write nodes; registered on every session that plans
/// physically.
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
        // On the scheduler, whose coordinator then serves this write's
        // placements and leases (and no write it did not plan).
        let register = |write_id: &str| {
            if let Some(local) = &crate::coordinator::CoordinatorHandle::of(session.config()).local
            {
                local.planned.register(write_id);
            }
        };
        if let Some(write) = node.as_any().downcast_ref::<DynamoWriteNode>() {
            register(&write.spec.write_id);
            return Ok(Some(crate::sink::dynamo::plan_write_exec(
                Arc::clone(input),
                &write.spec,
            )));
        }
        if let Some(write) = node.as_any().downcast_ref::<WriteNode>() {
            register(&write.spec.write_id);
            return Ok(Some(crate::sink::files::plan_write(
                Arc::clone(input),
                &write.spec,
                session.config().target_partitions(),
            )?));
        }
        Ok(None)
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
        let plan = DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(WritePlanner)])
            .create_physical_plan(logical_plan, session_state)
            .await?;
        crate::sink::files::size_skew_shuffles(plan)
    }
}
