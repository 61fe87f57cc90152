//! `CREATE EXTERNAL TABLE ... LOCATION 'dir/'` that reads a written directory
//! the way Spark does: only the data files, never `_SUCCESS` manifests,
//! staging or `.crc` side files, Hive partition directories included.
//!
//! DataFusion's listing factory leaves the extension filter empty for a
//! directory, so it would parse sluice's (or Spark's) `_SUCCESS` as Parquet
//! ("Corrupt footer") on S3, and take it for an unpartitioned file next to
//! `k=v/` directories ("mixed partition values"). For a directory location
//! this factory builds the listing table itself, as DataFusion's does, with
//! the format's extension (`.parquet`, `.csv`, ...) as the filter; the
//! extension travels with the table to the scheduler, which lists the files
//! again at planning time. Other locations go to DataFusion's factory.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::{DataFusionError, Result, plan_err};
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::listing_table_factory::ListingTableFactory;
use datafusion::execution::SessionState;
use datafusion::logical_expr::CreateExternalTable;

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
        if let [location] = cmd.locations.as_slice()
            && let Some(ext) = default_extension(&cmd.file_type)
            && let Some(session) = state.as_any().downcast_ref::<SessionState>()
        {
            let url = ListingTableUrl::parse(location)?.with_table_ref(cmd.name.clone());
            if url.is_collection() {
                return directory_table(session, cmd, url, ext).await;
            }
        }
        self.inner.create(state, cmd).await
    }
}

async fn directory_table(
    session: &SessionState,
    cmd: &CreateExternalTable,
    url: ListingTableUrl,
    ext: &str,
) -> Result<Arc<dyn TableProvider>> {
    let format = session
        .get_file_format_factory(&cmd.file_type)
        .ok_or_else(|| DataFusionError::Configuration(format!("no file format {}", cmd.file_type)))?
        .create(session, &cmd.options)?;
    let options = ListingOptions::new(format).with_file_extension(ext);
    let (file_schema, partitions): (SchemaRef, Vec<(String, DataType)>) =
        if cmd.schema.fields().is_empty() {
            let names = if cmd.table_partition_cols.is_empty()
                && session
                    .config_options()
                    .execution
                    .listing_table_factory_infer_partitions
            {
                options.infer_partitions(session, &url).await?
            } else {
                cmd.table_partition_cols.clone()
            };
            let partitions: Vec<(String, DataType)> = names
                .into_iter()
                // Plain strings, not DataFusion's dictionary default: Ballista's
                // shuffle hands dictionary columns back as strings, which then
                // fails the next stage ("RowConverter column schema mismatch").
                .map(|n| (n, DataType::Utf8))
                .collect();
            let inferred = options
                .clone()
                .with_table_partition_cols(partitions.clone())
                .infer_schema(session, &url)
                .await?;
            (inferred, partitions)
        } else {
            let schema = Arc::clone(cmd.schema.inner());
            let mut partitions = vec![];
            for col in &cmd.table_partition_cols {
                let Ok(field) = schema.field_with_name(col) else {
                    return plan_err!("partition column {col} is not in the table's columns");
                };
                partitions.push((field.name().clone(), field.data_type().clone()));
            }
            let fields: Vec<Field> = schema
                .fields()
                .iter()
                .filter(|f| !cmd.table_partition_cols.contains(f.name()))
                .map(|f| f.as_ref().clone())
                .collect();
            let file_schema =
                Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
            (file_schema, partitions)
        };
    let options = options
        .with_table_partition_cols(partitions)
        .with_file_sort_order(cmd.order_exprs.clone());
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(file_schema);
    let table = ListingTable::try_new(config)?
        .with_cache(
            session
                .runtime_env()
                .cache_manager
                .get_file_statistic_cache(),
        )
        .with_definition(cmd.definition.clone())
        .with_constraints(cmd.constraints.clone())
        .with_column_defaults(cmd.column_defaults.clone());
    Ok(Arc::new(table))
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
    state.table_factories_mut().insert(
        crate::sink::dynamo::DYNAMODB.to_string(),
        Arc::new(crate::sink::dynamo::DynamoTableFactory),
    );
}
