//! Running a Rust string function over SQL string arguments of any string type.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::ColumnarValue;

/// Casts any string-typed argument (Utf8, LargeUtf8, Utf8View) to a Utf8 array of `rows` rows.
pub fn string_arg(arg: &ColumnarValue, rows: usize) -> Result<StringArray> {
    let array = arg.to_array(rows)?;
    let array = cast(&array, &DataType::Utf8)?;
    Ok(array
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8 gives a StringArray")
        .clone())
}

/// The value of a constant string argument, if the argument is a constant.
pub fn string_scalar(arg: &ColumnarValue) -> Option<Option<String>> {
    match arg {
        ColumnarValue::Scalar(s) => match s.try_as_str() {
            Some(v) => Some(v.map(str::to_string)),
            None if s.is_null() => Some(None),
            None => None,
        },
        ColumnarValue::Array(_) => None,
    }
}

/// Applies `f` row by row to string arguments; a NULL in any argument gives NULL.
/// `f` returns `Ok(None)` for "no result" (also NULL). The result is a scalar when every
/// argument is, so constant folding keeps working.
pub fn map_strings<F>(args: &[ColumnarValue], rows: usize, mut f: F) -> Result<ColumnarValue>
where
    F: FnMut(&[&str]) -> Result<Option<String>>,
{
    let all_scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
    let n = if all_scalar { 1 } else { rows };
    let arrays = args
        .iter()
        .map(|a| string_arg(a, n))
        .collect::<Result<Vec<_>>>()?;
    let mut out: Vec<Option<String>> = Vec::with_capacity(n);
    let mut row: Vec<&str> = Vec::with_capacity(arrays.len());
    for i in 0..n {
        row.clear();
        if arrays.iter().any(|a| a.is_null(i)) {
            out.push(None);
            continue;
        }
        row.extend(arrays.iter().map(|a| a.value(i)));
        out.push(f(&row)?);
    }
    let array: ArrayRef = Arc::new(StringArray::from(out));
    if all_scalar {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
            &array, 0,
        )?))
    } else {
        Ok(ColumnarValue::Array(array))
    }
}

/// Checks that a call has exactly `n` arguments; the message names the function.
pub fn expect_args(name: &str, args: &[ColumnarValue], n: usize) -> Result<()> {
    if args.len() != n {
        return exec_err!("{name}: expected {n} arguments, got {}", args.len());
    }
    Ok(())
}
