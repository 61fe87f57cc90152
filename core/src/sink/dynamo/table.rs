//! `CREATE EXTERNAL TABLE t (...) STORED AS DYNAMODB LOCATION
//! 'dynamodb://<table>' OPTIONS (...)`. Its columns name the attributes
//! jobs write; `INSERT INTO t SELECT ...` is planned by the runner into a
//! [`DynamoWriteNode`]. Reading it goes through the `reader` the plan layer
//! gives it (the rate-limited scan, a source), so this sink does not
//! depend on the source.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{CreateExternalTable, Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;

use super::spec::{DynamoOptions, DynamoSpec, table_name};
use super::writer::dynamo_result_schema;
use crate::exec::{SinkNode, SinkSpec};

/// The `STORED AS` name.
pub const DYNAMODB: &str = "DYNAMODB";

#[derive(Debug)]
pub struct DynamoTable {
    pub table: String,
    pub options: DynamoOptions,
    pub schema: SchemaRef,
    /// What `SELECT ... FROM` the table reads through (none: write-only).
    pub reader: Option<Arc<dyn TableProvider>>,
}

#[async_trait]
impl TableProvider for DynamoTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        match &self.reader {
            Some(r) => r.supports_filters_pushdown(filters),
            None => Ok(vec![
                TableProviderFilterPushDown::Unsupported;
                filters.len()
            ]),
        }
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(reader) = &self.reader {
            return reader.scan(state, projection, filters, limit).await;
        }
        plan_err!(
            "DynamoDB table '{}' is write-only in sluice: use it as the target of INSERT INTO",
            self.table
        )
    }
}

#[derive(Debug, Default)]
pub struct DynamoTableFactory;

#[async_trait]
impl TableProviderFactory for DynamoTableFactory {
    async fn create(
        &self,
        _state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        Ok(Arc::new(Self::build(cmd)?))
    }
}

impl DynamoTableFactory {
    /// The table `cmd` defines, without a reader.
    pub fn build(cmd: &CreateExternalTable) -> Result<DynamoTable> {
        let [location] = cmd.locations.as_slice() else {
            return plan_err!("a DynamoDB table has one LOCATION 'dynamodb://<table>'");
        };
        let table = table_name(location).map_err(|e| {
            datafusion::error::DataFusionError::Plan(format!(
                "CREATE EXTERNAL TABLE {}: {e}",
                cmd.name
            ))
        })?;
        let options = DynamoOptions::parse(&cmd.options).map_err(|e| {
            datafusion::error::DataFusionError::Plan(format!("DynamoDB table {}: {e}", cmd.name))
        })?;
        if cmd.schema.fields().is_empty() {
            return plan_err!(
                "DynamoDB table {} needs a column list naming the attributes to write or read",
                cmd.name
            );
        }
        Ok(DynamoTable {
            table,
            options,
            schema: Arc::new(cmd.schema.as_arrow().clone()),
            reader: None,
        })
    }
}

/// A DynamoDB write in the logical plan; planned into
/// `DynamoCommitExec(CoalescePartitionsExec(DynamoWriterExec(input)))`.
pub type DynamoWriteNode = SinkNode<DynamoSpec>;

impl SinkSpec for DynamoSpec {
    const NODE: &'static str = "SluiceDynamoWrite";

    fn result_schema() -> SchemaRef {
        dynamo_result_schema()
    }

    fn explain(&self) -> String {
        format!("table={}, write_id={}", self.table, self.write_id)
    }
}
