//! Scoring on the server: `ai_logprob`, `ai_reward` and `token_count` against a remote model,
//! so an 8B policy's log-probabilities or a 27B reward model need no local weights.
//!
//! - `token_count`: the server's tokenizer through `POST /tokenize` at the server's root
//!   (vLLM and llama.cpp both serve it), without special tokens.
//! - `ai_logprob`: as locally, the prompt rendered with the model's chat template and its
//!   generation prompt and the response tokenized on its own, both by the server's
//!   `/tokenize` (vLLM renders `messages` itself; llama.cpp's `/apply-template` is asked when
//!   it does not), then the concatenated token ids sent to `/v1/completions` with `echo` and
//!   `logprobs` (vLLM's `prompt_logprobs` is read where the answer has it). Because ids are
//!   sent, the prompt / response boundary is exact; it is checked against the answer's
//!   `usage.prompt_tokens` and the number of log-probabilities, never guessed.
//! - `ai_reward`: the conversation [user: prompt, assistant: response] to vLLM's `POST
//!   /pooling` (a reward model served with the pooling runner): one score per row.
//!
//! A server without the endpoint gets an error naming the path asked and what it answered.

use std::future::Future;

use datafusion::common::{DataFusionError, Result};
use serde_json::{Value, json};

use super::remote::{RemoteError, RemoteModel};

fn shape(what: String) -> RemoteError {
    RemoteError::Shape(what)
}

/// The start of a JSON answer, for an error.
fn brief(v: &Value) -> String {
    super::remote::shortened(&v.to_string(), 160)
}

/// Token ids from a `/tokenize` answer: `tokens` as ids or `{id, piece}` objects.
fn token_ids(answer: &Value, path: &str) -> Result<Vec<u64>, RemoteError> {
    let tokens = answer
        .get("tokens")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            shape(format!(
                "POST {path} answered without a tokens list: {}",
                brief(answer)
            ))
        })?;
    tokens
        .iter()
        .map(|t| t.as_u64().or_else(|| t.get("id").and_then(Value::as_u64)))
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(|| {
            shape(format!(
                "POST {path} answered tokens that are not ids: {}",
                brief(answer)
            ))
        })
}

impl RemoteModel {
    /// A text's token ids by the server's tokenizer, without special tokens. The body holds
    /// both vLLM's names (`prompt`, `add_special_tokens`) and llama.cpp's (`content`,
    /// `add_special`); each server ignores the other's.
    pub async fn tokenize_text(&self, text: &str) -> Result<Vec<u64>, RemoteError> {
        let body = json!({
            "model": self.settings.model,
            "prompt": text,
            "add_special_tokens": false,
            "content": text,
            "add_special": false,
            "parse_special": true,
        });
        token_ids(&self.post("/tokenize", &body).await?, "/tokenize")
    }

    /// A conversation's token ids, rendered with the server's chat template and its
    /// generation prompt: vLLM's `/tokenize` with `messages`, else llama.cpp's
    /// `/apply-template` and `/tokenize`.
    pub async fn tokenize_chat(&self, messages: &Value) -> Result<Vec<u64>, RemoteError> {
        let body = json!({
            "model": self.settings.model,
            "messages": messages,
            "add_generation_prompt": true,
            "add_special_tokens": false,
        });
        let first = match self.post("/tokenize", &body).await {
            Ok(answer) => match token_ids(&answer, "/tokenize") {
                Ok(ids) if !ids.is_empty() => return Ok(ids),
                Ok(_) => "no tokens".to_string(),
                Err(e) => e.to_string(),
            },
            Err(e @ RemoteError::Exhausted { .. }) => return Err(e),
            Err(e) => e.to_string(),
        };
        let body = json!({"messages": messages});
        match self.post("/apply-template", &body).await {
            Ok(answer) => match answer.get("prompt").and_then(Value::as_str) {
                Some(text) => self.tokenize_text(text).await,
                None => Err(shape(format!(
                    "POST /apply-template answered without a prompt: {}",
                    brief(&answer)
                ))),
            },
            Err(e) => Err(shape(format!(
                "the server renders no chat template: POST /tokenize with messages gave {first}; POST /apply-template: {e}"
            ))),
        }
    }

    /// The sum of the log-probabilities of `response` after `prompt` (token ids).
    pub async fn logprob(&self, prompt: &[u64], response: &[u64]) -> Result<f64, RemoteError> {
        if response.is_empty() {
            return Ok(0.0);
        }
        if prompt.is_empty() {
            return Err(shape(
                "the prompt has no tokens, so the response's first token has no log-probability"
                    .to_string(),
            ));
        }
        let ids: Vec<u64> = prompt.iter().chain(response).copied().collect();
        let body = json!({
            "model": self.settings.model,
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0,
            "echo": true,
            "logprobs": 1,
        });
        let answer = self.post("completions", &body).await?;
        if let Some(n) = answer
            .pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
            && n != ids.len() as u64
        {
            return Err(shape(format!(
                "/v1/completions counted {n} prompt tokens for the {} sent: the prompt / response boundary cannot be trusted",
                ids.len()
            )));
        }
        let choice = answer
            .pointer("/choices/0")
            .ok_or_else(|| shape("the answer has no choices".to_string()))?;
        let (from, to) = (prompt.len(), ids.len());
        // vLLM's prompt_logprobs: [null, {"id": {"logprob": x, ...}}, ...].
        if let Some(list) = choice.get("prompt_logprobs").and_then(Value::as_array) {
            if list.len() < to {
                return Err(shape(format!(
                    "/v1/completions gave {} prompt log-probabilities for {to} tokens",
                    list.len()
                )));
            }
            let mut sum = 0.0;
            for (i, id) in (from..to).zip(response) {
                let lp = list[i]
                    .get(id.to_string())
                    .and_then(|e| e.get("logprob").or(Some(e)))
                    .and_then(Value::as_f64)
                    .ok_or_else(|| {
                        shape(format!(
                            "/v1/completions gave no log-probability for token {id} at position {i}"
                        ))
                    })?;
                sum += lp;
            }
            return Ok(sum);
        }
        let list = choice
            .pointer("/logprobs/token_logprobs")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                shape(format!(
                    "/v1/completions answered without the prompt's log-probabilities (the server does not support echo with logprobs): {}",
                    brief(choice)
                ))
            })?;
        if list.len() < to {
            return Err(shape(format!(
                "/v1/completions echoed {} log-probabilities for the {to} tokens sent",
                list.len()
            )));
        }
        let mut sum = 0.0;
        for (i, item) in list.iter().enumerate().take(to).skip(from) {
            sum += item.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                shape(format!(
                    "/v1/completions gave {item} as the log-probability of token {i}"
                ))
            })?;
        }
        Ok(sum)
    }

    /// A reward model's score of a conversation, from vLLM's `/pooling`.
    pub async fn reward(&self, messages: &Value) -> Result<f64, RemoteError> {
        let body = json!({"model": self.settings.model, "messages": messages});
        let answer = self.post("/pooling", &body).await?;
        let data = answer.pointer("/data/0/data").ok_or_else(|| {
            shape(format!(
                "POST /pooling answered without data: {}",
                brief(&answer)
            ))
        })?;
        // One score, a list of one, or per-token scores whose last row is the sequence's.
        let mut v = data;
        while let Some(list) = v.as_array() {
            match list.as_slice() {
                [one] => v = one,
                [.., last] if last.is_array() => v = last,
                _ => {
                    return Err(shape(format!(
                        "POST /pooling gave {} scores per row (a model with several labels?): serve a single-label reward model",
                        list.len()
                    )));
                }
            }
        }
        v.as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| shape(format!("POST /pooling gave {} as the score", brief(v))))
    }
}

/// One request per row through [`crate::remote::each_row`] (on_error, attempts, the row's
/// label asked only for an error): each row's single answer.
pub async fn one_per_row<T, Fut>(
    function: &str,
    remote: &RemoteModel,
    rows: usize,
    requests: Vec<(usize, Fut)>,
    label: impl Fn(usize) -> String,
) -> Result<Vec<Option<T>>>
where
    Fut: Future<Output = Result<T, RemoteError>>,
{
    let answers = crate::remote::each_row(function, remote, rows, requests, label).await?;
    Ok(answers
        .into_iter()
        .map(|a| a.and_then(|mut v| v.pop()))
        .collect())
}

/// Row `row` of a prompt column as chat messages: text is one user turn.
pub fn conversation(
    function: &str,
    prompts: &dyn datafusion::arrow::array::Array,
    row: usize,
) -> Result<Value> {
    let value = crate::values::to_template_value(prompts, row)?;
    let json = serde_json::to_value(&value)
        .map_err(|e| DataFusionError::Execution(format!("{function}: {e}")))?;
    Ok(match json {
        Value::String(t) => json!([{"role": "user", "content": t}]),
        other => other,
    })
}
