//! The result cache's contract: keys, values and the store they live in.
//!
//! A model call's key is a BLAKE3 hash of everything its result depends on: the cache format
//! and prefflow version, the SQL function, the model's identity (a hash of its weight,
//! tokenizer and config files, its CREATE MODEL options and the device), the return type, the
//! constant arguments (options structs, n) and the row's own arguments. Rows are seeded by
//! their content (never by position or batch), so a key always names one result. A value is
//! the row's result as one-row Arrow IPC, checked against the expected type when read back.
//! The store itself (an embedded database) belongs to the engine: see [`ResultStore`].

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::Result;
use datafusion::logical_expr::ColumnarValue;

/// A key: 32 bytes of BLAKE3.
pub type Key = [u8; 32];

/// Bumped whenever keys or values change meaning; old entries then simply miss.
pub const FORMAT: &str = "prefflow-result-cache-v1";

/// Where results are kept: get and put many at once, each in one transaction. Implementations
/// must be safe for several processes sharing one store.
pub trait ResultStore: Send + Sync + std::fmt::Debug {
    /// The values of `keys`, None where absent. Unless `writable`, nothing is created or
    /// changed on disk (`prefflow.cache = 'read'`).
    fn get_many(&self, keys: &[Key], writable: bool) -> Result<Vec<Option<Vec<u8>>>, String>;
    /// Stores `entries` durably (committed before returning).
    fn put_many(&self, entries: &[(Key, Vec<u8>)]) -> Result<(), String>;
    /// Where the store lives, for messages.
    fn location(&self) -> String;
}

/// `SET prefflow.cache = 'off' | 'read' | 'readwrite'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Neither read nor written.
    Off,
    /// Reused, never written.
    Read,
    /// Reused, and new results written as each batch completes.
    ReadWrite,
}

impl CacheMode {
    /// The setting's value for this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Read => "read",
            Self::ReadWrite => "readwrite",
        }
    }

    /// Parses the setting; the error names it and its values.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "off" | "false" | "none" => Ok(Self::Off),
            "read" | "readonly" | "read_only" => Ok(Self::Read),
            "readwrite" | "read_write" | "on" | "true" => Ok(Self::ReadWrite),
            other => Err(format!(
                "prefflow.cache must be 'off', 'read' or 'readwrite', got '{other}'"
            )),
        }
    }
}

/// A key under construction: the parts every row of a call shares.
#[derive(Clone)]
pub struct KeyPrefix(blake3::Hasher);

impl KeyPrefix {
    /// The shared part of a call's keys.
    pub fn new(
        function: &str,
        model: &Key,
        return_type: &DataType,
        constants: &[&ColumnarValue],
    ) -> Result<Self> {
        let mut h = blake3::Hasher::new();
        for part in [FORMAT, env!("CARGO_PKG_VERSION"), function] {
            field(&mut h, part.as_bytes());
        }
        field(&mut h, model);
        field(&mut h, return_type.to_string().as_bytes());
        for c in constants {
            let array = c.to_array(1)?;
            let rows = encode_rows(&[array])?;
            field(&mut h, rows.row(0).as_ref());
        }
        Ok(Self(h))
    }

    /// One key per row of `columns` (the per-row arguments).
    pub fn keys(&self, columns: &[ArrayRef], rows: usize) -> Result<Vec<Key>> {
        if columns.is_empty() {
            let k = *self.0.finalize().as_bytes();
            return Ok(vec![k; rows]);
        }
        // Text is text whichever Arrow type carries it (Parquet gives Utf8View, JSON Utf8).
        let columns = columns
            .iter()
            .map(|c| match c.data_type() {
                DataType::Utf8View | DataType::LargeUtf8 => {
                    datafusion::arrow::compute::cast(c, &DataType::Utf8)
                }
                _ => Ok(c.clone()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let encoded = encode_rows(&columns)?;
        Ok((0..rows)
            .map(|i| {
                let mut h = self.0.clone();
                field(&mut h, encoded.row(i).as_ref());
                *h.finalize().as_bytes()
            })
            .collect())
    }
}

/// Length-prefixed, so that parts cannot run into each other.
pub(crate) fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// Arrow's row format: one unambiguous byte string per row for any type (nested included).
fn encode_rows(columns: &[ArrayRef]) -> Result<datafusion::arrow::row::Rows> {
    let fields = columns
        .iter()
        .map(|c| SortField::new(c.data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields)?;
    Ok(converter.convert_columns(columns)?)
}

/// A one-row array as IPC bytes.
pub fn encode_value(value: &ArrayRef) -> Result<Vec<u8>> {
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new(
        "v",
        value.data_type().clone(),
        true,
    )]));
    let batch = RecordBatch::try_new(std::sync::Arc::clone(&schema), vec![value.clone()])?;
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &schema)?;
    w.write(&batch)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

/// A value written by [`encode_value`], if it is one row of `expected`; None for anything
/// else (a damaged or foreign entry is recomputed, never trusted).
pub fn decode_value(bytes: &[u8], expected: &DataType) -> Option<ArrayRef> {
    let mut reader = StreamReader::try_new(bytes, None).ok()?;
    let batch = reader.next()?.ok()?;
    if batch.num_columns() != 1 || batch.num_rows() != 1 {
        return None;
    }
    let column = batch.column(0);
    (column.data_type() == expected).then(|| column.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float32Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn values_round_trip_and_foreign_bytes_are_refused() {
        let v: ArrayRef = Arc::new(StringArray::from(vec![Some("an answer")]));
        let bytes = encode_value(&v).unwrap();
        assert_eq!(
            decode_value(&bytes, &DataType::Utf8).unwrap().as_ref(),
            v.as_ref()
        );
        // A value of another type, or damaged bytes, is a miss.
        assert!(decode_value(&bytes, &DataType::Float32).is_none());
        assert!(decode_value(&bytes[..bytes.len() / 2], &DataType::Utf8).is_none());
        assert!(decode_value(b"not arrow", &DataType::Utf8).is_none());
    }

    #[test]
    fn keys_depend_on_every_part() {
        let model = [7u8; 32];
        let opts = ColumnarValue::Scalar(datafusion::common::ScalarValue::Int64(Some(4)));
        let other = ColumnarValue::Scalar(datafusion::common::ScalarValue::Int64(Some(5)));
        let rows: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a"),
            Some("b"),
            Some("a"),
            None,
        ]));
        let p = KeyPrefix::new("ai_generate", &model, &DataType::Utf8, &[&opts]).unwrap();
        let k = p.keys(std::slice::from_ref(&rows), 4).unwrap();
        assert_eq!(k[0], k[2]);
        assert_ne!(k[0], k[1]);
        assert_ne!(k[0], k[3]);
        let keys_of = |f: &str, m: [u8; 32], t: DataType, c: &ColumnarValue| {
            KeyPrefix::new(f, &m, &t, &[c])
                .unwrap()
                .keys(std::slice::from_ref(&rows), 4)
                .unwrap()[0]
        };
        assert_ne!(k[0], keys_of("ai_embed", model, DataType::Utf8, &opts));
        assert_ne!(
            k[0],
            keys_of("ai_generate", [8u8; 32], DataType::Utf8, &opts)
        );
        assert_ne!(
            k[0],
            keys_of("ai_generate", model, DataType::LargeUtf8, &opts)
        );
        assert_ne!(k[0], keys_of("ai_generate", model, DataType::Utf8, &other));
        let floats: ArrayRef = Arc::new(Float32Array::from(vec![1.0]));
        assert!(encode_value(&floats).is_ok());
    }
}
