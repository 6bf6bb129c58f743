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

use datafusion::arrow::array::{Array, AsArray, Float64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};

use super::rows::{self, Columns, Kind, Picks, Shape, Texts, take_column};
use crate::error::Result;
use crate::sinks::format::{Converted, Format};
use crate::sinks::options::Options;
use datafusion::error::DataFusionError;

pub struct Dpo {
    shape: Shape,
    scores: bool,
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
            for name in ["score_chosen", "score_rejected"] {
                fields.push(datafusion::arrow::datatypes::Field::new(
                    name,
                    DataType::Float64,
                    true,
                ));
            }
        }
        Ok(Self {
            shape,
            scores,
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

    fn convert(&mut self, batch: &RecordBatch) -> Result<Converted> {
        let prompt = Texts::new(batch, "dpo", "prompt")?;
        let chosen = Texts::new(batch, "dpo", "chosen")?;
        let rejected = Texts::new(batch, "dpo", "rejected")?;
        let num_responses = if self.num_responses {
            Some(rows::cast_column(
                batch,
                "dpo",
                "num_responses",
                &DataType::Int64,
            )?)
        } else {
            None
        };
        let num_responses = num_responses
            .as_ref()
            .map(|a| a.as_primitive::<Int64Type>());
        let scores = if self.scores {
            Some((
                rows::cast_column(batch, "dpo", "score_chosen", &DataType::Float64)?,
                rows::cast_column(batch, "dpo", "score_rejected", &DataType::Float64)?,
            ))
        } else {
            None
        };
        let scores = scores.as_ref().map(|(c, r)| {
            (
                c.as_primitive::<Float64Type>(),
                r.as_primitive::<Float64Type>(),
            )
        });
        let mut picks = Picks::default();
        for i in 0..batch.num_rows() {
            if prompt.is_null(i) {
                picks.drop("NULL prompt");
                continue;
            }
            if chosen.is_null(i) || rejected.is_null(i) {
                picks.drop("no scored response (chosen or rejected is NULL)");
                continue;
            }
            if num_responses.is_some_and(|n| n.is_valid(i) && n.value(i) < 2) {
                picks.drop("one response only");
                continue;
            }
            if let Some((c, r)) = scores {
                // A NaN score is not a score (arg_max, max and min skip it too); such a pair
                // is dropped and counted on its own line of the card.
                if [c, r].iter().any(|a| a.is_valid(i) && a.value(i).is_nan()) {
                    picks.drop("NaN score (a NaN is not a score)");
                    continue;
                }
                let score = |a: &Float64Array| a.is_valid(i).then(|| a.value(i));
                let (Some(c), Some(r)) = (score(c), score(r)) else {
                    picks.drop("no scored response (chosen or rejected is NULL)");
                    continue;
                };
                if c < r {
                    return Err(rows::exec_err(
                        "dpo",
                        format!(
                            "score_chosen {c} is below score_rejected {r} for prompt {}: are chosen and rejected swapped?",
                            prompt.describe(i)
                        ),
                    ));
                }
                if c == r {
                    picks.drop("tie (best and worst scores equal)");
                    continue;
                }
                if c - r < self.min_margin {
                    picks.drop("margin below min_margin");
                    continue;
                }
            }
            if chosen.same(i, &rejected) {
                picks.drop("chosen and rejected identical");
                continue;
            }
            picks.keep(i);
        }
        let kept = picks.indices();
        let mut columns = vec![
            rows::reshape(&prompt, self.shape, &kept, "user")?,
            rows::reshape(&chosen, self.shape, &kept, "assistant")?,
            rows::reshape(&rejected, self.shape, &kept, "assistant")?,
        ];
        if self.scores {
            for name in ["score_chosen", "score_rejected"] {
                let field = self
                    .schema
                    .field_with_name(name)
                    .map_err(DataFusionError::from)?;
                columns.push(take_column(batch, "dpo", field, &kept)?);
            }
        }
        picks.into_converted(batch, "dpo", &self.schema, columns)
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
