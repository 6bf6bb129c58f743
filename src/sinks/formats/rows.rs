//! Columns read in place from Arrow arrays, column checks, and builders for the written
//! columns. A format never turns rows into objects: it reads the input arrays, decides per row
//! (keep, drop and why, split into two), and builds its output with `take` / `interleave` of
//! the input arrays, or with list builders where it reshapes text into conversations.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, ListArray, NullBufferBuilder, RecordBatch, StringArray,
    StringBuilder, StructArray, UInt32Array,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use datafusion::arrow::json::writer::{JsonArray, WriterBuilder};
use datafusion::error::DataFusionError;
use serde_json::Value;

use crate::error::Result;
use crate::sinks::format::Converted;
use crate::sinks::options::Options;

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

impl Shape {
    /// The written field of a column of this shape.
    pub fn field(self, name: &str) -> Field {
        match self {
            Shape::Text => text_field(name),
            Shape::Conversation => conversation_field(name),
        }
    }
}

/// A sink error at run time, naming the format.
pub fn exec_err(format: &str, message: impl std::fmt::Display) -> crate::error::PrefflowError {
    DataFusionError::Execution(format!("{format}: {message}")).into()
}

fn column<'b>(batch: &'b RecordBatch, format: &str, name: &str) -> Result<&'b ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| exec_err(format, format!("the input lost column '{name}'")))
}

/// A column cast to `to` (a no-op when it already is).
pub fn cast_column(
    batch: &RecordBatch,
    format: &str,
    name: &str,
    to: &DataType,
) -> Result<ArrayRef> {
    Ok(cast(column(batch, format, name)?, to).map_err(DataFusionError::from)?)
}

/// One message: role and content (a NULL field reads as empty, as trainers see it).
pub type Message<'a> = (&'a str, &'a str);

/// A text-or-conversation input column, read in place (one per column and batch, so the
/// variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
pub enum Texts {
    Text(StringArray),
    Conversation {
        offsets: OffsetBuffer<i32>,
        nulls: Option<NullBuffer>,
        /// A NULL message reads as one with empty role and content.
        item_nulls: Option<NullBuffer>,
        roles: StringArray,
        contents: StringArray,
    },
}

impl Texts {
    /// Reads `name` of `batch` (text of any string type, or a list of structs with role and
    /// content); the strings are cast to Utf8 once per batch.
    pub fn new(batch: &RecordBatch, format: &str, name: &str) -> Result<Self> {
        let array = column(batch, format, name)?;
        let utf8 = |a: &ArrayRef| -> Result<StringArray> {
            Ok(cast(a, &DataType::Utf8)
                .map_err(DataFusionError::from)?
                .as_string::<i32>()
                .clone())
        };
        if is_text(array.data_type()) {
            return Ok(Texts::Text(utf8(array)?));
        }
        let list: ListArray = match array.data_type() {
            DataType::List(_) => array.as_list::<i32>().clone(),
            DataType::LargeList(item) => cast(array, &DataType::List(Arc::clone(item)))
                .map_err(DataFusionError::from)?
                .as_list::<i32>()
                .clone(),
            other => {
                return Err(exec_err(
                    format,
                    format!(
                        "column '{name}' must be text or a list of {{role, content}} structs, got {other}"
                    ),
                ));
            }
        };
        let items = list.values().as_struct_opt().ok_or_else(|| {
            exec_err(format, format!("column '{name}' must be a list of structs"))
        })?;
        let field = |f: &str| -> Result<StringArray> {
            let a = items
                .column_by_name(f)
                .ok_or_else(|| exec_err(format, format!("column '{name}' has no '{f}' field")))?;
            utf8(a)
        };
        Ok(Texts::Conversation {
            offsets: list.offsets().clone(),
            nulls: list.nulls().cloned(),
            item_nulls: items.nulls().cloned(),
            roles: field("role")?,
            contents: field("content")?,
        })
    }

    pub fn is_null(&self, i: usize) -> bool {
        match self {
            Texts::Text(a) => a.is_null(i),
            Texts::Conversation { nulls, .. } => nulls.as_ref().is_some_and(|n| n.is_null(i)),
        }
    }

    /// The text of row `i` (None when NULL or a conversation).
    pub fn text(&self, i: usize) -> Option<&str> {
        match self {
            Texts::Text(a) => (!a.is_null(i)).then(|| a.value(i)),
            Texts::Conversation { .. } => None,
        }
    }

    /// Row `i` as messages: text is one message of `role`; None when NULL.
    pub fn messages<'s>(&'s self, i: usize, role: &'static str) -> Option<Vec<Message<'s>>> {
        if self.is_null(i) {
            return None;
        }
        Some(match self {
            Texts::Text(a) => vec![(role, a.value(i))],
            Texts::Conversation {
                offsets,
                item_nulls,
                roles,
                contents,
                ..
            } => {
                let read = |a: &'s StringArray, j: usize| -> &'s str {
                    if a.is_null(j) || item_nulls.as_ref().is_some_and(|n| n.is_null(j)) {
                        ""
                    } else {
                        a.value(j)
                    }
                };
                (offsets[i] as usize..offsets[i + 1] as usize)
                    .map(|j| (read(roles, j), read(contents, j)))
                    .collect()
            }
        })
    }

    /// Row `i` for an error message: the text, or the messages as JSON.
    pub fn describe(&self, i: usize) -> String {
        match (self.text(i), self.messages(i, "user")) {
            (Some(t), _) => t.to_string(),
            (None, Some(m)) => serde_json::Value::from(
                m.iter()
                    .map(|(r, c)| serde_json::json!({"role": r, "content": c}))
                    .collect::<Vec<_>>(),
            )
            .to_string(),
            (None, None) => "NULL".into(),
        }
    }

    /// Whether rows `i` of two columns hold the same text, or the same messages.
    pub fn same(&self, i: usize, other: &Texts) -> bool {
        match (self, other) {
            (Texts::Text(a), Texts::Text(b)) => a.value(i) == b.value(i),
            (Texts::Conversation { .. }, Texts::Conversation { .. }) => {
                self.messages(i, "") == other.messages(i, "")
            }
            _ => false,
        }
    }

    /// Appends row `i` to `out` in the output's shape (text of a conversational set becomes a
    /// `role` turn); a NULL row stays NULL.
    pub fn write(&self, i: usize, role: &'static str, out: &mut Output) {
        match out {
            Output::Text(b) => b.append_option(self.text(i)),
            Output::Conversation(b) => match self.messages(i, role) {
                Some(m) => b.push(&m),
                None => b.push_null(),
            },
        }
    }

    /// The Utf8 array of a text column (None for a conversation).
    pub fn text_array(&self) -> Option<&StringArray> {
        match self {
            Texts::Text(a) => Some(a),
            Texts::Conversation { .. } => None,
        }
    }
}

/// A written text-or-conversation column being built (one per column and batch).
#[allow(clippy::large_enum_variant)]
pub enum Output {
    Text(StringBuilder),
    Conversation(MessagesBuilder),
}

impl Output {
    pub fn new(shape: Shape) -> Self {
        match shape {
            Shape::Text => Output::Text(StringBuilder::new()),
            Shape::Conversation => Output::Conversation(MessagesBuilder::new("role", "content")),
        }
    }

    pub fn finish(self) -> ArrayRef {
        match self {
            Output::Text(mut b) => Arc::new(b.finish()),
            Output::Conversation(b) => b.finish(),
        }
    }
}

/// A column of the shape `shape` taking the rows `rows` of `input`: text is a `take`, text
/// turned into conversations is built.
pub fn reshape(
    input: &Texts,
    shape: Shape,
    rows: &UInt32Array,
    role: &'static str,
) -> Result<ArrayRef> {
    if let (Shape::Text, Some(a)) = (shape, input.text_array()) {
        return Ok(take(a, rows, None).map_err(DataFusionError::from)?);
    }
    let mut out = Output::new(shape);
    for i in rows.values() {
        input.write(*i as usize, role, &mut out);
    }
    Ok(out.finish())
}

/// Builds a list of two-string structs ({role, content}, or ShareGPT's {from, value}).
pub struct MessagesBuilder {
    names: [&'static str; 2],
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
    keys: StringBuilder,
    values: StringBuilder,
}

impl MessagesBuilder {
    pub fn new(key: &'static str, value: &'static str) -> Self {
        Self {
            names: [key, value],
            offsets: vec![0],
            nulls: NullBufferBuilder::new(0),
            keys: StringBuilder::new(),
            values: StringBuilder::new(),
        }
    }

    pub fn push(&mut self, messages: &[Message<'_>]) {
        for (k, v) in messages {
            self.keys.append_value(k);
            self.values.append_value(v);
        }
        self.offsets.push(self.keys.len() as i32);
        self.nulls.append_non_null();
    }

    pub fn push_null(&mut self) {
        self.offsets.push(self.keys.len() as i32);
        self.nulls.append_null();
    }

    pub fn finish(mut self) -> ArrayRef {
        let fields = Fields::from(vec![
            Field::new(self.names[0], DataType::Utf8, true),
            Field::new(self.names[1], DataType::Utf8, true),
        ]);
        let items = StructArray::new(
            fields.clone(),
            vec![Arc::new(self.keys.finish()), Arc::new(self.values.finish())],
            None,
        );
        let item: FieldRef = Arc::new(Field::new("item", DataType::Struct(fields), true));
        Arc::new(ListArray::new(
            item,
            OffsetBuffer::new(self.offsets.into()),
            Arc::new(items),
            self.nulls.finish(),
        ))
    }
}

/// The rows of a batch's `name` column as JSON values (explicit nulls), for split keys of
/// columns that are not text: the key is the value's JSON, as it always was.
pub fn json_values(batch: &RecordBatch, name: &str) -> Result<Vec<Value>> {
    let Some(array) = batch.column_by_name(name) else {
        return Ok(vec![Value::Null; batch.num_rows()]);
    };
    let one = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            name,
            array.data_type().clone(),
            true,
        )])),
        vec![Arc::clone(array)],
    )
    .map_err(DataFusionError::from)?;
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, JsonArray>(Vec::new());
    writer.write(&one).map_err(DataFusionError::from)?;
    writer.finish().map_err(DataFusionError::from)?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<serde_json::Map<String, Value>> = serde_json::from_slice(&bytes)
        .map_err(|e| DataFusionError::Execution(format!("sink: reading rows: {e}")))?;
    Ok(rows
        .into_iter()
        .map(|mut r| r.remove(name).unwrap_or(Value::Null))
        .collect())
}

/// Characters of each row's text, of every message's content (or ShareGPT value), or the
/// number of ids; None for NULL rows and other types.
pub fn lengths(array: &dyn Array) -> Vec<Option<usize>> {
    let n = array.len();
    match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            (0..n)
                .map(|i| (!a.is_null(i)).then(|| a.value(i).chars().count()))
                .collect()
        }
        DataType::List(item) => {
            let list = array.as_list::<i32>();
            let offsets = list.offsets();
            let contents = match item.data_type() {
                DataType::Struct(_) => {
                    let s = list.values().as_struct();
                    s.column_by_name("content")
                        .or_else(|| s.column_by_name("value"))
                        .and_then(|c| c.as_string_opt::<i32>().cloned())
                }
                _ => None,
            };
            (0..n)
                .map(|i| {
                    if list.is_null(i) {
                        return None;
                    }
                    let range = offsets[i] as usize..offsets[i + 1] as usize;
                    Some(match &contents {
                        Some(c) => range
                            .filter(|&j| !c.is_null(j))
                            .map(|j| c.value(j).chars().count())
                            .sum(),
                        None => range.len(),
                    })
                })
                .collect()
        }
        _ => vec![None; n],
    }
}

/// The input rows a format keeps (in output order; one may repeat) and the reasons of those
/// it drops.
#[derive(Default)]
pub(crate) struct Picks {
    pub rows: Vec<u32>,
    pub dropped: Vec<&'static str>,
}

impl Picks {
    pub fn keep(&mut self, i: usize) {
        self.rows.push(i as u32);
    }

    pub fn drop(&mut self, reason: &'static str) {
        self.dropped.push(reason);
    }

    /// The kept rows as `take` indices.
    pub fn indices(&self) -> UInt32Array {
        UInt32Array::from(self.rows.clone())
    }

    /// The written columns: the kept rows' prompt_id first where the format writes one (every
    /// format puts it first), then the format's own `columns` in schema order.
    pub fn into_converted(
        self,
        batch: &RecordBatch,
        format: &str,
        schema: &SchemaRef,
        columns: impl IntoIterator<Item = ArrayRef>,
    ) -> Result<Converted> {
        let mut all = Vec::with_capacity(schema.fields().len());
        if let Some(field) = schema.fields().first().filter(|f| f.name() == "prompt_id") {
            all.push(take_column(batch, format, field, &self.indices())?);
        }
        all.extend(columns);
        Ok(Converted {
            columns: all,
            sources: self.rows,
            dropped: self.dropped,
        })
    }
}

/// The kept rows of an input column, cast to its written type.
pub(crate) fn take_column(
    batch: &RecordBatch,
    format: &str,
    field: &datafusion::arrow::datatypes::Field,
    rows: &UInt32Array,
) -> Result<ArrayRef> {
    let a = cast_column(batch, format, field.name(), field.data_type())?;
    Ok(datafusion::arrow::compute::take(&a, rows, None).map_err(DataFusionError::from)?)
}
