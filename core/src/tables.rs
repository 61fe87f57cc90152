//! `CREATE EXTERNAL TABLE ... LOCATION 'dir/'` that reads a written directory
//! the way Spark does: only the data files, never `_SUCCESS` manifests or
//! `.crc` side files.
//!
//! DataFusion's listing factory leaves the extension filter empty for a
//! directory, so it would parse sluice's (or Spark's) `_SUCCESS` as Parquet
//! and fail with "Corrupt footer". This factory delegates to DataFusion's and,
//! when that left the filter empty, rebuilds the table with the format's own
//! extension (`.parquet`, `.csv`, ...). The extension travels with the table
//! to the scheduler, which lists the files again at planning time.

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::{Constraints, Result};
use datafusion::datasource::listing::{ListingTable, ListingTableConfig};
use datafusion::datasource::listing_table_factory::ListingTableFactory;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{CreateExternalTable, Expr};

/// The formats whose `STORED AS` goes through [`DataFilesFactory`].
const FORMATS: [&str; 4] = ["PARQUET", "CSV", "JSON", "ARROW"];

#[derive(Debug, Default)]
pub struct DataFilesFactory {
    inner: ListingTableFactory,
}

#[async_trait]
impl TableProviderFactory for DataFilesFactory {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let provider = self.inner.create(state, cmd).await?;
        let Some(table) = provider.downcast_ref::<ListingTable>() else {
            return Ok(provider);
        };
        if !table.options().file_extension.is_empty() {
            return Ok(provider);
        }
        let options = table.options().clone();
        let extension = options.format.get_ext();
        let table_schema = table.schema();
        let file_fields = table_schema.fields().len() - options.table_partition_cols.len();
        let file_schema: SchemaRef = Arc::new(Schema::new_with_metadata(
            table_schema.fields()[..file_fields].to_vec(),
            table_schema.metadata().clone(),
        ));
        let defaults = table_schema
            .fields()
            .iter()
            .filter_map(|f| {
                table
                    .get_column_default(f.name())
                    .map(|e| (f.name().clone(), e.clone()))
            })
            .collect::<std::collections::HashMap<String, Expr>>();
        let config = ListingTableConfig::new_with_multi_paths(table.table_paths().clone())
            .with_listing_options(options.with_file_extension(extension))
            .with_schema(file_schema);
        let rebuilt = ListingTable::try_new(config)?
            .with_constraints(table.constraints().cloned().unwrap_or_else(Constraints::default))
            .with_column_defaults(defaults)
            .with_definition(table.get_table_definition().map(str::to_string));
        Ok(Arc::new(rebuilt))
    }
}

/// Installs [`DataFilesFactory`] for every file format on a session state.
pub fn install_table_factories(state: &mut SessionState) {
    let factory: Arc<dyn TableProviderFactory> = Arc::new(DataFilesFactory::default());
    for format in FORMATS {
        state
            .table_factories_mut()
            .insert(format.to_string(), Arc::clone(&factory));
    }
}
