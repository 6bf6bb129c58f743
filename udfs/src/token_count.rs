//! `token_count(model, text)`: how many tokens the model's tokenizer makes of a text.
//!
//! ```sql
//! SELECT * FROM prompts WHERE token_count('minilm', prompt) <= 256;
//! ```
//!
//! Counts the text's own tokens: no special tokens, no chat template, no truncation. Only the
//! tokenizer is loaded, never the weights. NULL text gives NULL.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{Signature, Volatility};

use crate::common::function_args::{blocking, model_err};
use crate::common::model_function::{Call, ModelFunction, Planning};
use crate::common::text::string_arg;
use crate::models::model::Capability;

/// The `token_count` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TokenCount {
    signature: Signature,
}

impl Default for TokenCount {
    fn default() -> Self {
        Self {
            // Any, not string(2): see function_args::text_args.
            signature: Signature::any(2, Volatility::Volatile),
        }
    }
}

#[async_trait::async_trait]
impl ModelFunction for TokenCount {
    const NAME: &'static str = "token_count";
    // Only the tokenizer is read, never the weights.
    const NEEDS: Option<Capability> = None;
    // Cheaper to count again than to look up.
    const CACHED: bool = false;

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn plan(&self, call: &Planning<'_>) -> Result<DataType> {
        call.text_args(&[(1, "the text")])?;
        Ok(DataType::Int64)
    }

    async fn run(&self, call: &Call<'_>) -> Result<ArrayRef> {
        let name = Self::NAME;
        let rows = call.rows();
        if let Some(remote) = call
            .registry
            .remote(call.spec)
            .map_err(|e| model_err(name, e))?
        {
            // The server's tokenizer, through its /tokenize.
            use crate::models::remote_scoring::one_per_row;
            let texts = string_arg(&call.args.args[1], rows)?;
            let requests = (0..rows)
                .filter(|&i| !texts.is_null(i))
                .map(|i| {
                    let text = texts.value(i).to_string();
                    let remote = &remote;
                    (i, async move {
                        remote.tokenize_text(&text).await.map(|t| t.len() as i64)
                    })
                })
                .collect();
            let counts = one_per_row(name, &remote, rows, requests, |i| {
                crate::models::values::row_label(texts.value(i))
            })
            .await?;
            return Ok(Arc::new(Int64Array::from(counts)));
        }
        let tokenizer = call
            .registry
            .counting_tokenizer(call.spec)
            .map_err(|e| model_err(name, e))?;
        let texts = string_arg(&call.args.args[1], rows)?;
        let counts = blocking(name, move || {
            (0..rows)
                .map(|i| {
                    if texts.is_null(i) {
                        return Ok(None);
                    }
                    let e = tokenizer.encode(texts.value(i), false).map_err(|e| {
                        DataFusionError::Execution(format!("token_count: tokenizer: {e}"))
                    })?;
                    Ok(Some(e.len() as i64))
                })
                .collect::<Result<Int64Array>>()
        })
        .await?;
        Ok(Arc::new(counts))
    }
}
