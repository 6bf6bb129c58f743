//! Turning a SQL prompt (text, or a list of {role, content}) into the text a decoder reads:
//! the model's chat template rendered the way Hugging Face does (leniently, with
//! raise_exception, bos_token and eos_token), or the raw text for plain completion.

use datafusion::arrow::array::Array;
use datafusion::common::{DataFusionError, Result, exec_err};
use minijinja::{Environment, Value, context};

use crate::common::values::to_template_value;
use crate::models::ModelSpec;
use crate::models::decode::DecoderInfo;

/// A model's prompt renderer.
pub struct ChatPrompts {
    env: Environment<'static>,
    has_template: bool,
    model: String,
    bos: String,
    eos: String,
}

impl ChatPrompts {
    /// The template of CREATE MODEL OPTIONS (chat_template '...'), else the model's own.
    pub fn new(function: &str, spec: &ModelSpec, info: &DecoderInfo) -> Result<Self> {
        let template = spec
            .options
            .get("chat_template")
            .cloned()
            .or_else(|| info.chat_template.clone());
        // Hugging Face renders chat templates leniently (undefined is empty), so do we.
        let mut env = Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        if let Some(t) = &template {
            env.add_template_owned("chat", t.clone()).map_err(|e| {
                DataFusionError::Execution(format!(
                    "{function}: model '{}': chat template: {e}",
                    spec.name
                ))
            })?;
        }
        Ok(Self {
            env,
            has_template: template.is_some(),
            model: spec.name.clone(),
            bos: info.bos_token.clone(),
            eos: info.eos_token.clone(),
        })
    }

    /// The text the model reads for row `i` of `prompts`: the conversation rendered with the
    /// generation prompt, or (with `chat` false) the text itself.
    pub fn prompt_text(
        &self,
        function: &str,
        prompts: &dyn Array,
        i: usize,
        chat: bool,
    ) -> Result<String> {
        let value = to_template_value(prompts, i)?;
        let messages = match value.as_str() {
            Some(text) if !chat => return Ok(text.to_string()),
            Some(text) => Value::from(vec![context! { role => "user", content => text }]),
            None if !chat => {
                return exec_err!(
                    "{function}: with chat false the prompt must be text, not a list of messages"
                );
            }
            None => value,
        };
        if !self.has_template {
            return exec_err!(
                "{function}: model '{}' has no chat template: pass OPTIONS (chat_template '...') to CREATE MODEL, or chat false",
                self.model
            );
        }
        self.env
            .get_template("chat")
            .and_then(|t| {
                t.render(context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => self.bos.clone(),
                    eos_token => self.eos.clone(),
                })
            })
            .map_err(|e| DataFusionError::Execution(format!("{function}: chat template: {e}")))
    }
}
