//! `STORED AS DYNAMODB` tables, written and read: the sink's table
//! (`sink::dynamo`) given the rate-limited scan (`source::dynamodb`) as its
//! reader. Joined here, above both, so neither depends on the other; the
//! `write.*` options go to the sink, the `read.*` ones to the scan.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::CreateExternalTable;

use crate::sink::dynamo::{DynamoOptions, DynamoTable, DynamoTableFactory};
use crate::source::dynamodb::{ScanOptions, ScanTable, ScanTableSpec};
use crate::source::kafka::Declared;

#[derive(Debug, Default)]
pub struct DynamoDbFactory;

#[async_trait]
impl TableProviderFactory for DynamoDbFactory {
    async fn create(
        &self,
        _state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let mut table = DynamoTableFactory::build(cmd)?;
        let options = ScanOptions::parse(&cmd.name.to_string(), &cmd.options)
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        let declared = Declared::from_command(cmd, &[], "DynamoDB")?;
        let reader = ScanTable::try_new(ScanTableSpec {
            table: table.table.clone(),
            options,
            declared,
        })?;
        table.reader = Some(Arc::new(reader));
        Ok(Arc::new(table))
    }
}

/// The read side of `table`, to travel in a plan.
pub fn scan_spec(table: &DynamoTable) -> Option<ScanTableSpec> {
    table
        .reader
        .as_ref()
        .and_then(|r| r.downcast_ref::<ScanTable>())
        .map(|r| r.spec.clone())
}

/// A table rebuilt from its read side (on the scheduler, for planning a read).
pub fn from_scan_spec(spec: ScanTableSpec) -> Result<DynamoTable> {
    let reader = ScanTable::try_new(spec)?;
    Ok(DynamoTable {
        table: reader.spec.table.clone(),
        options: DynamoOptions::default(),
        schema: reader.schema(),
        reader: Some(Arc::new(reader)),
    })
}
