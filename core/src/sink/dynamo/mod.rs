//! The DynamoDB sink: `STORED AS DYNAMODB` tables ([`table`]), the Arrow to
//! item mapping ([`item`]), the writer and commit operators ([`writer`]),
//! paced by the cluster-wide rate limiter (`coordinator::limiter`), whose
//! coordinator runs with the scheduler (`coordinator::leases`).
//! Options and the checks made before any item is sent live in [`spec`]; the
//! shared SDK client in `storage::dynamodb`.

pub mod item;
pub mod spec;
pub mod table;
pub mod writer;

use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;

use crate::storage::dynamodb as client;
pub use spec::{DynamoOptions, DynamoSpec, SpecError, TableShape};
pub use table::{DYNAMODB, DynamoTable, DynamoTableFactory, DynamoWriteNode};
pub use writer::{
    DynamoCommitExec, DynamoCommitReport, DynamoWriterExec, WriterReport, dynamo_result_schema,
};

/// Client-side checks before any item is sent: the table exists and its
/// key schema matches the statement's columns and types. Returns the spec
/// every writer receives.
pub async fn plan_write(
    table: &DynamoTable,
    input_schema: &arrow::datatypes::Schema,
) -> Result<DynamoSpec, SpecError> {
    let client = client::client().await;
    let shape = client::describe(&client, &table.table).await?;
    spec::check_shape(&shape, &table.table, input_schema, &table.options)?;
    if let Some(dir) = &table.options.dead_letter
        && url::Url::parse(dir).is_err()
        && !dir.starts_with('/')
    {
        return Err(SpecError::DeadLetterLocation(dir.clone()));
    }
    let budget_hint = shape.budget(table.options.share());
    Ok(DynamoSpec {
        table: table.table.clone(),
        write_id: uuid::Uuid::new_v4().simple().to_string(),
        options: table.options.clone(),
        shape,
        budget_hint,
    })
}

/// The physical shape of a DynamoDB write:
/// `DynamoCommitExec(CoalescePartitionsExec(DynamoWriterExec(input)))`.
pub fn plan_write_exec(input: Arc<dyn ExecutionPlan>, spec: &DynamoSpec) -> Arc<dyn ExecutionPlan> {
    let writer = Arc::new(DynamoWriterExec::new(input, spec.clone()));
    let gathered = Arc::new(CoalescePartitionsExec::new(writer));
    Arc::new(DynamoCommitExec::new(gathered, spec.clone()))
}
