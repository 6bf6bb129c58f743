//! `ai_generate(model, prompt [, options])`: text from a decoder model.
//!
//! ```sql
//! CREATE MODEL policy FROM 'models/smollm2-135m-instruct';
//! SELECT ai_generate('policy', question, named_struct('max_tokens', 64)) FROM prompts;
//! SELECT ai_generate('policy', [named_struct('role', 'system', 'content', 'Be brief.'),
//!                              named_struct('role', 'user', 'content', q)]) FROM t;
//! ```
//!
//! A text prompt is a user turn; a list of {role, content} structs is a conversation. Either is
//! rendered with the model's chat template (GGUF metadata, or CREATE MODEL OPTIONS
//! (chat_template '...')), unless the options say `chat` false (raw completion). Options, a
//! struct literal: temperature (0 = greedy, the default; at most 2), top_p, top_k, max_tokens
//! (default 256), stop (a string or list of strings), seed (default 0), chat (default true),
//! truncate (default false: a prompt over the model's context is an error naming the row; true
//! keeps the prompt's last tokens so that prompt and max_tokens fit). An unknown option is an
//! error. Each row samples with a seed made from its prompt text, the
//! sample index and the run seed, so results do not depend on batch size, partitions or
//! restarts. Generation stops at the model's end-of-turn tokens, max_tokens or a stop string
//! (not included). NULL prompt gives NULL.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, internal_err, plan_err};
use datafusion::logical_expr::async_udf::AsyncScalarUDFImpl;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};

use crate::common::function_args::{SharedRegistry, model_err, planned_model};
use crate::models::model::Capability;
use crate::models::types::GenerateParams;
use crate::models::{ModelRegistry, PrefflowOptions};

fn number(f: &str, key: &str, v: &ScalarValue) -> Result<f64, String> {
    let c = v
        .cast_to(&DataType::Float64)
        .map_err(|_| format!("{f}: option {key} must be a number, got {v}"))?;
    match c {
        ScalarValue::Float64(Some(x)) => Ok(x),
        _ => Err(format!("{f}: option {key} must be a number, got {v}")),
    }
}

/// Parses an options struct; every message names the function and the option.
pub fn parse_options(f: &str, options: Option<&ScalarValue>) -> Result<GenerateParams, String> {
    parse_options_with(f, options, &[]).map(|(o, _)| o)
}

/// Options of a function that takes generation options and some of its own (`extra`, returned
/// by name as given).
#[allow(clippy::type_complexity)]
pub fn parse_options_with(
    f: &str,
    options: Option<&ScalarValue>,
    extra: &[&str],
) -> Result<(GenerateParams, Vec<(String, ScalarValue)>), String> {
    let mut o = GenerateParams::default();
    let mut own = Vec::new();
    let Some(options) = options else {
        return Ok((o, own));
    };
    let ScalarValue::Struct(s) = options else {
        return Err(format!(
            "{f}: options must be a struct literal such as named_struct('temperature', 0.7), got {options}"
        ));
    };
    for (field, column) in s.fields().iter().zip(s.columns()) {
        let key = field.name().as_str();
        let v = ScalarValue::try_from_array(column, 0).map_err(|e| e.to_string())?;
        match key {
            "temperature" => {
                o.temperature = number(f, key, &v)?;
                if !(0.0..=2.0).contains(&o.temperature) {
                    return Err(format!(
                        "{f}: temperature must be between 0 and 2, got {}",
                        o.temperature
                    ));
                }
            }
            "top_p" => {
                let p = number(f, key, &v)?;
                if !(p > 0.0 && p <= 1.0) {
                    return Err(format!("{f}: top_p must be in (0, 1], got {p}"));
                }
                o.top_p = Some(p);
            }
            "top_k" | "max_tokens" | "seed" => {
                let n = number(f, key, &v)?;
                if n < 0.0 || n.fract() != 0.0 || (key != "seed" && n < 1.0) {
                    return Err(format!(
                        "{f}: {key} must be a whole number{}, got {n}",
                        if key == "seed" { "" } else { " of at least 1" }
                    ));
                }
                match key {
                    "top_k" => o.top_k = Some(n as usize),
                    "max_tokens" => o.max_tokens = n as usize,
                    _ => o.seed = n as u64,
                }
            }
            "stop" => {
                o.stop = match &v {
                    ScalarValue::Utf8(Some(x))
                    | ScalarValue::Utf8View(Some(x))
                    | ScalarValue::LargeUtf8(Some(x)) => vec![x.clone()],
                    ScalarValue::List(l) => {
                        let values = l.value(0);
                        let strings = datafusion::arrow::compute::cast(&values, &DataType::Utf8)
                            .map_err(|e| e.to_string())?;
                        strings
                            .as_string::<i32>()
                            .iter()
                            .flatten()
                            .map(str::to_string)
                            .collect()
                    }
                    other => {
                        return Err(format!(
                            "{f}: stop must be a string or a list of strings, got {other}"
                        ));
                    }
                };
                // An empty stop string would match at once: every answer would be empty.
                if o.stop.iter().any(|s| s.is_empty()) {
                    return Err(format!("{f}: a stop string is empty"));
                }
            }
            "chat" | "truncate" => {
                let b = match v {
                    ScalarValue::Boolean(Some(b)) => b,
                    other => return Err(format!("{f}: {key} must be true or false, got {other}")),
                };
                if key == "chat" {
                    o.chat = b;
                } else {
                    o.truncate = b;
                }
            }
            other if extra.contains(&other) => own.push((other.to_string(), v)),
            other => {
                let mut known =
                    "temperature, top_p, top_k, max_tokens, stop, seed, chat, truncate".to_string();
                for e in extra {
                    known.push_str(", ");
                    known.push_str(e);
                }
                return Err(format!("{f}: unknown option '{other}' (known: {known})"));
            }
        }
    }
    Ok((o, own))
}

/// The `ai_generate` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AiGenerate {
    registry: SharedRegistry,
    signature: Signature,
}

impl AiGenerate {
    /// `ai_generate` over a session's models.
    pub fn new(registry: Arc<ModelRegistry>) -> Self {
        Self {
            registry: SharedRegistry(registry),
            signature: Signature::one_of(
                vec![TypeSignature::Any(2), TypeSignature::Any(3)],
                Volatility::Volatile,
            ),
        }
    }
}

fn is_prompt_type(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null => true,
        DataType::List(f) | DataType::LargeList(f) => matches!(f.data_type(), DataType::Struct(_)),
        _ => false,
    }
}

impl ScalarUDFImpl for AiGenerate {
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        crate::docs::documentation(self.name())
    }

    fn name(&self) -> &str {
        "ai_generate"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(
        &self,
        args: ReturnFieldArgs,
    ) -> Result<datafusion::arrow::datatypes::FieldRef> {
        planned_model(
            self.name(),
            &self.registry.0,
            &args,
            Some(crate::models::model::Capability::Generate),
        )?;
        let prompt = args.arg_fields[1].data_type();
        if !is_prompt_type(prompt) {
            return plan_err!(
                "ai_generate: the prompt must be text or a list of {{role, content}} structs, got {prompt}"
            );
        }
        // named_struct(...) is folded to a literal after this point; a literal is checked now,
        // anything else when it runs.
        if let Some(Some(options)) = args.scalar_arguments.get(2) {
            parse_options(self.name(), Some(options)).map_err(DataFusionError::Plan)?;
        }
        if let Some(f) = args.arg_fields.get(2)
            && !matches!(f.data_type(), DataType::Struct(_))
        {
            return plan_err!(
                "ai_generate: options must be a struct such as named_struct('temperature', 0.7), got {}",
                f.data_type()
            );
        }
        Ok(Arc::new(datafusion::arrow::datatypes::Field::new(
            self.name(),
            DataType::Utf8,
            true,
        )))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        internal_err!("ai_generate runs asynchronously")
    }
}

#[async_trait::async_trait]
impl AsyncScalarUDFImpl for AiGenerate {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let rows = args.number_rows;
        let options = match args.args.get(2) {
            Some(ColumnarValue::Scalar(s)) => {
                parse_options(name, Some(s)).map_err(DataFusionError::Execution)?
            }
            Some(_) => return exec_err!("ai_generate: options must be a literal"),
            None => GenerateParams::default(),
        };
        let prompts: ArrayRef = args.args[1].to_array(rows)?;
        let samples =
            generate_for_call(name, &self.registry.0, &args, prompts.as_ref(), &options, 1).await?;
        let mut out = StringBuilder::with_capacity(rows, rows * 64);
        for row in samples {
            match row {
                Some(mut texts) => out.append_value(texts.remove(0)),
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Generates for a call's rows with its model (see [`crate::models::generation::generate`]):
/// the SQL-facing part, reading the model argument and the session's settings.
pub(crate) async fn generate_for_call(
    name: &str,
    registry: &ModelRegistry,
    args: &ScalarFunctionArgs,
    prompts: &dyn Array,
    options: &GenerateParams,
    n: usize,
) -> Result<Vec<Option<Vec<String>>>> {
    let spec = crate::common::function_args::executed_model(name, registry, &args.args[0])?;
    let settings = PrefflowOptions::from_config(&args.config_options);
    let model = registry
        .resolve(&spec, &settings, Capability::Generate)
        .await
        .map_err(|e| model_err(name, e))?;
    crate::models::generation::generate(name, &model, &spec, prompts, options, n).await
}
