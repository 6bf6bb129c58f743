//! `STORED AS kto`: TRL's unpaired preference format, prompt / completion / label.
//!
//! Columns read: prompt and completion (text or conversations) with a boolean label, or a
//! paired set (prompt, chosen, rejected), which is unpaired into a desirable and an
//! undesirable row as TRL's `unpair_preference_dataset` does. Optional prompt_id is kept.
//! `style 'pmpo'` writes the label as +1 / -1 (positive / negative samples, as PMPO's
//! weighting reads them) instead of true / false.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int8Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};

use super::rows::{self, Columns, Kind, Output, Picks, Shape, Texts};
use crate::error::Result;
use crate::sinks::format::{Converted, Format};
use crate::sinks::options::Options;

pub struct Kto {
    paired: bool,
    shape: Shape,
    pmpo: bool,
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
            schema: rows::schema(fields),
        })
    }
}

impl Format for Kto {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn convert(&mut self, batch: &RecordBatch) -> Result<Converted> {
        let prompt = Texts::new(batch, "kto", "prompt")?;
        let mut picks = Picks::default();
        // The written completions and labels, built as rows are kept.
        let mut completion = Output::new(self.shape);
        let mut labels: Vec<bool> = Vec::new();
        if self.paired {
            let chosen = Texts::new(batch, "kto", "chosen")?;
            let rejected = Texts::new(batch, "kto", "rejected")?;
            for i in 0..batch.num_rows() {
                if prompt.is_null(i) {
                    picks.drop("NULL prompt");
                } else if chosen.is_null(i) || rejected.is_null(i) {
                    picks.drop("NULL chosen or rejected");
                } else if chosen.same(i, &rejected) {
                    picks.drop("chosen and rejected identical");
                } else {
                    // unpair_preference_dataset: the chosen answer desirable, the rejected not.
                    for (answer, good) in [(&chosen, true), (&rejected, false)] {
                        picks.keep(i);
                        answer.write(i, "assistant", &mut completion);
                        labels.push(good);
                    }
                }
            }
        } else {
            let answers = Texts::new(batch, "kto", "completion")?;
            let label = rows::cast_column(batch, "kto", "label", &DataType::Boolean)?;
            let label = label.as_boolean();
            for i in 0..batch.num_rows() {
                if prompt.is_null(i) {
                    picks.drop("NULL prompt");
                } else if answers.is_null(i) {
                    picks.drop("NULL completion");
                } else if label.is_null(i) {
                    picks.drop("NULL label");
                } else {
                    picks.keep(i);
                    answers.write(i, "assistant", &mut completion);
                    labels.push(label.value(i));
                }
            }
        }
        let kept = picks.indices();
        let label: ArrayRef = if self.pmpo {
            Arc::new(Int8Array::from_iter_values(
                labels.iter().map(|&good| if good { 1 } else { -1 }),
            ))
        } else {
            Arc::new(BooleanArray::from(labels))
        };
        let prompt = rows::reshape(&prompt, self.shape, &kept, "user")?;
        picks.into_converted(
            batch,
            "kto",
            &self.schema,
            [prompt, completion.finish(), label],
        )
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
