//! `sluice_fail_if(cond, message [, marker_path])`: returns `cond`, and fails the
//! task when `cond` is true for any row. With `marker_path` it fails only while
//! that file does not exist (creating it as it fails) and fails with an I/O
//! error, which Ballista treats as retryable: "fail the first attempt, succeed
//! on the retry". Fault tests use it to exercise retries and failed jobs.

use std::io;

use arrow::array::AsArray;
use arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FailIf {
    signature: Signature,
}

impl FailIf {
    pub fn new() -> Self {
        Self {
            signature: Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Boolean, DataType::Utf8]),
                    TypeSignature::Exact(vec![DataType::Boolean, DataType::Utf8, DataType::Utf8]),
                ],
                Volatility::Volatile,
            ),
        }
    }
}

impl Default for FailIf {
    fn default() -> Self {
        Self::new()
    }
}

fn scalar_str(value: &ColumnarValue, what: &str) -> Result<String> {
    match value {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))) => Ok(s.clone()),
        _ => exec_err!("sluice_fail_if: {what} must be a constant string"),
    }
}

impl ScalarUDFImpl for FailIf {
    fn name(&self) -> &str {
        "sluice_fail_if"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let message = scalar_str(&args.args[1], "message")?;
        let marker = args
            .args
            .get(2)
            .map(|m| scalar_str(m, "marker_path"))
            .transpose()?;
        let cond = args.args[0].to_array(args.number_rows)?;
        let hit = cond.as_boolean().iter().any(|v| v == Some(true));
        if hit {
            match marker {
                None => return exec_err!("sluice_fail_if: {message}"),
                Some(path) => {
                    let first = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .is_ok();
                    if first {
                        return Err(DataFusionError::IoError(io::Error::other(format!(
                            "sluice_fail_if (first attempt, marker {path}): {message}"
                        ))));
                    }
                }
            }
        }
        Ok(ColumnarValue::Array(cond))
    }
}
