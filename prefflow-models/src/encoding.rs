//! The encoder service: embeddings and reward scores for rows of text, from a resolved
//! [`Model`]. Tokenizing (with the chat template for decoder reward models), sending the rows
//! to the encoder's batching worker (or in chunks to a remote server), and matching the answers
//! back to rows live here; the SQL functions (`ai_embed`, `ai_reward`) parse arguments and build
//! Arrow arrays. NULL inputs give NULL outputs and never reach the model.

use datafusion::arrow::array::{Array, StringArray};
use datafusion::common::{DataFusionError, Result};
use minijinja::context;

use super::chat::ChatPrompts;
use super::encode::{Encoded, Task};
use super::error::ModelError;
use super::model::{Capability, Model};
use super::remote::{OnError, RemoteModel};
use super::types::{ModelInfo, ModelSpec};
use crate::boundary::{blocking, model_err};

/// Texts per request to a remote embeddings endpoint.
const REMOTE_CHUNK: usize = 64;

/// How many values a model's embeddings have, known before any row runs: a local encoder's
/// hidden size, or a remote model's declared `dimensions` (a server's width is not known before
/// asking it).
pub fn width(
    registry: &super::registry::ModelRegistry,
    spec: &ModelSpec,
) -> Result<usize, ModelError> {
    match registry.remote(spec)? {
        Some(remote) => remote
            .settings
            .dimensions
            .ok_or_else(|| ModelError::Unsupported {
                model: spec.name.clone(),
                problem: "a remote model needs OPTIONS (dimensions 'N'), its embedding width"
                    .into(),
            }),
        None => Ok(registry.info(spec)?.hidden_size),
    }
}

/// The text put before every sentence: `prompt` as given, the model's named prompt
/// (sentence-transformers' `prompts` in config_sentence_transformers.json, e.g. "query"), or its
/// `default_prompt_name`'s; empty when none applies.
pub fn prompt(
    registry: &super::registry::ModelRegistry,
    spec: &ModelSpec,
    name: Option<&str>,
    text: Option<&str>,
) -> Result<String, ModelError> {
    if let Some(t) = text {
        return Ok(t.to_string());
    }
    if registry.remote(spec)?.is_some() {
        return match name {
            Some(n) => Err(ModelError::Unsupported {
                model: spec.name.clone(),
                problem: format!(
                    "prompt_name '{n}': a remote model's prompts are unknown here; pass the text as named_struct('prompt', '...')"
                ),
            }),
            None => Ok(String::new()),
        };
    }
    let info = registry.info(spec)?;
    let Some(name) = name.map(str::to_string).or(info.default_prompt.clone()) else {
        return Ok(String::new());
    };
    info.prompts.get(&name).cloned().ok_or_else(|| {
        let known: Vec<&str> = info.prompts.keys().map(String::as_str).collect();
        ModelError::Unsupported {
            model: spec.name.clone(),
            problem: format!(
                "it has no prompt named '{name}' (config_sentence_transformers.json names {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        }
    })
}

/// Embeddings for `texts` (NULL gives None), each `dim` values wide.
pub async fn embed(
    function: &str,
    model: &Model,
    texts: StringArray,
    dim: usize,
    max_batch_tokens: usize,
) -> Result<Vec<Option<Vec<f32>>>> {
    if let Model::Remote(remote) = model {
        return embed_remote(function, remote, texts, dim).await;
    }
    let encoder = model
        .encoder(Capability::Embed)
        .map_err(|e| model_err(function, e))?;
    let tokenizer = std::sync::Arc::clone(&encoder.tokenizer);
    let f = function.to_string();
    let (present, encoded) = blocking(function, move || {
        let present: Vec<bool> = texts.iter().map(|t| t.is_some()).collect();
        let encoded = texts
            .iter()
            .flatten()
            .map(|t| {
                tokenizer
                    .encode(t, true)
                    .map(|e| Encoded {
                        ids: e.get_ids().to_vec(),
                        type_ids: e.get_type_ids().to_vec(),
                    })
                    .map_err(|e| DataFusionError::Execution(format!("{f}: tokenizer: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((present, encoded))
    })
    .await?;
    let vectors = run(function, encoder, Task::Embed, encoded, max_batch_tokens).await?;
    let mut it = vectors.into_iter();
    present
        .into_iter()
        .map(|p| {
            if !p {
                return Ok(None);
            }
            let v = it.next().unwrap_or_default();
            if v.len() != dim {
                return Err(DataFusionError::Internal(format!(
                    "{function}: model gave {} values, expected {dim}",
                    v.len()
                )));
            }
            Ok(Some(v))
        })
        .collect()
}

/// Counts the tokens read and runs the rows on the encoder's worker.
async fn run(
    function: &str,
    encoder: &super::model::LoadedModel,
    task: Task,
    encoded: Vec<Encoded>,
    max_batch_tokens: usize,
) -> Result<Vec<Vec<f32>>> {
    crate::call_stats::record_tokens(encoded.iter().map(|e| e.ids.len() as u64).sum(), 0);
    encoder
        .worker
        .run(task, encoded, max_batch_tokens)
        .await
        .map_err(|e| model_err(function, e))
}

/// Embeddings from an OpenAI-compatible server, [`REMOTE_CHUNK`] texts per request, all
/// requests at once; with `on_error 'null'` a failed chunk gives NULLs.
async fn embed_remote(
    function: &str,
    remote: &RemoteModel,
    texts: StringArray,
    dim: usize,
) -> Result<Vec<Option<Vec<f32>>>> {
    let present: Vec<usize> = (0..texts.len()).filter(|&i| texts.is_valid(i)).collect();
    let chunks: Vec<&[usize]> = present.chunks(REMOTE_CHUNK).collect();
    let requests = chunks.iter().map(|rows| {
        let batch: Vec<String> = rows.iter().map(|&i| texts.value(i).to_string()).collect();
        async move {
            let (attempts, answer) =
                crate::row_errors::counting_attempts(remote.embed(&batch)).await;
            for &row in rows.iter() {
                crate::row_errors::row_attempts(row, attempts);
            }
            answer
        }
    });
    let answers = futures::future::join_all(requests).await;
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
    for (rows, answer) in chunks.iter().zip(answers) {
        match answer {
            Ok(vs) => {
                for (&i, v) in rows.iter().zip(vs) {
                    if v.len() != dim {
                        return Err(DataFusionError::Execution(format!(
                            "{function}: model '{}' at {}: row {i}: {} values, but OPTIONS (dimensions '{dim}')",
                            remote.name,
                            remote.address(),
                            v.len()
                        )));
                    }
                    vectors[i] = Some(v);
                }
            }
            Err(e) if remote.settings.on_error != OnError::Error => {
                crate::call_stats::record_failed(rows.len() as u64, &e.to_string());
                for &row in rows.iter() {
                    crate::row_errors::row_failed(row, &e.to_string());
                }
            }
            Err(e) => {
                return Err(DataFusionError::Execution(format!(
                    "{function}: model '{}' at {}: rows {}..={}: {e}",
                    remote.name,
                    remote.address(),
                    rows[0],
                    rows[rows.len() - 1]
                )));
            }
        }
    }
    Ok(vectors)
}

/// Which logit is the score: the single label, or the one named in OPTIONS (label ...).
pub fn label_index(spec: &ModelSpec, info: &ModelInfo) -> Result<usize, String> {
    if !info.architecture.ends_with("ForSequenceClassification") {
        return Err(format!(
            "model '{}' is a {}, not a *ForSequenceClassification reward model",
            spec.name,
            if info.architecture.is_empty() {
                "model without architectures"
            } else {
                &info.architecture
            }
        ));
    }
    match spec.options.get("label") {
        Some(label) => info.labels.iter().position(|l| l == label).ok_or_else(|| {
            format!(
                "model '{}' has no label '{label}' (labels: {})",
                spec.name,
                info.labels.join(", ")
            )
        }),
        None if info.labels.len() <= 1 => Ok(0),
        None => Err(format!(
            "model '{}' has {} labels ({}); choose one with CREATE MODEL ... OPTIONS (label '...')",
            spec.name,
            info.labels.len(),
            info.labels.join(", ")
        )),
    }
}

/// Reward scores for (prompt, response) pairs (a NULL in either gives None): encoders read the pair as a
/// sentence pair, decoder reward models the conversation [user, assistant] through their chat
/// template.
pub async fn score(
    function: &str,
    model: &Model,
    prompts: StringArray,
    responses: StringArray,
    max_batch_tokens: usize,
) -> Result<Vec<Option<f64>>> {
    let encoder = model
        .encoder(Capability::Score)
        .map_err(|e| model_err(function, e))?;
    let label = label_index(&encoder.spec, &encoder.info)
        .map_err(|m| DataFusionError::Execution(format!("{function}: {m}")))?;
    let tokenizer = std::sync::Arc::clone(&encoder.tokenizer);
    let info = encoder.info.clone();
    let spec_name = encoder.spec.name.clone();
    let f = function.to_string();
    let (present, encoded) = blocking(function, move || {
        let chat = match (&info.chat_template, info.is_decoder()) {
            // The tokenizer's own special tokens, as transformers' apply_chat_template renders
            // them (Gemma 2 and Llama 3 reward templates begin with `{{ bos_token }}`).
            (Some(t), true) => Some(ChatPrompts::with_template(
                &f,
                &spec_name,
                Some(t.clone()),
                info.bos_token.clone(),
                info.eos_token.clone(),
            )?),
            (None, true) => {
                return Err(DataFusionError::Execution(format!(
                    "{f}: a decoder reward model needs a chat_template in tokenizer_config.json"
                )));
            }
            _ => None,
        };
        let pairs = prompts.iter().zip(responses.iter()).map(|(p, r)| p.zip(r));
        let present: Vec<bool> = pairs.clone().map(|p| p.is_some()).collect();
        let encoded = pairs
            .flatten()
            .map(|(p, r)| {
                let e = match &chat {
                    Some(c) => {
                        let conversation = minijinja::Value::from(vec![
                            context! { role => "user", content => p },
                            context! { role => "assistant", content => r },
                        ]);
                        tokenizer.encode(c.render(&f, conversation, false)?, false)
                    }
                    None => tokenizer.encode((p, r), true),
                }
                .map_err(|e| DataFusionError::Execution(format!("{f}: tokenizer: {e}")))?;
                Ok(Encoded {
                    ids: e.get_ids().to_vec(),
                    type_ids: e.get_type_ids().to_vec(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((present, encoded))
    })
    .await?;
    let logits = run(function, encoder, Task::Score, encoded, max_batch_tokens).await?;
    let mut it = logits.into_iter();
    Ok(present
        .into_iter()
        .map(|p| {
            p.then(|| it.next().and_then(|l| l.get(label).copied()).map(f64::from))
                .flatten()
        })
        .collect())
}
