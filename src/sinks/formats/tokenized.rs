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

use datafusion::arrow::array::{ArrayRef, Int64Builder, ListBuilder, RecordBatch};
use datafusion::arrow::datatypes::{Field, SchemaRef};
use datafusion::error::DataFusionError;
use prefflow_udfs::models::chat::ChatPrompts;
use prefflow_udfs::models::decode::DecoderInfo;
use serde_json::Value;
use tokenizers::Tokenizer;

use super::rows::{self, Columns, Kind, Message, Picks, Shape, Texts};
use super::sft::{Conversations, Source};
use crate::error::Result;
use crate::sinks::format::{Converted, Format};
use crate::sinks::options::Options;

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
    fn texts(&self, prompt: &[Message<'_>], answer: &[Message<'_>]) -> Result<(String, String)> {
        let Some(chat) = &self.chat else {
            // Without a chat template prompt and answer are text (checked at planning): one
            // message each.
            let text = |m: &[Message<'_>]| m.first().map(|m| m.1).unwrap_or_default().to_string();
            return Ok((text(prompt), text(answer)));
        };
        let values = |m: &[Message<'_>]| -> Vec<Value> {
            m.iter()
                .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
                .collect()
        };
        let prompt = values(prompt);
        let answer = values(answer);
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

    /// input_ids and labels of prompt + answer (the attention mask is all ones); None when
    /// over max_length.
    fn sequence(
        &self,
        prompt: &[Message<'_>],
        answer: &[Message<'_>],
    ) -> Result<Option<(Vec<i64>, Vec<i64>)>> {
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
        Ok(Some((ids.iter().map(|&t| t as i64).collect(), labels)))
    }
}

/// input_ids, attention_mask and labels columns being built.
struct Sequences([ListBuilder<Int64Builder>; 3]);

impl Sequences {
    fn new() -> Self {
        Self(std::array::from_fn(|_| {
            ListBuilder::new(Int64Builder::new())
        }))
    }

    fn push(&mut self, (ids, labels): (Vec<i64>, Vec<i64>)) {
        let mask = vec![1i64; ids.len()];
        for (b, v) in self.0.iter_mut().zip([ids, mask, labels]) {
            b.values().append_slice(&v);
            b.append(true);
        }
    }

    fn finish(self) -> [ArrayRef; 3] {
        self.0.map(|mut b| Arc::new(b.finish()) as ArrayRef)
    }
}

impl Format for Tokenized {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn convert(&mut self, batch: &RecordBatch) -> Result<Converted> {
        let mut picks = Picks::default();
        let mut built = Vec::new();
        match &self.input {
            Input::Paired => {
                let [prompt, chosen, rejected] =
                    ["prompt", "chosen", "rejected"].map(|c| Texts::new(batch, "tokenized", c));
                let (prompt, chosen, rejected) = (prompt?, chosen?, rejected?);
                let (mut c, mut r) = (Sequences::new(), Sequences::new());
                for i in 0..batch.num_rows() {
                    let (Some(p), Some(ch), Some(rj)) = (
                        prompt.messages(i, "user"),
                        chosen.messages(i, "assistant"),
                        rejected.messages(i, "assistant"),
                    ) else {
                        picks.drop("NULL prompt, chosen or rejected");
                        continue;
                    };
                    let (Some(cs), Some(rs)) = (self.sequence(&p, &ch)?, self.sequence(&p, &rj)?)
                    else {
                        picks.drop("longer than max_length");
                        continue;
                    };
                    c.push(cs);
                    r.push(rs);
                    picks.keep(i);
                }
                built.extend(c.finish());
                built.extend(r.finish());
            }
            Input::Single(source) => {
                let conversations = source.read(batch, "tokenized")?;
                let mut seqs = Sequences::new();
                for i in 0..batch.num_rows() {
                    let (prompt, answer) = match &conversations {
                        Conversations::PromptCompletion(p, c) => {
                            match (p.messages(i, "user"), c.messages(i, "assistant")) {
                                (Some(p), Some(c)) => (p, c),
                                _ => {
                                    picks.drop("NULL prompt or completion");
                                    continue;
                                }
                            }
                        }
                        Conversations::Messages(_) => {
                            let Some(mut m) = conversations.get(i) else {
                                picks.drop("NULL or empty conversation");
                                continue;
                            };
                            if m.last().map(|x| x.0) != Some("assistant") {
                                picks.drop("last message is not the assistant's");
                                continue;
                            }
                            let last = m.split_off(m.len() - 1);
                            (m, last)
                        }
                    };
                    let Some(seq) = self.sequence(&prompt, &answer)? else {
                        picks.drop("longer than max_length");
                        continue;
                    };
                    seqs.push(seq);
                    picks.keep(i);
                }
                built.extend(seqs.finish());
            }
        }
        picks.into_converted(batch, "tokenized", &self.schema, built)
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
