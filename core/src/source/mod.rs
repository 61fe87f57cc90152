//! Sources a job reads that are not files: [`kafka`] topics and
//! [`shards`] (DynamoDB Streams, Kinesis), each a table whose scan reads a
//! given set of ranges (a stream's batch) as the partitions of a Ballista
//! job, so the executors, not the client, fetch; and [`dynamodb`], the
//! rate-limited parallel read of a DynamoDB table; and [`json_lines`], JSON
//! files read line by line so that bad lines become rows with an `_error`.

pub mod dynamodb;
pub mod json_lines;
pub mod kafka;
pub mod shards;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::TableType;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// What a source table is made of: its schema and the scan it plans. The
/// spec travels in the plan (`plan::codec`).
#[async_trait]
pub trait SourceSpec: std::fmt::Debug + Clone + Send + Sync + 'static {
    fn table_schema(&self) -> Result<SchemaRef>;
    /// The scan of every column (projected by the table).
    async fn plan_scan(&self, state: &dyn Session) -> Result<Arc<dyn ExecutionPlan>>;
}

/// A source's table: one batch's ranges or files (or, outside a stream,
/// what the spec names).
#[derive(Debug, Clone)]
pub struct SourceTable<S> {
    pub spec: S,
    schema: SchemaRef,
}

impl<S: SourceSpec> SourceTable<S> {
    pub fn try_new(spec: S) -> Result<Self> {
        let schema = spec.table_schema()?;
        Ok(Self { spec, schema })
    }
}

#[async_trait]
impl<S: SourceSpec> TableProvider for SourceTable<S> {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let scan = self.spec.plan_scan(state).await?;
        crate::exec::project(scan, &self.schema, projection)
    }
}
