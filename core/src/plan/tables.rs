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

use crate::source::json_lines::{JsonLinesSpec, JsonLinesTable};

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
            if JsonLinesSpec::wanted(cmd) {
                let files = match session
                    .config()
                    .get_extension::<BatchFiles>()
                    .and_then(|b| b.files(url.as_str()).map(<[String]>::to_vec))
                {
                    Some(files) => files,
                    None if url.is_collection() => {
                        crate::source::json_lines::list_files(state, &url).await?
                    }
                    None => vec![url.as_str().to_string()],
                };
                let spec = JsonLinesSpec::from_command(cmd, files)?;
                return Ok(Arc::new(JsonLinesTable::try_new(spec)?));
            }
            if url.is_collection() {
                if let Some(batch) = session.config().get_extension::<BatchFiles>()
                    && let Some(files) = batch.files(url.as_str())
                {
                    return batch_table(session, cmd, url, ext, files).await;
                }
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

/// The files each streaming directory table reads in one micro-batch, by
/// directory URL (set on the client's session by `stream` for the batch).
/// A directory table created while this is set reads exactly those files.
#[derive(Debug, Default, Clone)]
pub struct BatchFiles {
    by_location: std::collections::HashMap<String, Vec<String>>,
}

impl BatchFiles {
    /// The canonical key of a directory location, as the factory sees it.
    pub fn key(location: &str) -> Result<String> {
        Ok(ListingTableUrl::parse(location)?.as_str().to_string())
    }

    /// The batch reads `files` (full URLs) from the directory at `location`.
    pub fn insert(&mut self, location: &str, files: Vec<String>) -> Result<()> {
        self.by_location.insert(Self::key(location)?, files);
        Ok(())
    }

    fn files(&self, key: &str) -> Option<&[String]> {
        self.by_location.get(key).map(Vec::as_slice)
    }
}

/// A streaming directory table for one batch: a listing table over the
/// batch's files, so the plan (which travels to the scheduler with its
/// paths) reads nothing else.
async fn batch_table(
    session: &SessionState,
    cmd: &CreateExternalTable,
    dir: ListingTableUrl,
    ext: &str,
    files: &[String],
) -> Result<Arc<dyn TableProvider>> {
    if !cmd.table_partition_cols.is_empty() {
        return plan_err!(
            "{}: a streaming file source reads its files' own columns; PARTITIONED BY is not supported",
            cmd.name
        );
    }
    let format = session
        .get_file_format_factory(&cmd.file_type)
        .ok_or_else(|| DataFusionError::Configuration(format!("no file format {}", cmd.file_type)))?
        .create(session, &cmd.options)?;
    let declared = (!cmd.schema.fields().is_empty()).then(|| Arc::clone(cmd.schema.inner()));
    let config = if files.is_empty() {
        // Nothing new in this source this batch (another source has input):
        // the directory under an extension no file has reads no rows, and
        // keeps the table's schema.
        let options = ListingOptions::new(format).with_file_extension(".sluice-no-new-files");
        let schema = match declared {
            Some(s) => s,
            None => {
                ListingOptions::new(Arc::clone(&options.format))
                    .with_file_extension(ext)
                    .infer_schema(session, &dir)
                    .await?
            }
        };
        ListingTableConfig::new(dir)
            .with_listing_options(options)
            .with_schema(schema)
    } else {
        let urls = files
            .iter()
            .map(ListingTableUrl::parse)
            .collect::<Result<Vec<_>>>()?;
        let options = ListingOptions::new(format).with_file_extension(ext);
        let config = ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options);
        match declared {
            Some(s) => config.with_schema(s),
            None => config.infer_schema(session).await?,
        }
    };
    let table = ListingTable::try_new(config)?.with_definition(cmd.definition.clone());
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
        crate::source::kafka::KAFKA.to_string(),
        Arc::new(crate::source::kafka::KafkaTableFactory),
    );
    for kind in [
        crate::source::shards::Kind::DynamodbStream,
        crate::source::shards::Kind::Kinesis,
    ] {
        let name = match kind {
            crate::source::shards::Kind::DynamodbStream => crate::source::shards::DYNAMODB_STREAM,
            crate::source::shards::Kind::Kinesis => crate::source::shards::KINESIS,
        };
        state.table_factories_mut().insert(
            name.to_string(),
            Arc::new(crate::source::shards::ShardTableFactory(kind)),
        );
    }
    state.table_factories_mut().insert(
        crate::sink::dynamo::DYNAMODB.to_string(),
        Arc::new(super::dynamodb::DynamoDbFactory),
    );
}
