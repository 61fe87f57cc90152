//! Hive-style partitioning: grouping a batch's rows by their partition
//! directory (`k=v/k2=v2`), with values escaped as Hive escapes them and
//! nulls as `__HIVE_DEFAULT_PARTITION__`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::Schema;
use arrow::row::{RowConverter, SortField};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::{DataFusionError, Result};

use super::spec::CHUNK_COLUMN;

/// Hive's directory name for a null partition value.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Indices of the partition columns in `schema`, or an error naming the
/// missing one.
pub(crate) fn partition_key_columns(schema: &Schema, names: &[String]) -> Result<Vec<usize>> {
    names
        .iter()
        .map(|c| {
            schema.index_of(c).map_err(|_| {
                DataFusionError::Plan(format!(
                    "partition column '{c}' is not in the written columns ({})",
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .filter(|n| *n != CHUNK_COLUMN)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        })
        .collect()
}

/// Row indices of `batch` grouped by their Hive directory (`k=v/k2=v2`),
/// or with `values_only` by their values (`v/v2`, Firehose's layout), in
/// first-seen order.
pub(crate) fn group_rows(
    batch: &RecordBatch,
    names: &[String],
    key_columns: &[usize],
    values_only: bool,
) -> Result<Vec<(String, Vec<u32>)>> {
    // Group on the key columns' row encoding (bytes, no allocation per row)
    // and format a Hive directory once per distinct value.
    let keys: Vec<ArrayRef> = key_columns
        .iter()
        .map(|&i| Arc::clone(batch.column(i)))
        .collect();
    let converter = RowConverter::new(
        keys.iter()
            .map(|k| SortField::new(k.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(&keys)?;
    let mut order: Vec<(usize, Vec<u32>)> = Vec::new();
    // Runs once per row on both sides of a skew-aware write: a fast hasher
    // (the keys are the job's own data, not an attacker's).
    let mut index: HashMap<&[u8], usize, foldhash::fast::RandomState> = HashMap::default();
    for row in 0..batch.num_rows() {
        let key = rows.row(row).data();
        match index.get(key) {
            Some(&i) => order[i].1.push(row as u32),
            None => {
                index.insert(key, order.len());
                order.push((row, vec![row as u32]));
            }
        }
    }
    let options = FormatOptions::default();
    let formatters = keys
        .iter()
        .map(|k| ArrayFormatter::try_new(k.as_ref(), &options))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(order
        .into_iter()
        .map(|(first, rows)| {
            let dir = names
                .iter()
                .zip(keys.iter().zip(&formatters))
                .map(|(name, (column, f))| {
                    let value = if column.is_null(first) {
                        NULL_PARTITION.to_string()
                    } else {
                        escape_partition_value(&f.value(first).to_string())
                    };
                    if values_only {
                        value
                    } else {
                        format!("{name}={value}")
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            (dir, rows)
        })
        .collect())
}

/// Escapes what cannot appear in a path segment, the way Hive does.
fn escape_partition_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_control() || "\"#%'*/:=?\\\u{7f}{[]^".contains(c) {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    if out.is_empty() {
        NULL_PARTITION.to_string()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};

    #[test]
    fn rows_group_by_hive_directory() -> Result<()> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    None,
                    Some("a/b"),
                    Some("a"),
                ])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )?;
        let groups = group_rows(&batch, &["k".to_string()], &[0], false)?;
        assert_eq!(
            groups,
            vec![
                ("k=a".to_string(), vec![0, 3]),
                (format!("k={NULL_PARTITION}"), vec![1]),
                ("k=a%2Fb".to_string(), vec![2]),
            ]
        );
        Ok(())
    }
}
