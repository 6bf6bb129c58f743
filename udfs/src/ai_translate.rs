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
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, internal_err, plan_err};
use datafusion::logical_expr::async_udf::AsyncScalarUDFImpl;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use minijinja::{Environment, UndefinedBehavior, context};

use crate::ai_generate::parse_options_with;
use crate::common::function_args::{SharedRegistry, planned_model, text_args};
use crate::common::text::string_arg;
use crate::models::ModelRegistry;
use crate::models::types::GenerateParams;

/// The default translation prompt.
pub const DEFAULT_PROMPT: &str = "Translate the following text{% if source_lang %} from {{ source_lang }}{% endif %} into {{ target_lang }}. Reply with the translation only, nothing else.\n\n{{ text }}";

/// Generation options plus the prompt template.
#[derive(Debug, Clone)]
pub struct TranslateOptions {
    /// How to generate.
    pub generate: GenerateParams,
    /// The prompt template.
    pub prompt: String,
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
    render(function, &prompt, "text", "English", Some("French"))?;
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

fn render(
    function: &str,
    template: &str,
    text: &str,
    target: &str,
    source: Option<&str>,
) -> Result<String, String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    crate::models::template::bound(&mut env);
    crate::models::template::render_str(
        &std::sync::Arc::new(env),
        template,
        context! { text => text, target_lang => target, source_lang => source },
    )
    .map_err(|e| format!("{function}: prompt template: {e}"))
}

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

/// Translates every request (None stays None) with the call's model, in one generation batch.
pub async fn translate(
    function: &str,
    registry: &ModelRegistry,
    args: &ScalarFunctionArgs,
    requests: &[Option<Request>],
    options: &TranslateOptions,
) -> Result<Vec<Option<String>>> {
    let spec = crate::common::function_args::executed_model(function, registry, &args.args[0])?;
    let settings = crate::models::PrefflowOptions::from_config(&args.config_options);
    let model = registry
        .resolve(
            &spec,
            &settings,
            crate::models::model::Capability::Translate,
        )
        .await
        .map_err(|e| crate::common::function_args::model_err(function, e))?;
    if let crate::models::model::Model::Marian(marian) = &model {
        // An encoder-decoder translates the text itself; the prompt does not apply.
        let texts = requests
            .iter()
            .map(|r| r.as_ref().map(|r| (r.text.clone(), r.target.clone())))
            .collect();
        return marian
            .translate(texts, options.generate.max_tokens)
            .await
            .map_err(|e| crate::common::function_args::model_err(function, e));
    }
    let prompts = requests
        .iter()
        .map(|r| {
            r.as_ref()
                .map(|r| {
                    render(
                        function,
                        &options.prompt,
                        &r.text,
                        &r.target,
                        r.source.as_deref(),
                    )
                    .map_err(DataFusionError::Execution)
                })
                .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    let prompts = StringArray::from(prompts);
    // The model resolved above generates the replies (a decoder or a server).
    let replies = crate::models::generation::generate(
        function,
        &model,
        &spec,
        &prompts,
        &options.generate,
        1,
    )
    .await?;
    Ok(replies
        .into_iter()
        .map(|r| r.map(|mut t| t.remove(0).trim().to_string()))
        .collect())
}

/// The `ai_translate` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AiTranslate {
    registry: SharedRegistry,
    signature: Signature,
}

impl AiTranslate {
    /// `ai_translate` over a session's models.
    pub fn new(registry: Arc<ModelRegistry>) -> Self {
        Self {
            registry: SharedRegistry(registry),
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

impl ScalarUDFImpl for AiTranslate {
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        crate::docs::documentation(self.name())
    }

    fn name(&self) -> &str {
        "ai_translate"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        planned_model(
            self.name(),
            &self.registry.0,
            &args,
            Some(crate::models::model::Capability::Translate),
        )?;
        let mut texts = vec![(1, "the text"), (2, "target_lang")];
        if args.arg_fields.len() > 3 {
            texts.push((3, "source_lang"));
        }
        text_args(self.name(), &args, &texts)?;
        planned_options(self.name(), &args, 4)?;
        Ok(Arc::new(Field::new(self.name(), DataType::Utf8, true)))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        internal_err!("ai_translate runs asynchronously")
    }
}

#[async_trait::async_trait]
impl AsyncScalarUDFImpl for AiTranslate {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let rows = args.number_rows;
        let options = executed_options(name, &args, 4)?;
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
        let out = translate(name, &self.registry.0, &args, &requests, &options).await?;
        Ok(ColumnarValue::Array(
            Arc::new(StringArray::from(out)) as ArrayRef
        ))
    }
}
