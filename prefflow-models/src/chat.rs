//! Turning a SQL prompt (text, or a list of {role, content}) into the text a decoder reads:
//! the model's chat template rendered the way Hugging Face does (leniently, with
//! raise_exception, bos_token and eos_token), or the raw text for plain completion.

use datafusion::arrow::array::Array;
use datafusion::common::{DataFusionError, Result, exec_err};
use minijinja::{Environment, Value, context};

use super::types::DecoderInfo;
use super::types::ModelSpec;
use crate::values::to_template_value;

/// A model's prompt renderer.
pub struct ChatPrompts {
    env: std::sync::Arc<Environment<'static>>,
    has_template: bool,
    model: String,
    bos: String,
    eos: String,
}

/// A template environment that renders Hugging Face chat templates: lenient undefined values,
/// `raise_exception`, `strftime_now`, `tojson`, loop controls and Python string / dict methods
/// (`.strip()`, `.startswith()`, `.items()`, ...).
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    crate::template::bound(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_function(
        "strftime_now",
        |format: String| -> Result<String, minijinja::Error> {
            use std::fmt::Write;
            let mut out = String::new();
            write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
                minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("strftime_now: bad format {format:?}"),
                )
            })?;
            Ok(out)
        },
    );
    env
}

impl ChatPrompts {
    /// The template of CREATE MODEL OPTIONS (chat_template '...'), else the model's own.
    pub fn new(function: &str, spec: &ModelSpec, info: &DecoderInfo) -> Result<Self> {
        let template = spec
            .options
            .get("chat_template")
            .cloned()
            .or_else(|| info.chat_template.clone());
        Self::with_template(
            function,
            &spec.name,
            template,
            info.bos_token.clone(),
            info.eos_token.clone(),
        )
    }

    /// A template given as text (no model: bos_token and eos_token are empty).
    pub fn from_template(function: &str, template: &str) -> Result<Self> {
        Self::with_template(
            function,
            "(template)",
            Some(template.to_string()),
            String::new(),
            String::new(),
        )
    }

    /// A renderer for `template` (None: rendering is an error naming `model`).
    pub fn with_template(
        function: &str,
        model: &str,
        template: Option<String>,
        bos: String,
        eos: String,
    ) -> Result<Self> {
        let mut env = environment();
        let template = template.map(|t| hf_tags(&t));
        if let Some(t) = &template {
            env.add_template_owned("chat", t.clone()).map_err(|e| {
                DataFusionError::Execution(format!(
                    "{function}: model '{model}': chat template: {e}"
                ))
            })?;
        }
        Ok(Self {
            env: std::sync::Arc::new(env),
            has_template: template.is_some(),
            model: model.to_string(),
            bos,
            eos,
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
        if !chat {
            return match value.as_str() {
                Some(text) => Ok(text.to_string()),
                None => exec_err!(
                    "{function}: with chat false the prompt must be text, not a list of messages"
                ),
            };
        }
        self.render(function, value, true)
    }

    /// Renders a conversation (a list of {role, content}; text is one user turn).
    pub fn render(
        &self,
        function: &str,
        conversation: Value,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let messages = match conversation.as_str() {
            Some(text) => Value::from(vec![context! { role => "user", content => text }]),
            None => conversation,
        };
        check_messages(function, &messages)?;
        if !self.has_template {
            return exec_err!(
                "{function}: model '{}' has no chat template: pass OPTIONS (chat_template '...') to CREATE MODEL, or chat false",
                self.model
            );
        }
        crate::template::render(
            &self.env,
            "chat",
            context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos.clone(),
                eos_token => self.eos.clone(),
            },
        )
        .map_err(|e| DataFusionError::Execution(format!("{function}: chat template: {e}")))
    }
}

/// A chat template with transformers' own tags made plain Jinja: `{% generation %}` …
/// `{% endgeneration %}` (which mark the assistant's tokens for training masks, TRL's
/// `assistant_only_loss`) render their body, as in transformers, so they become an `if true`
/// block; whitespace control (`{%-`, `-%}`) is kept. Other unknown tags still fail, with
/// minijinja's message naming the tag.
pub fn hf_tags(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let end = start + len + 2;
        let tag = &rest[start..end];
        let word =
            tag[2..tag.len() - 2].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        match word {
            "generation" => out.push_str(&tag.replacen("generation", "if true", 1)),
            "endgeneration" => out.push_str(&tag.replacen("endgeneration", "endif", 1)),
            _ => out.push_str(tag),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Every message of a conversation needs a role and a content field (templates would render a
/// missing one as nothing, or fail with a message about the template).
fn check_messages(function: &str, messages: &Value) -> Result<()> {
    let Ok(iter) = messages.try_iter() else {
        return exec_err!(
            "{function}: a conversation must be a list of {{role, content}} messages"
        );
    };
    for (n, m) in iter.enumerate() {
        for field in ["role", "content"] {
            let has = m.get_attr(field).is_ok_and(|v| !v.is_undefined());
            if !has {
                return exec_err!(
                    "{function}: message {} of the conversation has no '{field}' field (messages are {{role, content}} structs)",
                    n + 1
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod hf_tag_tests {
    use super::*;

    /// SmolLM3 / TRL-style templates mark the assistant's turn with {% generation %}: it
    /// renders as its body, whitespace control included.
    #[test]
    fn generation_blocks_render_their_body() {
        let template = "{% for m in messages %}{% if m.role == 'assistant' %}{%- generation -%}\n[{{ m.content }}]\n{%- endgeneration %}{% else %}<{{ m.content }}>{% endif %}{% endfor %}";
        let prompts = ChatPrompts::from_template("apply_chat_template", template).unwrap();
        let conversation = Value::from(vec![
            context! { role => "user", content => "hi" },
            context! { role => "assistant", content => "hello" },
        ]);
        let text = prompts
            .render("apply_chat_template", conversation, false)
            .unwrap();
        assert_eq!(text, "<hi>[hello]");
        // Unknown tags are still errors, naming the tag.
        let err = ChatPrompts::from_template("f", "{% frobnicate %}x{% endfrobnicate %}")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("frobnicate"), "{err}");
    }
}
