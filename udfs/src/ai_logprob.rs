//! `ai_logprob(model, prompt, response)`: the sum of the response tokens' log-probabilities
//! under a decoder model, given the chat-templated prompt.
//!
//! ```sql
//! SELECT avg(CASE WHEN ai_logprob('policy', prompt, chosen) > ai_logprob('policy', prompt, rejected)
//!            THEN 1.0 ELSE 0.0 END) AS preference_accuracy
//! FROM pairs;
//! ```
//!
//! The prompt (text as a user turn, or a list of {role, content}) is rendered with the model's
//! chat template and its generation prompt, as for ai_generate; the response is tokenized on
//! its own and scored token by token after it (as TRL tokenizes DPO prompts and completions).
//! An empty response scores 0. NULL prompt or response gives NULL.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Builder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, plan_err};
use datafusion::logical_expr::{Signature, Volatility};

use crate::common::function_args::{blocking, model_err};
use crate::common::model_function::{Call, ModelFunction, Planning};
use crate::common::text::string_arg;
use crate::models::chat::ChatPrompts;
use crate::models::model::Capability;

/// The `ai_logprob` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AiLogprob {
    signature: Signature,
}

impl Default for AiLogprob {
    fn default() -> Self {
        Self {
            signature: Signature::any(3, Volatility::Volatile),
        }
    }
}

#[async_trait::async_trait]
impl ModelFunction for AiLogprob {
    const NAME: &'static str = "ai_logprob";
    const NEEDS: Option<Capability> = Some(Capability::Logprob);

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn plan(&self, call: &Planning<'_>) -> Result<DataType> {
        let response = call.args.arg_fields[2].data_type();
        if !matches!(
            response,
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null
        ) {
            return plan_err!("ai_logprob: the response must be text, got {response}");
        }
        Ok(DataType::Float64)
    }

    async fn run(&self, call: &Call<'_>) -> Result<ArrayRef> {
        let name = Self::NAME;
        let args = call.args;
        let rows = args.number_rows;
        if let Some(remote) = call
            .registry
            .remote(call.spec)
            .map_err(|e| model_err(name, e))?
        {
            return remote_logprobs(call, &remote).await;
        }
        let decoder = call
            .model(name)
            .await?
            .decoder(Capability::Logprob)
            .map_err(|e| model_err(name, e))?;
        let chat = ChatPrompts::new(name, call.spec, &decoder.info)?;
        let prompts: ArrayRef = args.args[1].to_array(rows)?;
        let responses = string_arg(&args.args[2], rows)?;
        let prompt_nulls = prompts.logical_nulls();
        let mut out = Float64Builder::with_capacity(rows);
        for i in 0..rows {
            if prompt_nulls.as_ref().is_some_and(|n| n.is_null(i)) || responses.is_null(i) {
                out.append_null();
                continue;
            }
            let text = chat.prompt_text(name, prompts.as_ref(), i, true)?;
            let response = responses.value(i).to_string();
            let tokenizer = decoder.tokenizer.clone();
            let (p, r) = blocking(name, move || {
                let enc = |t: String| {
                    tokenizer
                        .encode(t, false)
                        .map(|e| e.get_ids().to_vec())
                        .map_err(|e| {
                            DataFusionError::Execution(format!("ai_logprob: tokenizer: {e}"))
                        })
                };
                Ok((enc(text)?, enc(response)?))
            })
            .await?;
            crate::models::call_stats::record_tokens((p.len() + r.len()) as u64, 0);
            out.append_value(
                decoder
                    .logprob(p, r)
                    .await
                    .map_err(|e| model_err(name, e))?,
            );
        }
        Ok(Arc::new(out.finish()))
    }
}

/// Every row's log-probability from the server (`remote_scoring.rs`): tokenized there, scored
/// there, all rows at once.
async fn remote_logprobs(
    call: &Call<'_>,
    remote: &crate::models::remote::RemoteModel,
) -> Result<ArrayRef> {
    use crate::models::remote_scoring::{conversation, one_per_row};
    let name = AiLogprob::NAME;
    let rows = call.args.number_rows;
    let prompts: ArrayRef = call.args.args[1].to_array(rows)?;
    let responses = string_arg(&call.args.args[2], rows)?;
    let nulls = prompts.logical_nulls();
    let mut requests = Vec::new();
    for i in 0..rows {
        if nulls.as_ref().is_some_and(|n| n.is_null(i)) || responses.is_null(i) {
            continue;
        }
        let messages = conversation(name, prompts.as_ref(), i)?;
        let response = responses.value(i).to_string();
        requests.push((i, async move {
            let p = remote.tokenize_chat(&messages).await?;
            let r = remote.tokenize_text(&response).await?;
            crate::models::call_stats::record_tokens((p.len() + r.len()) as u64, 0);
            remote.logprob(&p, &r).await
        }));
    }
    let out = one_per_row(name, remote, rows, requests, |i| {
        crate::models::generation::prompt_label(prompts.as_ref(), i)
    })
    .await?;
    Ok(Arc::new(datafusion::arrow::array::Float64Array::from(out)))
}
