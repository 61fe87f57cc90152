//! Binary attributes in declared columns. A change record's images show
//! binary as base64 (as DynamoDB's own JSON does, and the `new_image` text
//! keeps it), but Arrow's JSON reader reads `BYTEA` from hex: a base64 value
//! would be refused, or read as other bytes when it happens to be all hex
//! digits (`abcd`). So the declared binary fields of an image are re-encoded
//! as hex before the declared columns are parsed. Everything else is copied
//! as it was written: numbers keep every digit.

use std::collections::HashMap;

use arrow::datatypes::{DataType, Fields};
use serde_json::value::RawValue;

use crate::source::dynamodb::read::{Binary, write_bytes};

/// Whether `fields` hold a binary value anywhere (then images need
/// [`hex_binary`]).
pub fn has_binary(fields: &Fields) -> bool {
    fields.iter().any(|f| binary_inside(f.data_type()))
}

fn binary_inside(t: &DataType) -> bool {
    match t {
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => true,
        DataType::Struct(fields) => has_binary(fields),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            binary_inside(f.data_type())
        }
        _ => false,
    }
}

/// `image` (a JSON object) with the binary values of `fields` as hex, or
/// why it cannot be: a declared binary value that is not base64.
pub fn hex_binary(fields: &Fields, image: &str) -> Result<String, String> {
    let object = match serde_json::from_str::<HashMap<String, &RawValue>>(image) {
        Ok(object) => object,
        // Not an object: the declared columns' parser says why.
        Err(_) => return Ok(image.to_string()),
    };
    match object_hex(fields, &object, "")? {
        Some(text) => Ok(text),
        None => Ok(image.to_string()),
    }
}

/// The object rewritten, or `None` when no value of it changes.
fn object_hex(
    fields: &Fields,
    object: &HashMap<String, &RawValue>,
    path: &str,
) -> Result<Option<String>, String> {
    let mut changed: HashMap<&str, String> = HashMap::new();
    for field in fields.iter() {
        let Some(raw) = object.get(field.name().as_str()) else {
            continue;
        };
        let at = if path.is_empty() {
            field.name().to_string()
        } else {
            format!("{path}.{}", field.name())
        };
        if let Some(text) = value_hex(field.data_type(), raw, &at)? {
            changed.insert(field.name().as_str(), text);
        }
    }
    if changed.is_empty() {
        return Ok(None);
    }
    let mut out = String::from("{");
    for (i, (key, raw)) in object.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::String(key.clone()).to_string());
        out.push(':');
        match changed.get(key.as_str()) {
            Some(text) => out.push_str(text),
            None => out.push_str(raw.get()),
        }
    }
    out.push('}');
    Ok(Some(out))
}

fn value_hex(t: &DataType, raw: &RawValue, at: &str) -> Result<Option<String>, String> {
    if !binary_inside(t) {
        return Ok(None);
    }
    match t {
        DataType::Struct(fields) => {
            match serde_json::from_str::<HashMap<String, &RawValue>>(raw.get()) {
                Ok(object) => object_hex(fields, &object, at),
                Err(_) => Ok(None),
            }
        }
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else {
                return Ok(None);
            };
            let mut out = String::from("[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match value_hex(f.data_type(), item, &format!("{at}[{i}]"))? {
                    Some(text) => out.push_str(&text),
                    None => out.push_str(item.get()),
                }
            }
            out.push(']');
            Ok(Some(out))
        }
        _ => {
            // A null or a non-string is left to the parser to judge.
            let Ok(text) = serde_json::from_str::<String>(raw.get()) else {
                return Ok(None);
            };
            let bytes = aws_smithy_types::base64::decode(&text)
                .map_err(|_| format!("field {at}: the binary value is not base64"))?;
            let mut hex = String::with_capacity(2 + 2 * bytes.len());
            write_bytes(&bytes, &mut hex, Binary::Hex);
            Ok(Some(hex))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;
    use std::sync::Arc;

    fn fields(list: Vec<Field>) -> Fields {
        Fields::from(list)
    }

    #[test]
    fn base64_becomes_hex_and_numbers_keep_their_digits() {
        let f = fields(vec![
            Field::new("blob", DataType::Binary, true),
            Field::new("n", DataType::Decimal128(38, 0), true),
        ]);
        assert!(has_binary(&f));
        // "abcd" is base64 of 0x69 0xb7 0x1d, and also valid hex: Arrow
        // alone would read it as 0xab 0xcd.
        let out = hex_binary(
            &f,
            r#"{"blob":"abcd","n":12345678901234567890123456789012345678}"#,
        )
        .unwrap_or_default();
        let parsed: HashMap<String, Box<RawValue>> = serde_json::from_str(&out).unwrap_or_default();
        assert_eq!(parsed.get("blob").map(|r| r.get()), Some("\"69b71d\""));
        assert_eq!(
            parsed.get("n").map(|r| r.get()),
            Some("12345678901234567890123456789012345678")
        );
    }

    #[test]
    fn nested_binary_is_converted_and_bad_base64_is_named() {
        let inner = Field::new("b", DataType::Binary, true);
        let f = fields(vec![
            Field::new(
                "s",
                DataType::Struct(Fields::from(vec![inner.clone()])),
                true,
            ),
            Field::new("l", DataType::List(Arc::new(inner)), true),
        ]);
        let out = hex_binary(&f, r#"{"s":{"b":"AAE="},"l":["/w==",null]}"#).unwrap_or_default();
        assert!(out.contains(r#""s":{"b":"0001"}"#), "{out}");
        assert!(out.contains(r#""l":["ff",null]"#), "{out}");
        let bad = hex_binary(&f, r#"{"s":{"b":"not base64!"}}"#).err();
        assert_eq!(
            bad.as_deref(),
            Some("field s.b: the binary value is not base64")
        );
    }

    #[test]
    fn images_without_declared_binary_are_left_alone() {
        let f = fields(vec![Field::new("x", DataType::Utf8, true)]);
        assert!(!has_binary(&f));
        assert_eq!(
            hex_binary(&f, r#"{"x":"abcd"}"#).as_deref(),
            Ok(r#"{"x":"abcd"}"#)
        );
    }
}
