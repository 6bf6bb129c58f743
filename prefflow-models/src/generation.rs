//! The generation service: prompts prepared (chat template or raw text with BOS, truncation to
//! the context), seeded per row (from the prompt's content, the sample index and the run seed,
//! never its position), queued on a local decoder's worker all at once (so the worker batches
//! rows of every call and partition) or fanned out to a remote server, decoded and cut at stop
//! strings. SQL functions parse their options into [`GenerateParams`] and call [`generate`].

use std::sync::Arc;

use datafusion::arrow::array::Array;
use datafusion::common::{DataFusionError, Result, exec_err};

use super::chat::ChatPrompts;
use super::decode::{Decoder, Sampler, Watch};
use super::model::{Capability, Model};
use super::types::{GenerateParams, ModelSpec};
use crate::boundary::{blocking, model_err};

/// A row's seed: a stable hash of its prompt, sample index and the run's seed, the same in
/// every build and on every machine.
pub fn row_seed(prompt: &str, sample: u64, seed: u64) -> u64 {
    super::stable_hash::fnv1a(
        prompt
            .as_bytes()
            .iter()
            .chain(&sample.to_le_bytes())
            .chain(&seed.to_le_bytes()),
    )
}

/// Generates `n` samples for every row of `prompts` (None for NULL prompts): chat-templated
/// unless options say otherwise, seeded per (prompt text, sample index, run seed), cut at the
/// first stop string. Every row is handed to the model's worker before any answer is awaited,
/// so the worker batches the rows of this call with each other and with other partitions'.
async fn generate_rows(
    name: &str,
    decoder: &Decoder,
    spec: &ModelSpec,
    prompts: &dyn Array,
    options: &GenerateParams,
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
        counter: crate::call_stats::current_call(),
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
        crate::call_stats::record_tokens(ids.len() as u64, 0);
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

/// Generates `n` samples for every row of `prompts` with `model` (resolved for
/// [`Capability::Generate`]): a local decoder or a remote OpenAI-compatible server. `function`
/// names the SQL function in errors.
pub async fn generate(
    function: &str,
    model: &Model,
    spec: &ModelSpec,
    prompts: &dyn Array,
    params: &GenerateParams,
    n: usize,
) -> Result<Vec<Option<Vec<String>>>> {
    match model {
        Model::Remote(remote) => generate_remote(function, remote, prompts, params, n).await,
        _ => {
            let decoder = model
                .decoder(Capability::Generate)
                .map_err(|e| model_err(function, e))?;
            generate_rows(function, decoder, spec, prompts, params, n).await
        }
    }
}

/// Every row's samples from a remote model, all requests under its concurrency limit at once.
async fn generate_remote(
    name: &str,
    remote: &crate::remote::RemoteModel,
    prompts: &dyn Array,
    options: &GenerateParams,
    n: usize,
) -> Result<Vec<Option<Vec<String>>>> {
    use crate::remote::Prompt;
    let nulls = prompts.logical_nulls();
    let mut pending = Vec::new();
    for row in 0..prompts.len() {
        if nulls.as_ref().is_some_and(|m| m.is_null(row)) {
            continue;
        }
        let value = crate::values::to_template_value(prompts, row)?;
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
        pending.push((row, prompt, seed_text));
    }
    // Rows that share a context (a system prompt, few-shot turns) go out so that the server's
    // prefix cache keeps it: see `dispatch_order`.
    let keys: Vec<(String, &str)> = pending
        .iter()
        .map(|(_, prompt, seed_text)| (shared_context(prompt), seed_text.as_str()))
        .collect();
    let lanes = remote
        .settings
        .concurrency
        .saturating_mul(remote.endpoint_count());
    let order = dispatch_order(&keys, lanes);
    let mut pending: Vec<Option<_>> = pending.into_iter().map(Some).collect();
    let pending: Vec<_> = order
        .into_iter()
        .filter_map(|i| pending[i].take())
        .collect();
    let mut requests = Vec::new();
    for (row, prompt, seed_text) in pending {
        for k in 0..n {
            let seed = row_seed(&seed_text, k as u64, options.seed);
            requests.push((row, remote.generate(prompt.clone(), options, seed)));
        }
    }
    crate::remote::each_row(name, remote, prompts.len(), requests, |row| {
        prompt_label(prompts, row)
    })
    .await
}

/// What a prompt shares with others: every message but the last (a system prompt, few-shot
/// turns); nothing for a single turn or a raw prompt.
fn shared_context(prompt: &crate::remote::Prompt) -> String {
    match prompt {
        crate::remote::Prompt::Messages(serde_json::Value::Array(m)) if m.len() > 1 => {
            serde_json::Value::from(m[..m.len() - 1].to_vec()).to_string()
        }
        _ => String::new(),
    }
}

/// The order requests go out in, for servers that cache prompt prefixes. Requests are sorted
/// by prompt (rows sharing a prefix become neighbours) and each shared context (`keys[i].0`)
/// is given whole to one of `lanes` lanes (the least-filled); then the lanes take turns. With
/// `lanes` requests in flight, each server slot then sees one context again and again:
/// llama.cpp keeps a prefix per slot, so sending a context's rows back to back would put them
/// on every slot at once and each would prefill it (measured 2.7x slower than this order with
/// 4 slots and 4 system prompts), while a global cache (vLLM) hits after each context's first
/// request either way. Without shared contexts it is the sorted order.
fn dispatch_order(keys: &[(String, &str)], lanes: usize) -> Vec<usize> {
    let mut sorted: Vec<usize> = (0..keys.len()).collect();
    sorted.sort_by(|&a, &b| keys[a].0.cmp(&keys[b].0).then(keys[a].1.cmp(keys[b].1)));
    let count = lanes.clamp(1, keys.len().max(1));
    let mut lanes: Vec<Vec<usize>> = vec![Vec::new(); count];
    // The least-filled lane, by (length when its last context was given, lane).
    let mut free: std::collections::BinaryHeap<std::cmp::Reverse<(usize, usize)>> =
        (0..count).map(|l| std::cmp::Reverse((0, l))).collect();
    let mut k = 0;
    while k < sorted.len() {
        let context = keys[sorted[k]].0.as_str();
        let end = k + sorted[k..]
            .iter()
            .take_while(|&&i| keys[i].0 == context)
            .count();
        let std::cmp::Reverse((_, lane)) = free.pop().expect("at least one lane");
        lanes[lane].extend_from_slice(&sorted[k..end]);
        free.push(std::cmp::Reverse((lanes[lane].len(), lane)));
        k = end;
    }
    let longest = lanes.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|k| lanes.iter().filter_map(move |lane| lane.get(k).copied()))
        .collect()
}

/// Names a row by the start of its prompt as the user wrote it (text, or a conversation as
/// JSON), which can be searched for in the input.
pub fn prompt_label(prompts: &dyn Array, row: usize) -> String {
    crate::values::to_template_value(prompts, row)
        .ok()
        .and_then(|v| serde_json::to_value(&v).ok())
        .map(|j| match j {
            serde_json::Value::String(t) => crate::values::row_label(&t),
            other => crate::values::row_label(&other.to_string()),
        })
        .unwrap_or_else(|| format!("row {row}"))
}

#[cfg(test)]
mod dispatch_tests {
    use super::dispatch_order;

    fn keys(contexts: &[&str]) -> Vec<(String, String)> {
        contexts
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), format!("{c} question {i:02}")))
            .collect()
    }

    fn run(contexts: &[&str], lanes: usize) -> Vec<String> {
        let k = keys(contexts);
        let borrowed: Vec<(String, &str)> =
            k.iter().map(|(c, t)| (c.clone(), t.as_str())).collect();
        let order = dispatch_order(&borrowed, lanes);
        let mut seen = order.clone();
        seen.sort();
        assert_eq!(
            seen,
            (0..contexts.len()).collect::<Vec<_>>(),
            "every request once"
        );
        order.iter().map(|&i| contexts[i].to_string()).collect()
    }

    /// One lane: contexts back to back. As many lanes as contexts: they take turns, so each
    /// of the server's slots sees one context. No shared context: the sorted order.
    #[test]
    fn contexts_stay_on_their_lane() {
        let input = ["A", "B", "A", "C", "B", "A", "C", "B", "C"];
        assert_eq!(run(&input, 1).concat(), "AAABBBCCC");
        assert_eq!(run(&input, 3).concat(), "ABCABCABC");
        // More lanes than contexts changes nothing; fewer pack contexts onto lanes whole.
        assert_eq!(run(&input, 256).concat(), "ABCABCABC");
        assert_eq!(run(&input, 2).concat(), "ABABABCCC");
        let b: Vec<(String, &str)> = vec![
            (String::new(), "zeta"),
            (String::new(), "alpha"),
            (String::new(), "mid"),
        ];
        assert_eq!(dispatch_order(&b, 8), vec![1, 2, 0]);
        assert!(dispatch_order(&[], 8).is_empty());
    }
}
