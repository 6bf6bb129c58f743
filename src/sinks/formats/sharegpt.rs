//! `STORED AS sharegpt`: `conversations`, a list of {from, value} with the roles named as
//! ShareGPT-format trainers (LLaMA-Factory, Axolotl) read them: system, human, gpt, tool.
//!
//! Columns read: messages, or prompt and completion (as for `sft`). Optional prompt_id is
//! kept.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::rows::{self, Columns, Kind, MessagesBuilder, Picks};
use super::sft::Source;
use crate::error::Result;
use crate::sinks::format::{Converted, Format};
use crate::sinks::options::Options;

pub struct ShareGpt {
    source: Source,
    schema: SchemaRef,
}

impl ShareGpt {
    pub fn plan(input: &datafusion::arrow::datatypes::Schema, o: &mut Options) -> Result<Self> {
        let c = Columns::new(input);
        let source = Source::plan(&c, o)?;
        let prompt_id = c.optional(o, "prompt_id", Kind::Id)?;
        let mut fields = Vec::new();
        if let Some(t) = &prompt_id {
            fields.push(rows::id_field("prompt_id", t));
        }
        fields.push(rows::message_list_field("conversations", "from", "value"));
        Ok(Self {
            source,
            schema: rows::schema(fields),
        })
    }
}

/// ShareGPT's name for a chat role.
fn from(role: &str) -> Option<&'static str> {
    Some(match role {
        "system" => "system",
        "user" | "human" => "human",
        "assistant" | "gpt" => "gpt",
        "tool" | "ipython" | "observation" => "observation",
        _ => return None,
    })
}

impl Format for ShareGpt {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn convert(&mut self, batch: &RecordBatch) -> Result<Converted> {
        let conversations = self.source.read(batch, "sharegpt")?;
        let mut picks = Picks::default();
        let mut turns = MessagesBuilder::new("from", "value");
        for i in 0..batch.num_rows() {
            let Some(messages) = conversations.get(i) else {
                picks.drop("NULL or empty conversation");
                continue;
            };
            let mut named = Vec::with_capacity(messages.len());
            for (role, content) in messages {
                let Some(name) = from(role) else {
                    return Err(rows::exec_err(
                        "sharegpt",
                        format!("unknown role '{role}' (known: system, user, assistant, tool)"),
                    ));
                };
                named.push((name, content));
            }
            turns.push(&named);
            picks.keep(i);
        }
        picks.into_converted(batch, "sharegpt", &self.schema, [turns.finish()])
    }

    fn describe(&self) -> String {
        "Conversations in the ShareGPT format: `conversations`, a list of {from, value} with from \
         one of system, human, gpt, observation (LLaMA-Factory's `formatting: sharegpt`, Axolotl's \
         `type: sharegpt`)."
            .into()
    }
}
