//! Reading embedding columns (FixedSizeList or List of Float32 / Float64) as f32 rows.

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type};
use datafusion::common::{Result, exec_err};

/// Is this type an embedding column?
pub fn is_vector_type(t: &DataType) -> bool {
    match t {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => {
            f.data_type().is_floating() || f.data_type().is_integer()
        }
        DataType::Null => true,
        _ => false,
    }
}

/// The rows of an embedding column; None for NULL rows. Every non-NULL row must have the
/// same length.
pub fn vectors(function: &str, array: &ArrayRef) -> Result<Vec<Option<Vec<f32>>>> {
    let mut out = Vec::with_capacity(array.len());
    let mut width: Option<usize> = None;
    for i in 0..array.len() {
        if array.is_null(i) {
            out.push(None);
            continue;
        }
        let row: ArrayRef = match array.data_type() {
            DataType::FixedSizeList(_, _) => array.as_fixed_size_list().value(i),
            DataType::List(_) => array.as_list::<i32>().value(i),
            DataType::LargeList(_) => array.as_list::<i64>().value(i),
            DataType::Null => {
                out.push(None);
                continue;
            }
            other => {
                return exec_err!(
                    "{function}: expected an embedding (a list of numbers), got {other}"
                );
            }
        };
        let row = cast(&row, &DataType::Float32)?;
        let values = row.as_primitive::<Float32Type>();
        if values.null_count() > 0 {
            return exec_err!("{function}: row {i}: an embedding must not contain NULL values");
        }
        let v = values.values().to_vec();
        match width {
            None => width = Some(v.len()),
            Some(w) if w != v.len() => {
                return exec_err!(
                    "{function}: embeddings differ in length ({w} and {})",
                    v.len()
                );
            }
            _ => {}
        }
        out.push(Some(v));
    }
    Ok(out)
}

/// Cosine similarity; 0 when either vector is all zeros.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Squared Euclidean distance.
pub fn distance2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}
