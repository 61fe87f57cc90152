//! Arrow rows to DynamoDB items: the type mapping, checked once per schema
//! so an unsupported column fails the statement before any item is sent,
//! and DynamoDB's item-size rules, which decide both the 400 KB limit and
//! the write capacity units an item costs.

use std::collections::{BTreeSet, HashMap};

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryArray, GenericListArray, MapArray, OffsetSizeTrait,
    StructArray,
};
use arrow::datatypes::{
    DataType, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

/// DynamoDB's item size limit.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// One item ready to send, with what it costs.
#[derive(Debug, Clone)]
pub struct Item {
    pub attributes: HashMap<String, AttributeValue>,
    /// Size by DynamoDB's rules (names plus values).
    pub bytes: usize,
}

impl Item {
    /// Write capacity units for one write of this item to the base table.
    pub fn wcu(&self) -> u64 {
        self.bytes.div_ceil(1024).max(1) as u64
    }
}

/// Why a row could not become an item; the row goes to the dead-letter
/// location with this reason.
#[derive(thiserror::Error)]
pub enum ItemError {
    #[error("key attribute '{0}' is null")]
    NullKey(String),
    #[error("column '{column}': {reason}")]
    Column { column: String, reason: ValueError },
}

crate::error::debug_as_display!(ItemError);

/// Why a column's type, or one of its values, has no DynamoDB form.
#[derive(thiserror::Error)]
pub enum ValueError {
    #[error("no DynamoDB type for {0}")]
    NoType(DataType),
    #[error("only lists can be written as sets, not {0}")]
    NotAList(DataType),
    #[error("a set needs string, number or binary elements, not {0}")]
    SetElement(DataType),
    #[error("map keys must be strings")]
    MapKeyType,
    #[error("map keys must be non-null strings")]
    MapKey,
    #[error("malformed map")]
    MalformedMap,
    #[error("{0} is not a number DynamoDB can store")]
    NotANumber(String),
    #[error("{0} is not a time")]
    NotATime(DataType),
    #[error("{0} cannot be a set")]
    NotASet(DataType),
    #[error("a set cannot hold null")]
    NullInSet,
    #[error("not a fixed-size binary array")]
    NotFixedBinary,
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

crate::error::debug_as_display!(ValueError);

/// A table's columns that cannot be written.
#[derive(thiserror::Error)]
pub enum SchemaError {
    #[error("column '{column}' ({data_type}): {reason}")]
    Column {
        column: String,
        data_type: DataType,
        reason: ValueError,
    },
    #[error("set column '{0}' is not a column of the table")]
    MissingSetColumn(String),
}

crate::error::debug_as_display!(SchemaError);

/// Checks that every column of `schema` maps to a DynamoDB type; the error
/// names the first column that does not. `sets` are columns written as
/// string, number or binary sets instead of lists.
pub fn check_schema(
    schema: &arrow::datatypes::Schema,
    sets: &BTreeSet<String>,
) -> Result<(), SchemaError> {
    for field in schema.fields() {
        let as_set = sets.contains(field.name());
        check_type(field.data_type(), as_set).map_err(|reason| SchemaError::Column {
            column: field.name().clone(),
            data_type: field.data_type().clone(),
            reason,
        })?;
    }
    for set in sets {
        if schema.field_with_name(set).is_err() {
            return Err(SchemaError::MissingSetColumn(set.clone()));
        }
    }
    Ok(())
}

fn check_type(dt: &DataType, as_set: bool) -> Result<(), ValueError> {
    use DataType::*;
    if as_set {
        return match dt {
            List(f) | LargeList(f) | FixedSizeList(f, _) => match f.data_type() {
                t if is_string(t) || is_number(t) || is_binary(t) => Ok(()),
                other => Err(ValueError::SetElement(other.clone())),
            },
            other => Err(ValueError::NotAList(other.clone())),
        };
    }
    match dt {
        Null | Boolean => Ok(()),
        t if is_string(t) || is_number(t) || is_binary(t) => Ok(()),
        Date32 | Date64 | Timestamp(_, _) => Ok(()),
        List(f) | LargeList(f) | FixedSizeList(f, _) => check_type(f.data_type(), false),
        Struct(fields) => fields
            .iter()
            .try_for_each(|f| check_type(f.data_type(), false)),
        Map(entries, _) => match entries.data_type() {
            Struct(kv) if kv.len() == 2 => {
                if !is_string(kv[0].data_type()) {
                    return Err(ValueError::MapKeyType);
                }
                check_type(kv[1].data_type(), false)
            }
            _ => Err(ValueError::MalformedMap),
        },
        Dictionary(_, value) => check_type(value, false),
        other => Err(ValueError::NoType(other.clone())),
    }
}

fn is_string(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

fn is_binary(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
    )
}

fn is_number(dt: &DataType) -> bool {
    dt.is_integer()
        || dt.is_floating()
        || matches!(dt, DataType::Decimal128(..) | DataType::Decimal256(..))
}

/// The DynamoDB scalar type (`S`, `N`, `B`) an Arrow key column maps to.
pub fn key_type(dt: &DataType) -> Option<&'static str> {
    match dt {
        t if is_string(t) => Some("S"),
        t if is_number(t) => Some("N"),
        t if is_binary(t) => Some("B"),
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => Some("S"),
        DataType::Dictionary(_, v) => key_type(v),
        _ => None,
    }
}

/// Turns a batch into items, one result per row. Null attributes are
/// written as `NULL`, except that nulls in key attributes are an error.
pub fn batch_to_items(
    batch: &RecordBatch,
    sets: &BTreeSet<String>,
    keys: &[String],
) -> Result<Vec<Result<Item, ItemError>>, SchemaError> {
    let schema = batch.schema();
    let columns: Vec<(String, ArrayRef, bool)> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| {
            let col = match c.data_type() {
                DataType::Dictionary(_, v) => {
                    arrow::compute::cast(c, v).map_err(|e| SchemaError::Column {
                        column: f.name().clone(),
                        data_type: c.data_type().clone(),
                        reason: ValueError::Arrow(e),
                    })?
                }
                _ => c.clone(),
            };
            Ok((f.name().clone(), col, sets.contains(f.name())))
        })
        .collect::<Result<_, SchemaError>>()?;
    let mut items = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        items.push(row_to_item(&columns, row, keys));
    }
    Ok(items)
}

fn row_to_item(
    columns: &[(String, ArrayRef, bool)],
    row: usize,
    keys: &[String],
) -> Result<Item, ItemError> {
    let mut attributes = HashMap::with_capacity(columns.len());
    let mut bytes = 0;
    for (name, col, as_set) in columns {
        if col.is_null(row) && keys.iter().any(|k| k == name) {
            return Err(ItemError::NullKey(name.clone()));
        }
        let value = if *as_set {
            set_value(col, row).map_err(|reason| ItemError::Column {
                column: name.clone(),
                reason,
            })?
        } else {
            Some(value_at(col, row).map_err(|reason| ItemError::Column {
                column: name.clone(),
                reason,
            })?)
        };
        // An empty set cannot be stored: the attribute is left out.
        if let Some(value) = value {
            bytes += name.len() + value_size(&value);
            attributes.insert(name.clone(), value);
        }
    }
    Ok(Item { attributes, bytes })
}

fn number(text: String) -> Result<AttributeValue, ValueError> {
    if text.contains("NaN") || text.contains("inf") {
        return Err(ValueError::NotANumber(text));
    }
    Ok(AttributeValue::N(text))
}

fn float(v: f64) -> Result<AttributeValue, ValueError> {
    if !v.is_finite() {
        return Err(ValueError::NotANumber(v.to_string()));
    }
    Ok(AttributeValue::N(v.to_string()))
}

/// One cell as an attribute value.
pub fn value_at(col: &ArrayRef, row: usize) -> Result<AttributeValue, ValueError> {
    use DataType::*;
    if col.is_null(row) {
        return Ok(AttributeValue::Null(true));
    }
    Ok(match col.data_type() {
        Null => AttributeValue::Null(true),
        Boolean => AttributeValue::Bool(col.as_boolean().value(row)),
        Int8 => AttributeValue::N(col.as_primitive::<Int8Type>().value(row).to_string()),
        Int16 => AttributeValue::N(col.as_primitive::<Int16Type>().value(row).to_string()),
        Int32 => AttributeValue::N(col.as_primitive::<Int32Type>().value(row).to_string()),
        Int64 => AttributeValue::N(col.as_primitive::<Int64Type>().value(row).to_string()),
        UInt8 => AttributeValue::N(col.as_primitive::<UInt8Type>().value(row).to_string()),
        UInt16 => AttributeValue::N(col.as_primitive::<UInt16Type>().value(row).to_string()),
        UInt32 => AttributeValue::N(col.as_primitive::<UInt32Type>().value(row).to_string()),
        UInt64 => AttributeValue::N(col.as_primitive::<UInt64Type>().value(row).to_string()),
        Float16 => float(col.as_primitive::<Float16Type>().value(row).to_f64())?,
        Float32 => float(f64::from(col.as_primitive::<Float32Type>().value(row)))?,
        Float64 => float(col.as_primitive::<Float64Type>().value(row))?,
        Decimal128(_, _) | Decimal256(_, _) => number(format_cell(col, row)?)?,
        Utf8 => AttributeValue::S(col.as_string::<i32>().value(row).to_string()),
        LargeUtf8 => AttributeValue::S(col.as_string::<i64>().value(row).to_string()),
        Utf8View => AttributeValue::S(col.as_string_view().value(row).to_string()),
        Binary => AttributeValue::B(Blob::new(col.as_binary::<i32>().value(row))),
        LargeBinary => AttributeValue::B(Blob::new(col.as_binary::<i64>().value(row))),
        BinaryView => AttributeValue::B(Blob::new(col.as_binary_view().value(row))),
        FixedSizeBinary(_) => AttributeValue::B(Blob::new(
            col.as_any()
                .downcast_ref::<FixedSizeBinaryArray>()
                .ok_or(ValueError::NotFixedBinary)?
                .value(row),
        )),
        // Dates and times as ISO 8601 text, which sorts like the time.
        Date32 | Date64 | Timestamp(_, _) => AttributeValue::S(iso_time(col, row)?),
        List(_) => list(col.as_list::<i32>(), row)?,
        LargeList(_) => list(col.as_list::<i64>(), row)?,
        FixedSizeList(_, _) => {
            let values = col.as_fixed_size_list().value(row);
            AttributeValue::L(
                (0..values.len())
                    .map(|i| value_at(&values, i))
                    .collect::<Result<_, _>>()?,
            )
        }
        Struct(_) => {
            let s: &StructArray = col.as_struct();
            let mut m = HashMap::with_capacity(s.num_columns());
            for (field, child) in s.fields().iter().zip(s.columns()) {
                m.insert(field.name().clone(), value_at(child, row)?);
            }
            AttributeValue::M(m)
        }
        Map(_, _) => {
            let map: &MapArray = col.as_map();
            let entries = map.value(row);
            let keys = entries.column(0);
            let values = entries.column(1);
            let mut m = HashMap::with_capacity(entries.len());
            for i in 0..entries.len() {
                let AttributeValue::S(key) = value_at(keys, i)? else {
                    return Err(ValueError::MapKey);
                };
                m.insert(key, value_at(values, i)?);
            }
            AttributeValue::M(m)
        }
        Dictionary(_, v) => {
            let cast = arrow::compute::cast(col, v)?;
            value_at(&cast, row)?
        }
        other => return Err(ValueError::NoType(other.clone())),
    })
}

fn list<O: OffsetSizeTrait>(
    col: &GenericListArray<O>,
    row: usize,
) -> Result<AttributeValue, ValueError> {
    let values = col.value(row);
    Ok(AttributeValue::L(
        (0..values.len())
            .map(|i| value_at(&values, i))
            .collect::<Result<_, _>>()?,
    ))
}

fn list_values(col: &ArrayRef, row: usize) -> Result<ArrayRef, ValueError> {
    Ok(match col.data_type() {
        DataType::List(_) => col.as_list::<i32>().value(row),
        DataType::LargeList(_) => col.as_list::<i64>().value(row),
        DataType::FixedSizeList(_, _) => col.as_fixed_size_list().value(row),
        other => return Err(ValueError::NotASet(other.clone())),
    })
}

/// A list cell as `SS`, `NS` or `BS`; `None` for a null or empty list
/// (DynamoDB has no empty set). Duplicates are dropped, as a set would.
fn set_value(col: &ArrayRef, row: usize) -> Result<Option<AttributeValue>, ValueError> {
    if col.is_null(row) {
        return Ok(None);
    }
    let values = list_values(col, row)?;
    let mut scalars = Vec::with_capacity(values.len());
    for i in 0..values.len() {
        if values.is_null(i) {
            return Err(ValueError::NullInSet);
        }
        scalars.push(value_at(&values, i)?);
    }
    if scalars.is_empty() {
        return Ok(None);
    }
    let dt = values.data_type();
    Ok(Some(if is_string(dt) {
        let set: BTreeSet<String> = scalars
            .into_iter()
            .filter_map(|v| v.as_s().ok().cloned())
            .collect();
        AttributeValue::Ss(set.into_iter().collect())
    } else if is_number(dt) {
        let set: BTreeSet<String> = scalars
            .into_iter()
            .filter_map(|v| v.as_n().ok().cloned())
            .collect();
        AttributeValue::Ns(set.into_iter().collect())
    } else {
        let set: BTreeSet<Vec<u8>> = scalars
            .into_iter()
            .filter_map(|v| v.as_b().ok().map(|b| b.as_ref().to_vec()))
            .collect();
        AttributeValue::Bs(set.into_iter().map(Blob::new).collect())
    }))
}

fn format_cell(col: &ArrayRef, row: usize) -> Result<String, ValueError> {
    let options = FormatOptions::default();
    let formatter = ArrayFormatter::try_new(col.as_ref(), &options)?;
    Ok(formatter.value(row).to_string())
}

fn iso_time(col: &ArrayRef, row: usize) -> Result<String, ValueError> {
    // Arrow's display is ISO 8601 with a `T` for timestamps and plain
    // `YYYY-MM-DD` for dates, at the column's precision.
    match col.data_type() {
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => format_cell(col, row),
        other => Err(ValueError::NotATime(other.clone())),
    }
}

/// Item size of a value by DynamoDB's rules: strings and binaries by their
/// length, numbers by significant digits, one byte for booleans and null,
/// three bytes plus one per element (and the names) for lists and maps.
pub fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => number_size(n),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::L(l) => 3 + l.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, v)| 1 + k.len() + value_size(v))
                .sum::<usize>()
        }
        AttributeValue::Ss(s) => s.iter().map(String::len).sum(),
        AttributeValue::Ns(n) => n.iter().map(|n| number_size(n)).sum(),
        AttributeValue::Bs(b) => b.iter().map(|b| b.as_ref().len()).sum(),
        _ => 0,
    }
}

fn number_size(n: &str) -> usize {
    let digits = n
        .trim_start_matches('-')
        .split(['e', 'E'])
        .next()
        .unwrap_or_default()
        .replace('.', "");
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
    significant.div_ceil(2) + 1
}

/// A stable text for an item's primary key, used to find duplicate keys
/// inside one batch (a BatchWriteItem may not name a key twice).
pub fn key_text(item: &Item, keys: &[String]) -> String {
    let mut text = String::new();
    for k in keys {
        match item.attributes.get(k) {
            Some(AttributeValue::S(s)) => text.push_str(&format!("S{}:{s}\u{1}", s.len())),
            Some(AttributeValue::N(n)) => text.push_str(&format!("N{}\u{1}", normalize_number(n))),
            Some(AttributeValue::B(b)) => text.push_str(&format!("B{:?}\u{1}", b.as_ref())),
            other => text.push_str(&format!("?{other:?}\u{1}")),
        }
    }
    text
}

fn normalize_number(n: &str) -> String {
    n.parse::<f64>()
        .map_or_else(|_| n.to_string(), |v| v.to_string())
}

/// For the JSON dead-letter records: the item as DynamoDB's JSON.
pub fn to_json(attributes: &HashMap<String, AttributeValue>) -> serde_json::Value {
    serde_json::Value::Object(
        attributes
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &AttributeValue) -> serde_json::Value {
    use serde_json::json;
    match v {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::B(b) => json!({ "B": base64(b.as_ref()) }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Null(_) => json!({ "NULL": true }),
        AttributeValue::L(l) => json!({ "L": l.iter().map(value_json).collect::<Vec<_>>() }),
        AttributeValue::M(m) => json!({ "M": to_json(m) }),
        AttributeValue::Ss(s) => json!({ "SS": s }),
        AttributeValue::Ns(n) => json!({ "NS": n }),
        AttributeValue::Bs(b) => {
            json!({ "BS": b.iter().map(|b| base64(b.as_ref())).collect::<Vec<_>>() })
        }
        _ => serde_json::Value::Null,
    }
}

fn base64(bytes: &[u8]) -> String {
    use aws_smithy_types::base64::encode;
    encode(bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, ListArray, StringArray};
    use arrow::datatypes::{Field, Int32Type, Schema, TimeUnit};

    use super::*;

    #[test]
    fn sizes_follow_dynamodb_rules() {
        assert_eq!(value_size(&AttributeValue::S("abc".into())), 3);
        assert_eq!(value_size(&AttributeValue::N("12345".into())), 4);
        assert_eq!(value_size(&AttributeValue::N("-0.0012".into())), 2);
        assert_eq!(value_size(&AttributeValue::Bool(true)), 1);
        assert_eq!(
            value_size(&AttributeValue::L(vec![AttributeValue::S("ab".into())])),
            6
        );
    }

    #[test]
    fn rows_become_items_and_sets() -> Result<(), Box<dyn std::error::Error>> {
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(3), Some(1), Some(3)]),
            Some(vec![]),
        ]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("tags", list.data_type().clone(), true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(7), None])),
                Arc::new(StringArray::from(vec![Some("x"), None])),
                Arc::new(list),
            ],
        )
        .map_err(|e| e.to_string())?;
        let sets: BTreeSet<String> = ["tags".to_string()].into();
        let items = batch_to_items(&batch, &sets, &["id".into()])?;
        let first = items[0].as_ref().map_err(|e| e.to_string())?;
        assert_eq!(first.attributes["id"], AttributeValue::N("7".into()));
        assert_eq!(
            first.attributes["tags"],
            AttributeValue::Ns(vec!["1".into(), "3".into()])
        );
        assert_eq!(
            items[1].as_ref().err().map(ToString::to_string).as_deref(),
            Some("key attribute 'id' is null")
        );
        Ok(())
    }

    #[test]
    fn structs_and_maps_become_maps() -> Result<(), Box<dyn std::error::Error>> {
        use arrow::array::{MapBuilder, StringBuilder, StructArray};
        let s = StructArray::from(vec![(
            Arc::new(Field::new("n", DataType::Int64, true)),
            Arc::new(Int64Array::from(vec![5])) as ArrayRef,
        )]);
        let mut m = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        m.keys().append_value("a");
        m.values().append_value("b");
        m.append(true).map_err(|e| e.to_string())?;
        let m = m.finish();
        let s: ArrayRef = Arc::new(s);
        let m: ArrayRef = Arc::new(m);
        let AttributeValue::M(got) = value_at(&s, 0)? else {
            return Err("struct is not M".into());
        };
        assert_eq!(got["n"], AttributeValue::N("5".into()));
        let AttributeValue::M(got) = value_at(&m, 0)? else {
            return Err("map is not M".into());
        };
        assert_eq!(got["a"], AttributeValue::S("b".into()));
        Ok(())
    }

    #[test]
    fn unsupported_types_name_the_column() {
        let schema = Schema::new(vec![Field::new(
            "span",
            DataType::Duration(TimeUnit::Second),
            true,
        )]);
        let err = check_schema(&schema, &BTreeSet::new())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("column 'span'"), "{err}");
    }
}
