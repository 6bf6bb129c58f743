//! `STORED AS sft`: supervised fine-tuning sets in TRL's two shapes, `messages` (a
//! conversation) or prompt / completion (text or conversations).
//!
//! Columns read: messages, or prompt and completion. `style 'messages'` turns prompt /
//! completion into one conversation (a text prompt is a user turn, a text completion the
//! assistant's); `style 'prompt_completion'` splits a conversation before its last message,
//! which must be the assistant's. Optional prompt_id is kept.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::rows::{self, Columns, Kind, Message, MessagesBuilder, Picks, Shape, Texts};
use crate::error::Result;
use crate::sinks::format::{Converted, Format};
use crate::sinks::options::Options;

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

    /// Reads the columns of a batch.
    pub(crate) fn read(&self, batch: &RecordBatch, format: &str) -> Result<Conversations> {
        Ok(match self {
            Source::Messages => Conversations::Messages(Texts::new(batch, format, "messages")?),
            Source::PromptCompletion(_) => Conversations::PromptCompletion(
                Texts::new(batch, format, "prompt")?,
                Texts::new(batch, format, "completion")?,
            ),
        })
    }
}

/// A batch's conversations, read in place (one per batch).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Conversations {
    Messages(Texts),
    PromptCompletion(Texts, Texts),
}

impl Conversations {
    /// The whole conversation of row `i` (None when a needed column is NULL or it is empty):
    /// a text prompt is a user turn, a text completion the assistant's.
    pub(crate) fn get(&self, i: usize) -> Option<Vec<Message<'_>>> {
        let messages = match self {
            Conversations::Messages(m) => m.messages(i, "user")?,
            Conversations::PromptCompletion(p, c) => {
                let mut m = p.messages(i, "user")?;
                m.extend(c.messages(i, "assistant")?);
                m
            }
        };
        (!messages.is_empty()).then_some(messages)
    }
}

pub struct Sft {
    source: Source,
    to_messages: bool,
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
            schema: rows::schema(fields),
        })
    }
}

impl Format for Sft {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn convert(&mut self, batch: &RecordBatch) -> Result<Converted> {
        let mut picks = Picks::default();
        if let (Source::PromptCompletion(Shape::Text), false) = (&self.source, self.to_messages) {
            let prompt = Texts::new(batch, "sft", "prompt")?;
            let completion = Texts::new(batch, "sft", "completion")?;
            for i in 0..batch.num_rows() {
                if prompt.is_null(i) || completion.is_null(i) {
                    picks.drop("NULL prompt or completion");
                } else {
                    picks.keep(i);
                }
            }
            let kept = picks.indices();
            let columns = [
                rows::reshape(&prompt, Shape::Text, &kept, "user")?,
                rows::reshape(&completion, Shape::Text, &kept, "assistant")?,
            ];
            return picks.into_converted(batch, "sft", &self.schema, columns);
        }
        let conversations = self.source.read(batch, "sft")?;
        let mut messages = MessagesBuilder::new("role", "content");
        let mut completions = MessagesBuilder::new("role", "content");
        for i in 0..batch.num_rows() {
            let Some(m) = conversations.get(i) else {
                picks.drop("NULL or empty conversation");
                continue;
            };
            if self.to_messages {
                messages.push(&m);
            } else {
                let Some((last, prompt)) = m.split_last().filter(|(l, _)| l.0 == "assistant")
                else {
                    picks.drop("last message is not the assistant's");
                    continue;
                };
                messages.push(prompt);
                completions.push(std::slice::from_ref(last));
            }
            picks.keep(i);
        }
        // messages, or prompt (the conversation before its last message) and completion.
        let mut columns = vec![messages.finish()];
        if !self.to_messages {
            columns.push(completions.finish());
        }
        picks.into_converted(batch, "sft", &self.schema, columns)
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
