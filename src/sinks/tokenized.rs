//! `STORED AS tokenized OPTIONS (model 'm' [, max_length n] [, chat true|false])`: token ids
//! ready for a trainer, made with the model's own tokenizer and chat template.
//!
//! A paired set (prompt, chosen, rejected) gives chosen_input_ids / chosen_attention_mask /
//! chosen_labels and the same for rejected; a prompt / completion or messages set gives
//! input_ids / attention_mask / labels. The sequence is the prompt followed by the answer;
//! labels repeat the ids with the prompt's positions masked as -100, so the loss is on the
//! answer only. As TRL does: with `chat` (the default when the model has a chat template)
//! the prompt is rendered with the generation prompt and the answer is what rendering the
//! whole conversation adds after it; the answer ends with EOS; prompt and answer are
//! tokenized separately without special tokens (BOS comes from the template, or is added
//! for raw text where the model asks for it). Rows longer than max_length (default: the
//! model's context) are dropped and counted. Optional prompt_id is kept.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, SchemaRef};
use datafusion::error::DataFusionError;
use prefflow_udfs::models::chat::ChatPrompts;
use prefflow_udfs::models::decode::DecoderInfo;
use serde_json::Value;
use tokenizers::Tokenizer;

use super::rows::{self, Columns, Kind, Row, Shape};
use super::sft::Source;
use super::{Format, Options};
use crate::error::Result;

/// What the rows hold.
enum Input {
    Paired,
    Single(Source),
}

pub struct Tokenized {
    input: Input,
    tokenizer: Arc<Tokenizer>,
    chat: Option<ChatPrompts>,
    info: DecoderInfo,
    eos: Option<u32>,
    max_length: usize,
    prompt_id: bool,
    schema: SchemaRef,
}

fn err(message: String) -> crate::error::PrefflowError {
    DataFusionError::Execution(format!("tokenized: {message}")).into()
}

impl Tokenized {
    pub fn plan(
        registry: &prefflow_udfs::models::ModelRegistry,
        input: &datafusion::arrow::datatypes::Schema,
        o: &mut Options,
    ) -> Result<Self> {
        let c = Columns::new(input);
        let (input, any_conversation) = if c.has("chosen") {
            let shapes = [
                c.shape(o, "prompt")?,
                c.shape(o, "chosen")?,
                c.shape(o, "rejected")?,
            ];
            (Input::Paired, shapes.contains(&Shape::Conversation))
        } else {
            let source = Source::plan(&c, o)?;
            let conv = !matches!(source, Source::PromptCompletion(Shape::Text));
            (Input::Single(source), conv)
        };
        let model = o.take("model").ok_or_else(|| {
            o.err("option model is required (a CREATE MODEL name or a model path)")
        })?;
        let model_err = |e: prefflow_udfs::models::ModelError| o.err(e.to_string());
        let spec = registry.spec(&model).map_err(model_err)?;
        let info = registry.decoder_info(&spec).map_err(model_err)?;
        let tokenizer = registry.counting_tokenizer(&spec).map_err(model_err)?;
        let has_template =
            spec.options.contains_key("chat_template") || info.chat_template.is_some();
        let chat = o.take_bool("chat")?.unwrap_or(has_template);
        if chat && !has_template {
            return Err(o.err(format!(
                "model '{}' has no chat template: pass chat false, or declare it with OPTIONS (chat_template '...')",
                spec.name
            )));
        }
        if !chat && any_conversation {
            return Err(
                o.err("with chat false the prompt and answers must be text, not conversations")
            );
        }
        let chat = if chat {
            Some(ChatPrompts::new("tokenized", &spec, &info)?)
        } else {
            None
        };
        let max_length = match o.take_f64("max_length")? {
            Some(n) if n >= 1.0 && n.fract() == 0.0 => n as usize,
            Some(n) => {
                return Err(o.err(format!(
                    "max_length must be a whole number of at least 1, got {n}"
                )));
            }
            None => info.context,
        };
        let prompt_id = c.optional(o, "prompt_id", Kind::Id)?;
        let mut fields: Vec<Field> = Vec::new();
        if let Some(t) = &prompt_id {
            fields.push(rows::id_field("prompt_id", t));
        }
        let prefixes: &[&str] = match input {
            Input::Paired => &["chosen_", "rejected_"],
            Input::Single(_) => &[""],
        };
        for p in prefixes {
            for name in ["input_ids", "attention_mask", "labels"] {
                fields.push(rows::ids_field(&format!("{p}{name}")));
            }
        }
        let eos = tokenizer.token_to_id(&info.eos_token);
        Ok(Self {
            input,
            tokenizer,
            chat,
            info,
            eos,
            max_length,
            prompt_id: prompt_id.is_some(),
            schema: rows::schema(fields),
        })
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| err(format!("tokenizer: {e}")))
    }

    /// The prompt's text and the answer's text as the model reads them.
    fn texts(&self, prompt: &Value, answer: &Value) -> Result<(String, String)> {
        let Some(chat) = &self.chat else {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            return Ok((text(prompt), text(answer)));
        };
        let prompt = rows::messages(prompt.clone(), "user");
        let answer = rows::messages(answer.clone(), "assistant");
        let p = chat.render("tokenized", minijinja::Value::from_serialize(&prompt), true)?;
        let whole: Vec<Value> = prompt.into_iter().chain(answer).collect();
        let full = chat.render("tokenized", minijinja::Value::from_serialize(&whole), false)?;
        match full.strip_prefix(p.as_str()).map(str::to_string) {
            Some(rest) => Ok((p, rest)),
            None => Err(err(
                "the chat template does not render the prompt (with the generation prompt) as the start of the whole conversation, so the answer's tokens cannot be told apart".into(),
            )),
        }
    }

    /// input_ids, attention_mask and labels of prompt + answer; None when over max_length.
    fn sequence(&self, prompt: &Value, answer: &Value) -> Result<Option<[Value; 3]>> {
        let (p, a) = self.texts(prompt, answer)?;
        let mut ids = self.encode(&p)?;
        if self.chat.is_none()
            && let Some(bos) = self.info.add_bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        let prompt_len = ids.len();
        ids.extend(self.encode(&a)?);
        if let Some(eos) = self.eos
            && ids.last() != Some(&eos)
        {
            ids.push(eos);
        }
        if ids.len() > self.max_length {
            return Ok(None);
        }
        let labels: Vec<i64> = ids
            .iter()
            .enumerate()
            .map(|(i, &t)| if i < prompt_len { -100 } else { t as i64 })
            .collect();
        let ids_v: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        Ok(Some([
            Value::from(ids_v),
            Value::from(vec![1i64; ids.len()]),
            Value::from(labels),
        ]))
    }
}

impl Format for Tokenized {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn convert(&mut self, row: Row, out: &mut Vec<Row>) -> Result<Option<&'static str>> {
        let mut o = Row::new();
        if self.prompt_id {
            o.insert(
                "prompt_id".into(),
                row.get("prompt_id").cloned().unwrap_or(Value::Null),
            );
        }
        let names = ["input_ids", "attention_mask", "labels"];
        match &self.input {
            Input::Paired => {
                if ["prompt", "chosen", "rejected"]
                    .iter()
                    .any(|c| rows::is_null(&row, c))
                {
                    return Ok(Some("NULL prompt, chosen or rejected"));
                }
                for side in ["chosen", "rejected"] {
                    let Some(seq) = self.sequence(&row["prompt"], &row[side])? else {
                        return Ok(Some("longer than max_length"));
                    };
                    for (name, v) in names.iter().zip(seq) {
                        o.insert(format!("{side}_{name}"), v);
                    }
                }
            }
            Input::Single(source) => {
                let (prompt, answer) = match source {
                    Source::PromptCompletion(_) => {
                        if rows::is_null(&row, "prompt") || rows::is_null(&row, "completion") {
                            return Ok(Some("NULL prompt or completion"));
                        }
                        (row["prompt"].clone(), row["completion"].clone())
                    }
                    Source::Messages => {
                        let Some(mut m) = source.conversation(&row) else {
                            return Ok(Some("NULL or empty conversation"));
                        };
                        if m.last().and_then(|x| x["role"].as_str()) != Some("assistant") {
                            return Ok(Some("last message is not the assistant's"));
                        }
                        let last = m.split_off(m.len() - 1);
                        (Value::Array(m), Value::Array(last))
                    }
                };
                let Some(seq) = self.sequence(&prompt, &answer)? else {
                    return Ok(Some("longer than max_length"));
                };
                for (name, v) in names.iter().zip(seq) {
                    o.insert(name.to_string(), v);
                }
            }
        }
        out.push(o);
        Ok(None)
    }

    fn describe(&self) -> String {
        let what = match self.input {
            Input::Paired => {
                "chosen_input_ids / chosen_attention_mask / chosen_labels and the same for rejected"
            }
            Input::Single(_) => "input_ids / attention_mask / labels",
        };
        format!(
            "Token ids of prompt + answer made with the model's tokenizer{}: {what}. labels are the ids \
             with the prompt's positions set to -100 (loss on the answer only); every sequence ends \
             with EOS and is at most {} tokens long.",
            if self.chat.is_some() {
                " and chat template"
            } else {
                ""
            },
            self.max_length
        )
    }
}
