//! Rows as JSON objects (how TRL documents its formats), column checks, and the Arrow types
//! of the written columns.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::writer::{JsonArray, WriterBuilder};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use serde_json::{Map, Value};

use super::Options;
use crate::error::Result;

/// One row: column name → value (NULL columns may be absent).
pub type Row = Map<String, Value>;

/// The rows of a batch as JSON objects.
pub fn from_batch(batch: &RecordBatch) -> Result<Vec<Row>> {
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, JsonArray>(Vec::new());
    writer.write(batch).map_err(DataFusionError::from)?;
    writer.finish().map_err(DataFusionError::from)?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| DataFusionError::Execution(format!("sink: reading rows: {e}")).into())
}

/// JSON objects as a batch of `schema`.
pub fn to_batch(schema: &SchemaRef, rows: &[Row]) -> Result<RecordBatch> {
    let mut decoder = ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(rows.len().max(1))
        .build_decoder()
        .map_err(DataFusionError::from)?;
    decoder.serialize(rows).map_err(DataFusionError::from)?;
    Ok(decoder
        .flush()
        .map_err(DataFusionError::from)?
        .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(schema))))
}

/// The text a value is split and compared by: a string itself, anything else its JSON.
pub fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What a text-or-conversation column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A string.
    Text,
    /// A list of {role, content} structs.
    Conversation,
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
}

fn is_conversation(t: &DataType) -> bool {
    match t {
        DataType::List(f) | DataType::LargeList(f) => match f.data_type() {
            DataType::Struct(fields) => ["role", "content"].iter().all(|name| {
                fields
                    .iter()
                    .any(|f| f.name() == name && is_text(f.data_type()))
            }),
            _ => false,
        },
        _ => false,
    }
}

/// The input's columns, for checks that name what is missing or mistyped.
pub struct Columns<'a> {
    schema: &'a Schema,
}

impl<'a> Columns<'a> {
    pub fn new(schema: &'a Schema) -> Self {
        Self { schema }
    }

    pub fn has(&self, name: &str) -> bool {
        self.schema.field_with_name(name).is_ok()
    }

    fn names(&self) -> String {
        self.schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn field(&self, o: &Options, name: &str) -> Result<&Field> {
        self.schema.field_with_name(name).map_err(|_| {
            o.err(format!(
                "missing required column '{name}' (the query has: {})",
                self.names()
            ))
        })
    }

    /// A required text or conversation column.
    pub fn shape(&self, o: &Options, name: &str) -> Result<Shape> {
        let t = self.field(o, name)?.data_type();
        if is_text(t) {
            Ok(Shape::Text)
        } else if is_conversation(t) {
            Ok(Shape::Conversation)
        } else {
            Err(o.err(format!(
                "column '{name}' must be text or a list of {{role, content}} structs, got {t}"
            )))
        }
    }

    /// A required column of the given kind.
    pub fn require(&self, o: &Options, name: &str, kind: Kind) -> Result<DataType> {
        let t = self.field(o, name)?.data_type().clone();
        if kind.accepts(&t) {
            Ok(t)
        } else {
            Err(o.err(format!(
                "column '{name}' must be {}, got {t}",
                kind.describe()
            )))
        }
    }

    /// An optional column of the given kind: None when absent, an error when mistyped.
    pub fn optional(&self, o: &Options, name: &str, kind: Kind) -> Result<Option<DataType>> {
        if self.has(name) {
            self.require(o, name, kind).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Column kinds a format asks for.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Number,
    Integer,
    Boolean,
    /// A scalar id: a string or an integer.
    Id,
    Conversation,
}

impl Kind {
    fn accepts(self, t: &DataType) -> bool {
        match self {
            Kind::Number => t.is_numeric(),
            Kind::Integer => t.is_integer(),
            Kind::Boolean => *t == DataType::Boolean,
            Kind::Id => t.is_integer() || is_text(t),
            Kind::Conversation => is_conversation(t),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Number => "a number",
            Kind::Integer => "an integer",
            Kind::Boolean => "a boolean",
            Kind::Id => "a string or an integer",
            Kind::Conversation => "a list of {role, content} structs",
        }
    }
}

/// A written id column keeps the input's kind: Int64 for integers, Utf8 for text.
pub fn id_field(name: &str, input: &DataType) -> Field {
    let t = if input.is_integer() {
        DataType::Int64
    } else {
        DataType::Utf8
    };
    Field::new(name, t, true)
}

pub fn text_field(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

/// A list of {role, content}, the conversational shape TRL reads.
pub fn conversation_field(name: &str) -> Field {
    message_list_field(name, "role", "content")
}

/// A list of two-string structs (ShareGPT's {from, value}).
pub fn message_list_field(name: &str, key: &str, value: &str) -> Field {
    let item = DataType::Struct(Fields::from(vec![
        Field::new(key, DataType::Utf8, true),
        Field::new(value, DataType::Utf8, true),
    ]));
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", item, true))),
        true,
    )
}

pub fn ids_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
        true,
    )
}

pub fn schema(fields: Vec<Field>) -> SchemaRef {
    Arc::new(Schema::new(fields))
}

/// A value as a conversation: text becomes one turn of `role`, and messages keep only their
/// role and content.
pub fn messages(v: Value, role: &str) -> Vec<Value> {
    match v {
        Value::String(s) => vec![message(role, &s)],
        other => clean_messages(&other),
    }
}

impl Shape {
    /// The written field of a column of this shape.
    pub fn field(self, name: &str) -> Field {
        match self {
            Shape::Text => text_field(name),
            Shape::Conversation => conversation_field(name),
        }
    }

    /// A value written in this shape (text of a conversational set becomes a `role` turn).
    pub fn value(self, v: Value, role: &str) -> Value {
        match self {
            Shape::Text => v,
            Shape::Conversation => Value::Array(messages(v, role)),
        }
    }
}

/// One {role, content} message.
pub fn message(role: &str, content: &str) -> Value {
    let mut m = Map::new();
    m.insert("role".into(), Value::String(role.into()));
    m.insert("content".into(), Value::String(content.into()));
    Value::Object(m)
}

/// Only the role and content of each message (other struct fields are dropped).
pub fn clean_messages(v: &Value) -> Vec<Value> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    message(
                        m.get("role").and_then(Value::as_str).unwrap_or_default(),
                        m.get("content").and_then(Value::as_str).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// True for NULL or absent.
pub fn is_null(row: &Row, name: &str) -> bool {
    row.get(name).is_none_or(Value::is_null)
}

/// Characters of text, or of every message's content.
pub fn text_len(v: &Value) -> Option<usize> {
    match v {
        Value::String(s) => Some(s.chars().count()),
        Value::Array(items) if items.iter().all(Value::is_object) => Some(
            items
                .iter()
                .filter_map(|m| m.get("content").or_else(|| m.get("value")))
                .filter_map(Value::as_str)
                .map(|s| s.chars().count())
                .sum(),
        ),
        Value::Array(items) => Some(items.len()),
        _ => None,
    }
}
