//! `ai_translate(model, text, target_lang [, source_lang [, options]])`: text translated by a
//! Marian encoder-decoder model (Helsinki-NLP/opus-mt-*), or by a decoder LLM (local or
//! remote) through a translation prompt.
//!
//! ```sql
//! CREATE MODEL policy FROM 'models/smollm2-135m-instruct';
//! SELECT ai_translate('policy', prompt_zh, 'English', 'Chinese') FROM prompts;
//! SELECT ai_translate('policy', q, 'French', NULL,
//!                     named_struct('prompt', 'Into {{ target_lang }}: {{ text }}')) FROM t;
//! ```
//!
//! The prompt (a minijinja template over `text`, `target_lang` and `source_lang`, overridable
//! with the `prompt` option) is sent as a user turn through the model's chat template; the
//! generation options of `ai_generate` apply (greedy by default). The reply is trimmed. NULL
//! text or target language gives NULL. A Marian model translates the text itself (greedy, with a
//! `>>lang<<` prefix when its vocabulary has one); the prompt does not apply to it.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, Signature, TypeSignature, Volatility,
};

use crate::common::generate_options::parse_options_with;
use crate::common::model_function::{Call, ModelFunction, Planning};
use crate::common::text::string_arg;
use crate::models::model::Capability;
pub use crate::models::translation::{DEFAULT_PROMPT, Prompt, Request};
use crate::models::types::GenerateParams;

/// Generation options plus the prompt template.
#[derive(Debug, Clone)]
pub struct TranslateOptions {
    /// How to generate.
    pub generate: GenerateParams,
    /// The prompt template, compiled (and checked) once.
    pub prompt: Prompt,
    /// translate_json: only strings under these keys (at any depth); None: every string that
    /// reads as language.
    pub keys: Option<Vec<String>>,
}

/// Parses the options struct of `function` (generation options and `prompt`).
pub fn translate_options(
    function: &str,
    options: Option<&ScalarValue>,
) -> Result<TranslateOptions, String> {
    let own_keys: &[&str] = if function == "translate_json" {
        &["prompt", "keys"]
    } else {
        &["prompt"]
    };
    let (generate, own) = parse_options_with(function, options, own_keys)?;
    let mut prompt = DEFAULT_PROMPT.to_string();
    let mut keys = None;
    for (key, value) in own {
        if key == "keys" {
            keys = Some(string_list(&value).ok_or_else(|| {
                format!("{function}: keys must be a string or a list of strings, got {value}")
            })?);
            continue;
        }
        match value.try_as_str().flatten() {
            Some(p) => prompt = p.to_string(),
            None => return Err(format!("{function}: {key} must be text, got {value}")),
        }
    }
    // A template that does not parse, or names an unknown variable, fails now.
    let prompt = Prompt::new(function, &prompt)?;
    prompt.render(function, "text", "English", Some("French"))?;
    Ok(TranslateOptions {
        generate,
        prompt,
        keys,
    })
}

/// 'a' or ['a', 'b'] as strings.
fn string_list(value: &ScalarValue) -> Option<Vec<String>> {
    if let Some(s) = value.try_as_str().flatten() {
        return Some(vec![s.to_string()]);
    }
    let ScalarValue::List(list) = value else {
        return None;
    };
    let values = datafusion::arrow::compute::cast(&list.value(0), &DataType::Utf8).ok()?;
    let values = values.as_any().downcast_ref::<StringArray>()?;
    Some(values.iter().flatten().map(str::to_string).collect())
}

/// Checks the options argument at `position` while planning (a literal is parsed now).
pub fn planned_options(function: &str, args: &ReturnFieldArgs, position: usize) -> Result<()> {
    let Some(f) = args.arg_fields.get(position) else {
        return Ok(());
    };
    if !matches!(f.data_type(), DataType::Struct(_)) {
        return plan_err!(
            "{function}: options must be a struct such as named_struct('max_tokens', 128), got {}",
            f.data_type()
        );
    }
    if let Some(Some(options)) = args.scalar_arguments.get(position) {
        translate_options(function, Some(options)).map_err(DataFusionError::Plan)?;
    }
    Ok(())
}

/// The options argument at `position` of a call (defaults when absent).
pub fn executed_options(
    function: &str,
    args: &ScalarFunctionArgs,
    position: usize,
) -> Result<TranslateOptions> {
    match args.args.get(position) {
        Some(ColumnarValue::Scalar(s)) => {
            translate_options(function, Some(s)).map_err(DataFusionError::Execution)
        }
        Some(_) => exec_err!("{function}: options must be a literal"),
        None => translate_options(function, None).map_err(DataFusionError::Execution),
    }
}

/// Translates every request (None stays None) with the call's model, in one generation batch.
pub async fn translate(
    call: &Call<'_>,
    function: &str,
    requests: &[Option<Request>],
    options: &TranslateOptions,
) -> Result<Vec<Option<String>>> {
    crate::models::translation::translate(
        function,
        call.model(function).await?,
        call.spec,
        requests,
        &options.prompt,
        &options.generate,
    )
    .await
}

/// The `ai_translate` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AiTranslate {
    signature: Signature,
}

impl Default for AiTranslate {
    fn default() -> Self {
        Self {
            signature: Signature::one_of(
                vec![
                    TypeSignature::Any(3),
                    TypeSignature::Any(4),
                    TypeSignature::Any(5),
                ],
                Volatility::Volatile,
            ),
        }
    }
}

#[async_trait::async_trait]
impl ModelFunction for AiTranslate {
    const NAME: &'static str = "ai_translate";
    const NEEDS: Option<Capability> = Some(Capability::Translate);

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn plan(&self, call: &Planning<'_>) -> Result<DataType> {
        let mut texts = vec![(1, "the text"), (2, "target_lang")];
        if call.args.arg_fields.len() > 3 {
            texts.push((3, "source_lang"));
        }
        call.text_args(&texts)?;
        planned_options(Self::NAME, call.args, 4)?;
        Ok(DataType::Utf8)
    }

    async fn run(&self, call: &Call<'_>) -> Result<ArrayRef> {
        let name = Self::NAME;
        let args = call.args;
        let rows = args.number_rows;
        let options = executed_options(name, args, 4)?;
        let texts = string_arg(&args.args[1], rows)?;
        let targets = string_arg(&args.args[2], rows)?;
        let sources = match args.args.get(3) {
            Some(s) => Some(string_arg(s, rows)?),
            None => None,
        };
        let requests: Vec<Option<Request>> = (0..rows)
            .map(|i| {
                (!texts.is_null(i) && !targets.is_null(i)).then(|| Request {
                    text: texts.value(i).to_string(),
                    target: targets.value(i).to_string(),
                    source: sources
                        .as_ref()
                        .filter(|s| !s.is_null(i))
                        .map(|s| s.value(i).to_string()),
                })
            })
            .collect();
        let out = translate(call, name, &requests, &options).await?;
        Ok(Arc::new(StringArray::from(out)) as ArrayRef)
    }
}
