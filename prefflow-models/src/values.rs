//! Arrow values as template values, so `render` and chat templates see SQL rows as plain
//! Jinja data: structs become maps (field order kept), lists become sequences.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::Result;
use minijinja::Value;

/// Row `i` of `array` as a template value; NULL becomes `none`.
pub fn to_template_value(array: &dyn Array, i: usize) -> Result<Value> {
    if array.is_null(i) {
        return Ok(Value::from(()));
    }
    use DataType::*;
    Ok(match array.data_type() {
        Boolean => Value::from(array.as_boolean().value(i)),
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 => {
            let v = datafusion::arrow::compute::cast(&array.slice(i, 1), &Int64)?;
            Value::from(
                v.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .value(0),
            )
        }
        UInt64 => Value::from(
            array
                .as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
                .value(i),
        ),
        Float32 => Value::from(array.as_primitive::<Float32Type>().value(i) as f64),
        Float64 => Value::from(array.as_primitive::<Float64Type>().value(i)),
        Utf8 => Value::from(array.as_string::<i32>().value(i)),
        LargeUtf8 => Value::from(array.as_string::<i64>().value(i)),
        Utf8View => Value::from(array.as_string_view().value(i)),
        List(_) => seq(array.as_list::<i32>().value(i).as_ref())?,
        LargeList(_) => seq(array.as_list::<i64>().value(i).as_ref())?,
        FixedSizeList(_, _) => seq(array.as_fixed_size_list().value(i).as_ref())?,
        Struct(fields) => {
            let s = array.as_struct();
            let mut pairs = Vec::with_capacity(fields.len());
            for (field, column) in fields.iter().zip(s.columns()) {
                pairs.push((field.name().clone(), to_template_value(column.as_ref(), i)?));
            }
            Value::from_iter(pairs)
        }
        // Dates, decimals, timestamps: their SQL text form is what a prompt wants.
        _ => {
            let formatter = ArrayFormatter::try_new(array, &FormatOptions::default())?;
            Value::from(formatter.value(i).to_string())
        }
    })
}

fn seq(values: &dyn Array) -> Result<Value> {
    (0..values.len())
        .map(|j| to_template_value(values, j))
        .collect::<Result<Vec<_>>>()
        .map(Value::from)
}

/// Names a row by the start of its text, which a user can search for in the input (a batch's
/// row index means nothing outside the engine): `the row "What is the capital of Fr…"`.
pub fn row_label(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut prefix: String = flat.chars().take(40).collect();
    if flat.chars().count() > 40 {
        prefix.push('…');
    }
    format!("the row {prefix:?}")
}
