//! `STORED AS sft`: supervised fine-tuning sets in TRL's two shapes, `messages` (a
//! conversation) or prompt / completion (text or conversations).
//!
//! Columns read: messages, or prompt and completion. `style 'messages'` turns prompt /
//! completion into one conversation (a text prompt is a user turn, a text completion the
//! assistant's); `style 'prompt_completion'` splits a conversation before its last message,
//! which must be the assistant's. Optional prompt_id is kept.

use datafusion::arrow::datatypes::SchemaRef;
use serde_json::Value;

use super::rows::{self, Columns, Kind, Row, Shape};
use super::{Format, Options};
use crate::error::Result;

/// Where a conversation comes from: a messages column, or prompt and completion.
pub(crate) enum Source {
    Messages,
    PromptCompletion(Shape),
}

impl Source {
    /// Checks the columns: messages, or prompt and completion.
    pub(crate) fn plan(c: &Columns, o: &Options) -> Result<Self> {
        if c.has("messages") || !c.has("prompt") {
            c.require(o, "messages", Kind::Conversation)?;
            return Ok(Source::Messages);
        }
        let shapes = [c.shape(o, "prompt")?, c.shape(o, "completion")?];
        Ok(Source::PromptCompletion(
            if shapes.contains(&Shape::Conversation) {
                Shape::Conversation
            } else {
                Shape::Text
            },
        ))
    }

    /// The whole conversation of a row (None when a needed column is NULL or empty).
    pub(crate) fn conversation(&self, row: &Row) -> Option<Vec<Value>> {
        let messages = match self {
            Source::Messages => rows::clean_messages(row.get("messages")?),
            Source::PromptCompletion(_) => {
                if rows::is_null(row, "prompt") || rows::is_null(row, "completion") {
                    return None;
                }
                let mut m = rows::messages(row["prompt"].clone(), "user");
                m.extend(rows::messages(row["completion"].clone(), "assistant"));
                m
            }
        };
        (!messages.is_empty()).then_some(messages)
    }
}

pub struct Sft {
    source: Source,
    to_messages: bool,
    prompt_id: bool,
    schema: SchemaRef,
}

impl Sft {
    pub fn plan(input: &datafusion::arrow::datatypes::Schema, o: &mut Options) -> Result<Self> {
        let c = Columns::new(input);
        let source = Source::plan(&c, o)?;
        let to_messages = match o.take_choice("style", &["messages", "prompt_completion"])? {
            Some("messages") => true,
            Some(_) => false,
            None => matches!(source, Source::Messages),
        };
        let prompt_id = c.optional(o, "prompt_id", Kind::Id)?;
        let mut fields = Vec::new();
        if let Some(t) = &prompt_id {
            fields.push(rows::id_field("prompt_id", t));
        }
        match (&source, to_messages) {
            (_, true) => fields.push(rows::conversation_field("messages")),
            (Source::PromptCompletion(Shape::Text), false) => {
                fields.extend(["prompt", "completion"].map(|c| Shape::Text.field(c)))
            }
            (_, false) => {
                fields.extend(["prompt", "completion"].map(|c| Shape::Conversation.field(c)))
            }
        }
        Ok(Self {
            source,
            to_messages,
            prompt_id: prompt_id.is_some(),
            schema: rows::schema(fields),
        })
    }
}

impl Format for Sft {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn convert(&mut self, mut row: Row, out: &mut Vec<Row>) -> Result<Option<&'static str>> {
        let mut o = Row::new();
        if self.prompt_id {
            o.insert(
                "prompt_id".into(),
                row.remove("prompt_id").unwrap_or(Value::Null),
            );
        }
        match (&self.source, self.to_messages) {
            (Source::PromptCompletion(Shape::Text), false) => {
                if rows::is_null(&row, "prompt") || rows::is_null(&row, "completion") {
                    return Ok(Some("NULL prompt or completion"));
                }
                o.insert("prompt".into(), row.remove("prompt").unwrap_or_default());
                o.insert(
                    "completion".into(),
                    row.remove("completion").unwrap_or_default(),
                );
            }
            (_, to_messages) => {
                let Some(mut messages) = self.source.conversation(&row) else {
                    return Ok(Some("NULL or empty conversation"));
                };
                if to_messages {
                    o.insert("messages".into(), Value::Array(messages));
                } else {
                    if messages.last().and_then(|m| m["role"].as_str()) != Some("assistant") {
                        return Ok(Some("last message is not the assistant's"));
                    }
                    let completion = messages.split_off(messages.len() - 1);
                    o.insert("prompt".into(), Value::Array(messages));
                    o.insert("completion".into(), Value::Array(completion));
                }
            }
        }
        out.push(o);
        Ok(None)
    }

    fn describe(&self) -> String {
        if self.to_messages {
            "Supervised fine-tuning conversations in TRL's conversational language-modeling format: \
             a `messages` list of {role, content}, as `SFTTrainer` reads it."
                .into()
        } else {
            "Supervised fine-tuning pairs in TRL's prompt-completion format, as `SFTTrainer` reads \
             it (the loss is on the completion only by default)."
                .into()
        }
    }
}
