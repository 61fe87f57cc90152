//! The DynamoDB sink: `STORED AS DYNAMODB` tables ([`table`]), the Arrow to
//! item mapping ([`item`]), the writer and commit operators ([`writer`]),
//! and the cluster-wide rate limiter ([`limiter`]) whose coordinator runs
//! with the scheduler. Options and the checks made before any item is sent
//! live in [`spec`]; the shared SDK client in [`client`].

pub mod client;
pub mod item;
pub mod limiter;
pub mod spec;
pub mod table;
pub mod writer;

pub use limiter::{Coordinator, coordinator_url, set_coordinator_url};
pub use spec::{DynamoOptions, DynamoSpec, TableShape};
pub use table::{DYNAMODB, DynamoTable, DynamoTableFactory, DynamoWriteNode};
pub use writer::{DynamoCommitExec, DynamoWriterExec, WriterReport, dynamo_result_schema};

/// Client-side checks before any item is sent: the table exists and its
/// key schema matches the statement's columns and types. Returns the spec
/// every writer receives.
pub async fn plan_write(
    table: &DynamoTable,
    input_schema: &arrow::datatypes::Schema,
) -> Result<DynamoSpec, String> {
    let client = client::client().await;
    let shape = client::describe(&client, &table.table).await?;
    shape.check(&table.table, input_schema, &table.options)?;
    if let Some(dir) = &table.options.dead_letter
        && url::Url::parse(dir).is_err()
        && !dir.starts_with('/')
    {
        return Err(format!(
            "dead-letter location '{dir}' must be an absolute path or a URL"
        ));
    }
    let budget_hint = shape.budget(&table.options);
    Ok(DynamoSpec {
        table: table.table.clone(),
        write_id: uuid::Uuid::new_v4().simple().to_string(),
        options: table.options.clone(),
        shape,
        budget_hint,
    })
}
