//! Translation, beside generation and encoding: a Marian encoder-decoder translates a text
//! itself; any other model (a local decoder, a server) answers a translation prompt, a
//! minijinja template over `text`, `target_lang` and `source_lang` sent as a user turn.

use std::sync::Arc;

use datafusion::arrow::array::StringArray;
use datafusion::common::{DataFusionError, Result};
use minijinja::{Environment, UndefinedBehavior, Value, context};

use crate::boundary::model_err;
use crate::model::Model;
use crate::template;
use crate::types::{GenerateParams, ModelSpec};

/// The default translation prompt.
pub const DEFAULT_PROMPT: &str = "Translate the following text{% if source_lang %} from {{ source_lang }}{% endif %} into {{ target_lang }}. Reply with the translation only, nothing else.\n\n{{ text }}";

/// One text to translate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The text.
    pub text: String,
    /// Into this language.
    pub target: String,
    /// From this language, when known.
    pub source: Option<String>,
}

/// A translation prompt, compiled once for every text of a call.
#[derive(Debug, Clone)]
pub struct Prompt {
    env: Arc<Environment<'static>>,
}

impl Prompt {
    /// Compiles `template` (an unknown variable is an error when it renders).
    pub fn new(function: &str, template: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        template::bound(&mut env);
        env.add_template_owned("prompt", template.to_string())
            .map_err(|e| format!("{function}: prompt template: {e}"))?;
        Ok(Self { env: Arc::new(env) })
    }

    /// The prompt for one text.
    pub fn render(
        &self,
        function: &str,
        text: &str,
        target: &str,
        source: Option<&str>,
    ) -> Result<String, String> {
        let ctx: Value = context! { text => text, target_lang => target, source_lang => source };
        template::render(&self.env, "prompt", ctx)
            .map_err(|e| format!("{function}: prompt template: {e}"))
    }
}

/// Translates every request (None stays None) with `model`, in one generation batch.
pub async fn translate(
    function: &str,
    model: &Model,
    spec: &ModelSpec,
    requests: &[Option<Request>],
    prompt: &Prompt,
    options: &GenerateParams,
) -> Result<Vec<Option<String>>> {
    if let Model::Marian(marian) = model {
        // An encoder-decoder translates the text itself; the prompt does not apply.
        let texts = requests
            .iter()
            .map(|r| r.as_ref().map(|r| (r.text.clone(), r.target.clone())))
            .collect();
        return marian
            .translate(texts, options.max_tokens)
            .await
            .map_err(|e| model_err(function, e));
    }
    let prompts = requests
        .iter()
        .map(|r| {
            r.as_ref()
                .map(|r| {
                    prompt
                        .render(function, &r.text, &r.target, r.source.as_deref())
                        .map_err(DataFusionError::Execution)
                })
                .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    let prompts = StringArray::from(prompts);
    let replies = crate::generation::generate(function, model, spec, &prompts, options, 1).await?;
    Ok(replies
        .into_iter()
        .map(|r| r.map(|mut t| t.remove(0).trim().to_string()))
        .collect())
}
