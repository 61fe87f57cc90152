//! What a DynamoDB write asks for: the table's options, checked on the
//! client against `DescribeTable` and the statement's columns, then carried
//! unchanged to every writer task.

use std::collections::{BTreeSet, HashMap};

use arrow::datatypes::{DataType, Schema};
use serde::{Deserialize, Serialize};

use super::item;
pub use crate::storage::dynamodb::{CapacityShare, TableShape};

/// `write.percent`: share of the table's write capacity to use.
pub const PERCENT_OPTION: &str = "write.percent";
/// `write.max_units`: an absolute cap in WCU/s (the setting for on-demand tables).
pub const MAX_UNITS_OPTION: &str = "write.max_units";
/// `write.dead_letter`: a directory URL (local or `s3://`) for items that
/// can never be written, as NDJSON with their reason.
pub const DEAD_LETTER_OPTION: &str = "write.dead_letter";
/// `write.max_failed_items`: dead-lettered items tolerated before the job fails.
pub const MAX_FAILED_OPTION: &str = "write.max_failed_items";
/// `write.set_columns`: comma-separated list columns written as SS/NS/BS.
pub const SET_COLUMNS_OPTION: &str = "write.set_columns";
/// `write.max_retry_secs`: how long one batch may be retried in total.
pub const MAX_RETRY_OPTION: &str = "write.max_retry_secs";
/// `write.call_timeout_ms`: the timeout of every DynamoDB call.
pub const CALL_TIMEOUT_OPTION: &str = "write.call_timeout_ms";

const OPTIONS: [&str; 7] = [
    PERCENT_OPTION,
    MAX_UNITS_OPTION,
    DEAD_LETTER_OPTION,
    MAX_FAILED_OPTION,
    SET_COLUMNS_OPTION,
    MAX_RETRY_OPTION,
    CALL_TIMEOUT_OPTION,
];

/// Why a DynamoDB write cannot be planned: a bad option or location, or
/// columns that do not fit the table. Each names what and where.
#[derive(thiserror::Error)]
pub enum SpecError {
    #[error("option '{key}' = '{value}': {reason}")]
    BadOption {
        key: String,
        value: String,
        reason: &'static str,
    },
    #[error("unknown option '{key}' (known: {})", OPTIONS.join(", "))]
    UnknownOption { key: String },
    #[error("location '{0}' must be dynamodb://<table>")]
    NotDynamoLocation(String),
    #[error("'{0}' is not a DynamoDB table name (3-255 of a-z, A-Z, 0-9, _ - .)")]
    BadTableName(String),
    #[error(
        "table '{table}' has key attribute '{name}' ({ty}) but the statement has no column '{name}' (columns: {columns})"
    )]
    MissingKeyColumn {
        table: String,
        name: String,
        ty: String,
        columns: String,
    },
    #[error(
        "key attribute '{name}' of table '{table}' is {ty}, but column '{name}' is {column_type} (DynamoDB {mapped})"
    )]
    KeyType {
        table: String,
        name: String,
        ty: String,
        column_type: DataType,
        mapped: String,
    },
    #[error(
        "key attribute '{name}' of table '{table}' is {ty}, but column '{name}' is {column_type}, which cannot be a key"
    )]
    KeyNotScalar {
        table: String,
        name: String,
        ty: String,
        column_type: DataType,
    },
    #[error("key attribute '{0}' cannot be a set")]
    KeyAsSet(String),
    #[error("table '{table}': {reason}")]
    Columns {
        table: String,
        reason: item::SchemaError,
    },
    #[error("dead-letter location '{0}' must be an absolute path or a URL")]
    DeadLetterLocation(String),
    /// `DescribeTable` failed (missing table, no credentials, unreachable).
    #[error(transparent)]
    Describe(#[from] crate::storage::dynamodb::DynamoError),
}

crate::error::debug_as_display!(SpecError);

/// The options of `CREATE EXTERNAL TABLE ... STORED AS DYNAMODB`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamoOptions {
    pub percent: f64,
    pub max_units: Option<f64>,
    pub dead_letter: Option<String>,
    pub max_failed_items: Option<u64>,
    pub set_columns: BTreeSet<String>,
    pub max_retry_secs: u64,
    pub call_timeout_ms: u64,
}

impl Default for DynamoOptions {
    fn default() -> Self {
        Self {
            // EMR's connector default (`dynamodb.throughput.write.percent`).
            percent: 0.5,
            max_units: None,
            dead_letter: None,
            max_failed_items: None,
            set_columns: BTreeSet::new(),
            max_retry_secs: 300,
            call_timeout_ms: 10_000,
        }
    }
}

impl DynamoOptions {
    /// Parses table options; keys may carry DataFusion's `format.` prefix.
    pub fn parse(raw: &HashMap<String, String>) -> Result<Self, SpecError> {
        let mut o = Self::default();
        for (key, value) in raw {
            let key = key.strip_prefix("format.").unwrap_or(key);
            // `read.*` options belong to the table's read side (the scan).
            if key.starts_with("read.") {
                continue;
            }
            let bad = |reason: &'static str| SpecError::BadOption {
                key: key.to_string(),
                value: value.clone(),
                reason,
            };
            match key {
                PERCENT_OPTION => {
                    o.percent = value.parse().map_err(|_| bad("not a number"))?;
                    // Accept both 0.8 and 80 (%), as users write either.
                    if o.percent > 1.0 {
                        o.percent /= 100.0;
                    }
                    if !(o.percent > 0.0 && o.percent <= 1.0) {
                        return Err(bad("must be in (0, 1] or (0, 100]"));
                    }
                }
                MAX_UNITS_OPTION => {
                    let v: f64 = value.parse().map_err(|_| bad("not a number"))?;
                    if v.is_nan() || v < 1.0 {
                        return Err(bad("must be at least 1"));
                    }
                    o.max_units = Some(v);
                }
                DEAD_LETTER_OPTION => o.dead_letter = Some(value.clone()),
                MAX_FAILED_OPTION => {
                    o.max_failed_items = Some(value.parse().map_err(|_| bad("not a whole number"))?)
                }
                SET_COLUMNS_OPTION => {
                    o.set_columns = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                MAX_RETRY_OPTION => {
                    o.max_retry_secs = value.parse().map_err(|_| bad("not a whole number"))?
                }
                CALL_TIMEOUT_OPTION => {
                    o.call_timeout_ms = value.parse().map_err(|_| bad("not a whole number"))?
                }
                other => {
                    return Err(SpecError::UnknownOption {
                        key: other.to_string(),
                    });
                }
            }
        }
        Ok(o)
    }

    /// The share of the table's capacity these options allow.
    pub fn share(&self) -> CapacityShare {
        CapacityShare {
            percent: self.percent,
            max_units: self.max_units,
        }
    }

    /// Dead-lettered items tolerated: the option, or none at all when
    /// there is nowhere to put them, or any number when there is.
    pub fn failure_tolerance(&self) -> u64 {
        match (self.max_failed_items, &self.dead_letter) {
            (Some(n), _) => n,
            (None, None) => 0,
            (None, Some(_)) => u64::MAX,
        }
    }
}

/// Checks the statement's columns against the key schema and the type
/// mapping; the error names the attribute or column.
pub fn check_shape(
    shape: &TableShape,
    table: &str,
    schema: &Schema,
    options: &DynamoOptions,
) -> Result<(), SpecError> {
    for (name, ty) in &shape.keys {
        let Ok(field) = schema.field_with_name(name) else {
            return Err(SpecError::MissingKeyColumn {
                table: table.to_string(),
                name: name.clone(),
                ty: ty.clone(),
                columns: schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        match item::key_type(field.data_type()) {
            Some(t) if t == ty => {}
            Some(t) => {
                return Err(SpecError::KeyType {
                    table: table.to_string(),
                    name: name.clone(),
                    ty: ty.clone(),
                    column_type: field.data_type().clone(),
                    mapped: t.to_string(),
                });
            }
            None => {
                return Err(SpecError::KeyNotScalar {
                    table: table.to_string(),
                    name: name.clone(),
                    ty: ty.clone(),
                    column_type: field.data_type().clone(),
                });
            }
        }
        if options.set_columns.contains(name) {
            return Err(SpecError::KeyAsSet(name.clone()));
        }
    }
    item::check_schema(schema, &options.set_columns).map_err(|reason| SpecError::Columns {
        table: table.to_string(),
        reason,
    })
}

/// One DynamoDB write, as every writer task receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamoSpec {
    pub table: String,
    pub write_id: String,
    pub options: DynamoOptions,
    pub shape: TableShape,
    /// Budget (WCU/s) when the client planned the write; writers that
    /// cannot reach the coordinator use a share of it.
    pub budget_hint: f64,
}

impl DynamoSpec {
    /// WCU one write of `item` costs: the base table plus every global
    /// secondary index it lands in.
    pub fn wcu(&self, item: &item::Item) -> u64 {
        let indexes = self
            .shape
            .indexes
            .iter()
            .filter(|keys| keys.iter().all(|k| item.attributes.contains_key(k)))
            .count() as u64;
        item.wcu() * (1 + indexes)
    }
}

/// `dynamodb://table` to the table name.
pub fn table_name(location: &str) -> Result<String, SpecError> {
    let name = location
        .strip_prefix("dynamodb://")
        .ok_or_else(|| SpecError::NotDynamoLocation(location.to_string()))?
        .trim_end_matches('/');
    let valid = (3..=255).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(SpecError::BadTableName(name.to_string()));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(wcu: Option<f64>) -> TableShape {
        TableShape {
            keys: vec![("id".into(), "N".into())],
            indexes: vec![],
            provisioned_wcu: wcu,
            on_demand_max: None,
            ..Default::default()
        }
    }

    #[test]
    fn budget_is_percent_of_capacity_capped() -> Result<(), SpecError> {
        let raw = HashMap::from([("format.write.percent".to_string(), "80".to_string())]);
        let o = DynamoOptions::parse(&raw)?;
        assert_eq!(shape(Some(6000.0)).budget(o.share()), 4800.0);
        let o = DynamoOptions {
            max_units: Some(1000.0),
            ..o
        };
        assert_eq!(shape(Some(6000.0)).budget(o.share()), 1000.0);
        assert_eq!(shape(None).budget(o.share()), 1000.0);
        Ok(())
    }

    #[test]
    fn bad_options_are_named() {
        let raw = HashMap::from([("write.precent".to_string(), "1".to_string())]);
        let err = DynamoOptions::parse(&raw)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("write.precent"), "{err}");
        assert!(table_name("s3://x").is_err());
        assert_eq!(
            table_name("dynamodb://events").ok().as_deref(),
            Some("events")
        );
    }
}
