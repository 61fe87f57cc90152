//! `CREATE EXTERNAL TABLE t (...) STORED AS DYNAMODB LOCATION
//! 'dynamodb://<table>' OPTIONS (...)`: a write-only table. Its columns name
//! the attributes jobs write; `INSERT INTO t SELECT ...` is planned by the
//! runner into a [`DynamoWriteNode`].

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::{DFSchema, DFSchemaRef, Result, internal_err, plan_err};
use datafusion::logical_expr::{
    CreateExternalTable, Expr, Extension, LogicalPlan, TableType, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::ExecutionPlan;

use super::spec::{DynamoOptions, DynamoSpec, table_name};
use super::writer::dynamo_result_schema;

/// The `STORED AS` name.
pub const DYNAMODB: &str = "DYNAMODB";

#[derive(Debug)]
pub struct DynamoTable {
    pub table: String,
    pub options: DynamoOptions,
    pub schema: SchemaRef,
}

#[async_trait]
impl TableProvider for DynamoTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
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
                "DynamoDB table {} needs a column list naming the attributes to write",
                cmd.name
            );
        }
        Ok(Arc::new(DynamoTable {
            table,
            options,
            schema: Arc::new(cmd.schema.as_arrow().clone()),
        }))
    }
}

/// A DynamoDB write in the logical plan; planned into
/// `DynamoCommitExec(CoalescePartitionsExec(DynamoWriterExec(input)))`.
#[derive(Debug, Clone)]
pub struct DynamoWriteNode {
    pub input: LogicalPlan,
    pub spec: DynamoSpec,
    schema: DFSchemaRef,
}

impl DynamoWriteNode {
    pub fn try_new(input: LogicalPlan, spec: DynamoSpec) -> Result<Self> {
        let schema = Arc::new(DFSchema::try_from(dynamo_result_schema())?);
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

    fn key(&self) -> String {
        serde_json::to_string(&self.spec).unwrap_or_default()
    }
}

impl PartialEq for DynamoWriteNode {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key() && self.input == other.input
    }
}
impl Eq for DynamoWriteNode {}
impl Hash for DynamoWriteNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
        self.input.hash(state);
    }
}
impl PartialOrd for DynamoWriteNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.key().partial_cmp(&other.key())
    }
}

impl UserDefinedLogicalNodeCore for DynamoWriteNode {
    fn name(&self) -> &str {
        "SluiceDynamoWrite"
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
            "SluiceDynamoWrite: table={}, write_id={}",
            self.spec.table, self.spec.write_id
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        match inputs.pop() {
            Some(input) if inputs.is_empty() => Self::try_new(input, self.spec.clone()),
            _ => internal_err!("SluiceDynamoWrite takes exactly one input"),
        }
    }
}
