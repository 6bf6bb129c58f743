//! `STORED AS sharegpt`: `conversations`, a list of {from, value} with the roles named as
//! ShareGPT-format trainers (LLaMA-Factory, Axolotl) read them: system, human, gpt, tool.
//!
//! Columns read: messages, or prompt and completion (as for `sft`). Optional prompt_id is
//! kept.

use datafusion::arrow::datatypes::SchemaRef;
use serde_json::{Map, Value};

use super::rows::{self, Columns, Kind, Row};
use super::sft::Source;
use super::{Format, Options};
use crate::error::Result;
use datafusion::error::DataFusionError;

pub struct ShareGpt {
    source: Source,
    prompt_id: bool,
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
            prompt_id: prompt_id.is_some(),
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

    fn convert(&mut self, row: Row, out: &mut Vec<Row>) -> Result<Option<&'static str>> {
        let Some(messages) = self.source.conversation(&row) else {
            return Ok(Some("NULL or empty conversation"));
        };
        let mut turns = Vec::with_capacity(messages.len());
        for m in messages {
            let role = m["role"].as_str().unwrap_or_default();
            let Some(name) = from(role) else {
                return Err(DataFusionError::Execution(format!(
                    "sharegpt: unknown role '{role}' (known: system, user, assistant, tool)"
                ))
                .into());
            };
            let mut t = Map::new();
            t.insert("from".into(), Value::String(name.into()));
            t.insert("value".into(), m["content"].clone());
            turns.push(Value::Object(t));
        }
        let mut o = Row::new();
        if self.prompt_id {
            o.insert(
                "prompt_id".into(),
                row.get("prompt_id").cloned().unwrap_or(Value::Null),
            );
        }
        o.insert("conversations".into(), Value::Array(turns));
        out.push(o);
        Ok(None)
    }

    fn describe(&self) -> String {
        "Conversations in the ShareGPT format: `conversations`, a list of {from, value} with from \
         one of system, human, gpt, observation (LLaMA-Factory's `formatting: sharegpt`, Axolotl's \
         `type: sharegpt`)."
            .into()
    }
}
