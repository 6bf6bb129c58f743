//! `STORED AS dpo`: TRL's preference format with an explicit prompt.
//!
//! Columns read: prompt, chosen, rejected (text, or lists of {role, content}); optional
//! score_chosen and score_rejected (numbers, both or neither), prompt_id, and num_responses
//! (how many scored responses the group had; not written). Written: prompt_id (when given),
//! prompt, chosen, rejected, score_chosen, score_rejected (when given).
//!
//! The pairing rules live here, so that the card can count what they drop: a pair without a
//! chosen or rejected answer (all of the prompt's responses had NULL scores), a group of one
//! response, a tie (equal best and worst scores), a margin below `min_margin`, and a pair
//! whose chosen and rejected text is the same are dropped and counted.

use serde_json::Value;

use super::rows::{self, Columns, Kind, Row, Shape};
use super::{Format, Options};
use crate::error::Result;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;

pub struct Dpo {
    shape: Shape,
    scores: bool,
    prompt_id: bool,
    num_responses: bool,
    min_margin: f64,
    schema: SchemaRef,
}

impl Dpo {
    pub fn plan(input: &datafusion::arrow::datatypes::Schema, o: &mut Options) -> Result<Self> {
        let c = Columns::new(input);
        let shapes = [
            c.shape(o, "prompt")?,
            c.shape(o, "chosen")?,
            c.shape(o, "rejected")?,
        ];
        let any_conversation = shapes.contains(&Shape::Conversation);
        let shape = match o.take_choice("style", &["standard", "conversational"])? {
            Some("standard") if any_conversation => {
                return Err(o.err(
                    "style 'standard' needs text prompt, chosen and rejected; a conversation cannot be flattened without a chat template (use style 'conversational')",
                ));
            }
            Some("standard") => Shape::Text,
            Some(_) => Shape::Conversation,
            // Mixed input (a conversation prompt, text answers) becomes conversational: TRL
            // needs all three columns in one shape.
            None if any_conversation => Shape::Conversation,
            None => Shape::Text,
        };
        let chosen_score = c.optional(o, "score_chosen", Kind::Number)?;
        let rejected_score = c.optional(o, "score_rejected", Kind::Number)?;
        if chosen_score.is_some() != rejected_score.is_some() {
            let missing = if chosen_score.is_some() {
                "score_rejected"
            } else {
                "score_chosen"
            };
            return Err(o.err(format!(
                "missing column '{missing}': score_chosen and score_rejected come together"
            )));
        }
        let scores = chosen_score.is_some();
        let prompt_id = c.optional(o, "prompt_id", Kind::Id)?;
        let num_responses = c.optional(o, "num_responses", Kind::Integer)?.is_some();
        let min_margin = o.take_f64("min_margin")?.unwrap_or(0.0);
        if min_margin < 0.0 {
            return Err(o.err(format!("min_margin must be at least 0, got {min_margin}")));
        }
        if min_margin > 0.0 && !scores {
            return Err(o.err(
                "min_margin needs the columns score_chosen and score_rejected (for example max(score) and min(score) per prompt)",
            ));
        }
        let mut fields = Vec::new();
        if let Some(t) = &prompt_id {
            fields.push(rows::id_field("prompt_id", t));
        }
        fields.extend(["prompt", "chosen", "rejected"].map(|c| shape.field(c)));
        if scores {
            fields.push(datafusion::arrow::datatypes::Field::new(
                "score_chosen",
                datafusion::arrow::datatypes::DataType::Float64,
                true,
            ));
            fields.push(datafusion::arrow::datatypes::Field::new(
                "score_rejected",
                datafusion::arrow::datatypes::DataType::Float64,
                true,
            ));
        }
        Ok(Self {
            shape,
            scores,
            prompt_id: prompt_id.is_some(),
            num_responses,
            min_margin,
            schema: rows::schema(fields),
        })
    }
}

impl Format for Dpo {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn convert(&mut self, mut row: Row, out: &mut Vec<Row>) -> Result<Option<&'static str>> {
        if rows::is_null(&row, "prompt") {
            return Ok(Some("NULL prompt"));
        }
        if rows::is_null(&row, "chosen") || rows::is_null(&row, "rejected") {
            return Ok(Some("no scored response (chosen or rejected is NULL)"));
        }
        if self.num_responses
            && row
                .get("num_responses")
                .and_then(Value::as_i64)
                .is_some_and(|n| n < 2)
        {
            return Ok(Some("one response only"));
        }
        if self.scores {
            let (Some(c), Some(r)) = (
                row.get("score_chosen").and_then(Value::as_f64),
                row.get("score_rejected").and_then(Value::as_f64),
            ) else {
                return Ok(Some("no scored response (chosen or rejected is NULL)"));
            };
            if c < r {
                return Err(DataFusionError::Execution(format!(
                    "dpo: score_chosen {c} is below score_rejected {r} for prompt {}: are chosen and rejected swapped?",
                    rows::key_text(&row["prompt"])
                ))
                .into());
            }
            if c == r {
                return Ok(Some("tie (best and worst scores equal)"));
            }
            if c - r < self.min_margin {
                return Ok(Some("margin below min_margin"));
            }
        }
        if row["chosen"] == row["rejected"] {
            return Ok(Some("chosen and rejected identical"));
        }
        let mut o = Row::new();
        if self.prompt_id {
            o.insert(
                "prompt_id".into(),
                row.remove("prompt_id").unwrap_or(Value::Null),
            );
        }
        for (name, role) in [
            ("prompt", "user"),
            ("chosen", "assistant"),
            ("rejected", "assistant"),
        ] {
            let v = row.remove(name).unwrap_or(Value::Null);
            o.insert(name.into(), self.shape.value(v, role));
        }
        if self.scores {
            for name in ["score_chosen", "score_rejected"] {
                o.insert(name.into(), row.remove(name).unwrap_or(Value::Null));
            }
        }
        out.push(o);
        Ok(None)
    }

    fn describe(&self) -> String {
        let shape = match self.shape {
            Shape::Text => "standard (prompt, chosen and rejected are strings)",
            Shape::Conversation => {
                "conversational (prompt, chosen and rejected are lists of {role, content} messages)"
            }
        };
        let mut s = format!(
            "Preference pairs in TRL's format with an explicit prompt, {shape}: `DPOTrainer` \
             and the other preference trainers take it as it is; `datasets.load_dataset(\"<this folder>\")` \
             finds the splits from this card."
        );
        if self.scores {
            s.push_str(" score_chosen and score_rejected hold the scores the pair was picked by.");
        }
        s
    }
}
