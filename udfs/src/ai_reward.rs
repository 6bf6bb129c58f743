//! `ai_reward(model, prompt, response)`: the score a sequence-classification reward model
//! gives a response to a prompt.
//!
//! ```sql
//! CREATE MODEL rm FROM 'models/my-reward-model' OPTIONS (label 'LABEL_0');
//! SELECT prompt, response, ai_reward('rm', prompt, response) AS score FROM samples;
//! ```
//!
//! Encoder models (BERT family) read (prompt, response) as a sentence pair; decoder models
//! (Qwen2) read the conversation [user: prompt, assistant: response] rendered with the
//! model's chat template, scored at its last non-padding token, as transformers does. The
//! score is the logit of the model's single label, or of the label named in CREATE MODEL
//! OPTIONS (label '...'). NULL prompt or response gives NULL.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{Signature, Volatility};

use crate::common::function_args::model_err;
use crate::common::model_function::{Call, ModelFunction, Planning};
use crate::common::text::string_arg;
use crate::models::encoding::{self, label_index};
use crate::models::model::Capability;

/// The `ai_reward` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AiReward {
    signature: Signature,
}

impl Default for AiReward {
    fn default() -> Self {
        Self {
            // Any, not string(3): see function_args::text_args.
            signature: Signature::any(3, Volatility::Volatile),
        }
    }
}

#[async_trait::async_trait]
impl ModelFunction for AiReward {
    const NAME: &'static str = "ai_reward";
    const NEEDS: Option<Capability> = Some(Capability::Score);

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn plan(&self, call: &Planning<'_>) -> Result<DataType> {
        call.text_args(&[(1, "the prompt"), (2, "the response")])?;
        if crate::models::remote::is_remote(&call.spec.uri) {
            // The server has the weights and their single score.
            return Ok(DataType::Float64);
        }
        let info = call
            .registry
            .info(&call.spec)
            .map_err(|e| model_err(Self::NAME, e))?;
        label_index(&call.spec, &info)
            .map_err(|m| DataFusionError::Plan(format!("ai_reward: {m}")))?;
        Ok(DataType::Float64)
    }

    async fn run(&self, call: &Call<'_>) -> Result<ArrayRef> {
        let prompts = string_arg(&call.args.args[1], call.rows())?;
        let responses = string_arg(&call.args.args[2], call.rows())?;
        if let Some(remote) = call
            .registry
            .remote(call.spec)
            .map_err(|e| model_err(Self::NAME, e))?
        {
            // A reward model served with vLLM's pooling runner scores the conversation.
            use crate::models::remote_scoring::one_per_row;
            let requests = (0..call.rows())
                .filter(|&i| prompts.is_valid(i) && responses.is_valid(i))
                .map(|i| {
                    let messages = serde_json::json!([
                        {"role": "user", "content": prompts.value(i)},
                        {"role": "assistant", "content": responses.value(i)},
                    ]);
                    let remote = &remote;
                    (i, async move { remote.reward(&messages).await })
                })
                .collect();
            let scores = one_per_row(Self::NAME, &remote, call.rows(), requests, |i| {
                crate::models::values::row_label(prompts.value(i))
            })
            .await?;
            return Ok(Arc::new(Float64Array::from(scores)));
        }
        let scores = encoding::score(
            Self::NAME,
            call.model(Self::NAME).await?,
            prompts,
            responses,
            call.settings.max_batch_tokens,
        )
        .await?;
        Ok(Arc::new(Float64Array::from(scores)))
    }
}
