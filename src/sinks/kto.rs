//! `STORED AS kto`: TRL's unpaired preference format, prompt / completion / label.
//!
//! Columns read: prompt and completion (text or conversations) with a boolean label, or a
//! paired set (prompt, chosen, rejected), which is unpaired into a desirable and an
//! undesirable row as TRL's `unpair_preference_dataset` does. Optional prompt_id is kept.
//! `style 'pmpo'` writes the label as +1 / -1 (positive / negative samples, as PMPO's
//! weighting reads them) instead of true / false.

use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use serde_json::Value;

use super::rows::{self, Columns, Kind, Row, Shape};
use super::{Format, Options};
use crate::error::Result;

pub struct Kto {
    paired: bool,
    shape: Shape,
    pmpo: bool,
    prompt_id: bool,
    schema: SchemaRef,
}

impl Kto {
    pub fn plan(input: &datafusion::arrow::datatypes::Schema, o: &mut Options) -> Result<Self> {
        let c = Columns::new(input);
        let prompt = c.shape(o, "prompt")?;
        let paired = !c.has("completion") && c.has("chosen");
        let answers = if paired {
            vec![c.shape(o, "chosen")?, c.shape(o, "rejected")?]
        } else {
            let shape = c.shape(o, "completion")?;
            c.require(o, "label", Kind::Boolean)?;
            vec![shape]
        };
        let shape = if prompt == Shape::Conversation || answers.contains(&Shape::Conversation) {
            Shape::Conversation
        } else {
            Shape::Text
        };
        let pmpo = o.take_choice("style", &["kto", "pmpo"])? == Some("pmpo");
        let prompt_id = c.optional(o, "prompt_id", Kind::Id)?;
        let mut fields = Vec::new();
        if let Some(t) = &prompt_id {
            fields.push(rows::id_field("prompt_id", t));
        }
        fields.extend([shape.field("prompt"), shape.field("completion")]);
        fields.push(Field::new(
            "label",
            if pmpo {
                DataType::Int8
            } else {
                DataType::Boolean
            },
            true,
        ));
        Ok(Self {
            paired,
            shape,
            pmpo,
            prompt_id: prompt_id.is_some(),
            schema: rows::schema(fields),
        })
    }

    fn push(&self, row: &Row, completion: Value, good: bool, out: &mut Vec<Row>) {
        let mut o = Row::new();
        if self.prompt_id {
            o.insert(
                "prompt_id".into(),
                row.get("prompt_id").cloned().unwrap_or(Value::Null),
            );
        }
        o.insert(
            "prompt".into(),
            self.shape.value(row["prompt"].clone(), "user"),
        );
        o.insert(
            "completion".into(),
            self.shape.value(completion, "assistant"),
        );
        let label = if self.pmpo {
            Value::from(if good { 1 } else { -1 })
        } else {
            Value::Bool(good)
        };
        o.insert("label".into(), label);
        out.push(o);
    }
}

impl Format for Kto {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn convert(&mut self, row: Row, out: &mut Vec<Row>) -> Result<Option<&'static str>> {
        if rows::is_null(&row, "prompt") {
            return Ok(Some("NULL prompt"));
        }
        if self.paired {
            if rows::is_null(&row, "chosen") || rows::is_null(&row, "rejected") {
                return Ok(Some("NULL chosen or rejected"));
            }
            if row["chosen"] == row["rejected"] {
                return Ok(Some("chosen and rejected identical"));
            }
            self.push(&row, row["chosen"].clone(), true, out);
            self.push(&row, row["rejected"].clone(), false, out);
            return Ok(None);
        }
        if rows::is_null(&row, "completion") {
            return Ok(Some("NULL completion"));
        }
        let Some(label) = row.get("label").and_then(Value::as_bool) else {
            return Ok(Some("NULL label"));
        };
        self.push(&row, row["completion"].clone(), label, out);
        Ok(None)
    }

    fn describe(&self) -> String {
        let shape = match self.shape {
            Shape::Text => "standard (strings)",
            Shape::Conversation => "conversational (lists of {role, content} messages)",
        };
        if self.pmpo {
            format!(
                "Unpaired samples for PMPO-style training, {shape}: prompt, completion and label \
                 +1 (positive sample) or -1 (negative sample)."
            )
        } else {
            format!(
                "TRL's unpaired preference format, {shape}: prompt, completion and a boolean label \
                 (true: desirable), as `KTOTrainer` reads it. KTO works best with desirable and \
                 undesirable rows between 1:1 and 4:3 (see Labels)."
            )
        }
    }
}
