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

use crate::common::chat::ChatPrompts;
use crate::common::model_call::{
    SharedRegistry, blocking, loaded_decoder, model_err, planned_model,
};
use crate::models::decode::{Decoder, Sampler, Watch};
use crate::models::{ModelRegistry, ModelSpec};

/// Generation options from the optional struct argument.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Sampling temperature; 0 is greedy.
    pub temperature: f64,
    /// Nucleus mass.
    pub top_p: Option<f64>,
    /// Top-k.
    pub top_k: Option<usize>,
    /// Most new tokens.
    pub max_tokens: usize,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Run seed.
    pub seed: u64,
    /// Apply the chat template.
    pub chat: bool,
    /// Keep the end of a prompt too long for the context (and max_tokens) instead of failing.
    pub truncate: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: None,
            top_k: None,
            max_tokens: 256,
            stop: Vec::new(),
            seed: 0,
            chat: true,
            truncate: false,
        }
    }
}

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
pub fn parse_options(f: &str, options: Option<&ScalarValue>) -> Result<GenerateOptions, String> {
    parse_options_with(f, options, &[]).map(|(o, _)| o)
}

/// Options of a function that takes generation options and some of its own (`extra`, returned
/// by name as given).
#[allow(clippy::type_complexity)]
pub fn parse_options_with(
    f: &str,
    options: Option<&ScalarValue>,
    extra: &[&str],
) -> Result<(GenerateOptions, Vec<(String, ScalarValue)>), String> {
    let mut o = GenerateOptions::default();
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

/// FNV-1a: a stable hash, so a row's seed is the same in every build and on every machine.
pub fn row_seed(prompt: &str, sample: u64, seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt
        .as_bytes()
        .iter()
        .chain(&sample.to_le_bytes())
        .chain(&seed.to_le_bytes())
    {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
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
        planned_model(self.name(), &self.registry.0, &args)?;
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
            None => GenerateOptions::default(),
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

/// Generates `n` samples for every row of `prompts` (None for NULL prompts): chat-templated
/// unless options say otherwise, seeded per (prompt text, sample index, run seed), cut at the
/// first stop string. Every row is handed to the model's worker before any answer is awaited,
/// so the worker batches the rows of this call with each other and with other partitions'.
pub(crate) async fn generate_rows(
    name: &str,
    decoder: &Decoder,
    spec: &ModelSpec,
    prompts: &dyn Array,
    options: &GenerateOptions,
    n: usize,
) -> Result<Vec<Option<Vec<String>>>> {
    let chat = ChatPrompts::new(name, spec, &decoder.info)?;
    // A NULL literal has no physical null mask: ask for logical nulls.
    let nulls = prompts.logical_nulls();
    let mut texts = Vec::with_capacity(prompts.len());
    for i in 0..prompts.len() {
        if nulls.as_ref().is_some_and(|m| m.is_null(i)) {
            texts.push(None);
        } else {
            texts.push(Some(chat.prompt_text(name, prompts, i, options.chat)?));
        }
    }
    let tokenizer = decoder.tokenizer.clone();
    let to_tokenize = texts.clone();
    let f = name.to_string();
    let ids: Vec<Option<Vec<u32>>> = blocking(name, move || {
        to_tokenize
            .into_iter()
            .map(|t| {
                t.map(|t| {
                    tokenizer
                        .encode(t, false)
                        .map(|e| e.get_ids().to_vec())
                        .map_err(|e| DataFusionError::Execution(format!("{f}: tokenizer: {e}")))
                })
                .transpose()
            })
            .collect()
    })
    .await?;
    let context = decoder.info.context;
    if options.truncate && options.max_tokens >= context {
        // Truncating the prompt to fit would keep one token and decode thousands. (Without
        // truncate, the worker caps each answer at the room the prompt leaves.)
        return exec_err!(
            "{name}: max_tokens {} is at or above model '{}''s context of {context} tokens: lower max_tokens to leave room for the prompt",
            options.max_tokens,
            spec.name
        );
    }
    let watch = Watch {
        stop: options.stop.clone(),
        tokenizer: Some(Arc::clone(&decoder.tokenizer)),
        counter: crate::common::calls::current_call(),
    };
    let mut pending = Vec::with_capacity(ids.len());
    for (row, (ids, text)) in ids.into_iter().zip(&texts).enumerate() {
        let (Some(mut ids), Some(text)) = (ids, text) else {
            pending.push(None);
            continue;
        };
        // Raw completions of models that expect BOS (Gemma) get it; chat templates write it.
        if !options.chat
            && let Some(bos) = decoder.info.add_bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        if options.truncate && ids.len() + options.max_tokens > context {
            // Keep the end (the question and the generation prompt) and a leading BOS.
            let keep = context.saturating_sub(options.max_tokens).max(1);
            let bos = decoder.tokenizer.token_to_id(&decoder.info.bos_token);
            let lead = usize::from(bos.is_some() && ids.first() == bos.as_ref() && keep > 1);
            let tail = ids.split_off(ids.len() - (keep - lead));
            ids.truncate(lead);
            ids.extend(tail);
        }
        if ids.len() >= context {
            return exec_err!(
                "{name}: {}: the prompt has {} tokens but model '{}' has a context of {context} (named_struct('truncate', true) keeps the prompt's end)",
                prompt_label(prompts, row),
                ids.len(),
                spec.name
            );
        }
        let samplers = (0..n as u64)
            .map(|k| Sampler {
                temperature: options.temperature,
                top_p: options.top_p,
                top_k: options.top_k,
                max_tokens: options.max_tokens,
                seed: row_seed(text, k, options.seed),
                watch: watch.clone(),
            })
            .collect();
        crate::common::calls::record_tokens(ids.len() as u64, 0);
        pending.push(Some(decoder.generate(ids, samplers)));
    }
    let mut out = Vec::with_capacity(pending.len());
    for p in pending {
        let Some(p) = p else {
            out.push(None);
            continue;
        };
        // Output tokens were counted by the worker as they were produced.
        let samples = p.await.map_err(|e| model_err(name, e))?;
        let mut texts = Vec::with_capacity(n);
        for new in samples {
            let mut answer = decoder
                .tokenizer
                .decode(&new, true)
                .map_err(|e| DataFusionError::Execution(format!("{name}: detokenize: {e}")))?;
            if let Some(cut) = options
                .stop
                .iter()
                .filter_map(|s| answer.find(s.as_str()))
                .min()
            {
                answer.truncate(cut);
            }
            texts.push(answer);
        }
        out.push(Some(texts));
    }
    Ok(out)
}

/// Generates for a call's rows with its model, local (weights on this machine) or remote
/// (an OpenAI-compatible server); see [`generate_rows`] for what a row gets.
pub(crate) async fn generate_for_call(
    name: &str,
    registry: &ModelRegistry,
    args: &ScalarFunctionArgs,
    prompts: &dyn Array,
    options: &GenerateOptions,
    n: usize,
) -> Result<Vec<Option<Vec<String>>>> {
    let spec = crate::common::model_call::executed_model(name, registry, &args.args[0])?;
    if let Some(remote) = registry.remote(&spec).map_err(|e| model_err(name, e))? {
        return generate_remote(name, &remote, prompts, options, n).await;
    }
    let (decoder, spec) = loaded_decoder(name, registry, args).await?;
    generate_rows(name, &decoder, &spec, prompts, options, n).await
}

/// Every row's samples from a remote model, all requests under its concurrency limit at once.
async fn generate_remote(
    name: &str,
    remote: &crate::models::remote::RemoteModel,
    prompts: &dyn Array,
    options: &GenerateOptions,
    n: usize,
) -> Result<Vec<Option<Vec<String>>>> {
    use crate::models::remote::{OnError, Prompt};
    let nulls = prompts.logical_nulls();
    let mut requests = Vec::new();
    for row in 0..prompts.len() {
        if nulls.as_ref().is_some_and(|m| m.is_null(row)) {
            continue;
        }
        let value = crate::common::values::to_template_value(prompts, row)?;
        let json = serde_json::to_value(&value)
            .map_err(|e| DataFusionError::Execution(format!("{name}: {e}")))?;
        let (prompt, seed_text) = match (&json, options.chat) {
            (serde_json::Value::String(t), true) => (
                Prompt::Messages(serde_json::json!([{"role": "user", "content": t}])),
                t.clone(),
            ),
            (serde_json::Value::String(t), false) => (Prompt::Text(t.clone()), t.clone()),
            (_, true) => (Prompt::Messages(json.clone()), json.to_string()),
            (_, false) => {
                return exec_err!(
                    "{name}: with chat false the prompt must be text, not a list of messages"
                );
            }
        };
        for k in 0..n {
            let seed = row_seed(&seed_text, k as u64, options.seed);
            let prompt = prompt.clone();
            requests.push(async move { (row, remote.generate(prompt, options, seed).await) });
        }
    }
    let answers = futures::future::join_all(requests).await;
    let label = |row: usize| prompt_label(prompts, row);
    let mut out: Vec<Option<Vec<String>>> = (0..prompts.len()).map(|_| None).collect();
    let mut failed = vec![false; prompts.len()];
    for (row, answer) in answers {
        match answer {
            Ok(text) if !failed[row] => out[row].get_or_insert_with(Vec::new).push(text),
            Ok(_) => {}
            Err(_) if remote.settings.on_error == OnError::Null => {
                failed[row] = true;
                out[row] = None;
            }
            Err(e) => {
                return exec_err!(
                    "{name}: model '{}' at {}: {}: {e}",
                    remote.name,
                    remote.address(),
                    label(row)
                );
            }
        }
    }
    Ok(out)
}

/// Names a row by the start of its prompt as the user wrote it (text, or a conversation as
/// JSON), which can be searched for in the input.
fn prompt_label(prompts: &dyn Array, row: usize) -> String {
    crate::common::values::to_template_value(prompts, row)
        .ok()
        .and_then(|v| serde_json::to_value(&v).ok())
        .map(|j| match j {
            serde_json::Value::String(t) => crate::common::text::row_label(&t),
            other => crate::common::text::row_label(&other.to_string()),
        })
        .unwrap_or_else(|| format!("row {row}"))
}
