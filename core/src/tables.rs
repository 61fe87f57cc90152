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

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::{Constraints, Result, ToDFSchema};
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
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
        // DataFusion infers a local directory's schema from `*.ext` only, but
        // an object store directory's from every object in it, `_SUCCESS`
        // included: infer it here from the data files instead.
        let mut cmd = cmd.clone();
        if cmd.schema.fields().is_empty()
            && let [location] = cmd.locations.as_slice()
            && let Some(ext) = default_extension(&cmd.file_type)
        {
            let url = ListingTableUrl::parse(location)?;
            if url.is_collection() && !url.is_folder() {
                infer_from_data_files(state, &mut cmd, &url, ext).await?;
            }
        }
        let provider = self.inner.create(state, &cmd).await?;
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
            .with_constraints(
                table
                    .constraints()
                    .cloned()
                    .unwrap_or_else(Constraints::default),
            )
            .with_column_defaults(defaults)
            .with_definition(table.get_table_definition().map(str::to_string));
        Ok(Arc::new(rebuilt))
    }
}

async fn infer_from_data_files(
    state: &dyn Session,
    cmd: &mut CreateExternalTable,
    url: &ListingTableUrl,
    ext: &str,
) -> Result<()> {
    let Some(session) = state.as_any().downcast_ref::<SessionState>() else {
        return Ok(());
    };
    let Some(format) = session.get_file_format_factory(&cmd.file_type) else {
        return Ok(());
    };
    let options =
        ListingOptions::new(format.create(session, &cmd.options)?).with_file_extension(ext);
    let partitions = if cmd.table_partition_cols.is_empty()
        && session
            .config_options()
            .execution
            .listing_table_factory_infer_partitions
    {
        options.infer_partitions(state, url).await?
    } else {
        cmd.table_partition_cols.clone()
    };
    let file_schema = options.infer_schema(state, url).await?;
    let mut fields: Vec<Field> = file_schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    for name in &partitions {
        fields.push(Field::new(
            name,
            DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8)),
            false,
        ));
    }
    let schema = Schema::new_with_metadata(fields, file_schema.metadata().clone());
    cmd.schema = Arc::new(schema.to_dfschema()?);
    cmd.table_partition_cols = partitions;
    Ok(())
}

fn default_extension(file_type: &str) -> Option<&'static str> {
    match file_type.to_ascii_uppercase().as_str() {
        "PARQUET" => Some(".parquet"),
        "CSV" => Some(".csv"),
        "JSON" => Some(".json"),
        "ARROW" => Some(".arrow"),
        _ => None,
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
