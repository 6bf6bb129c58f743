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
use datafusion::common::{DataFusionError, Result, internal_err, plan_err};
use datafusion::logical_expr::async_udf::AsyncScalarUDFImpl;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::common::function_args::{
    SharedRegistry, blocking, executed_model, model_err, planned_model,
};
use crate::common::text::string_arg;
use crate::models::ModelRegistry;
use crate::models::chat::ChatPrompts;

/// The `ai_logprob` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AiLogprob {
    registry: SharedRegistry,
    signature: Signature,
}

impl AiLogprob {
    /// `ai_logprob` over a session's models.
    pub fn new(registry: Arc<ModelRegistry>) -> Self {
        Self {
            registry: SharedRegistry(registry),
            signature: Signature::any(3, Volatility::Volatile),
        }
    }
}

impl ScalarUDFImpl for AiLogprob {
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        crate::docs::documentation(self.name())
    }

    fn name(&self) -> &str {
        "ai_logprob"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn return_field_from_args(
        &self,
        args: ReturnFieldArgs,
    ) -> Result<datafusion::arrow::datatypes::FieldRef> {
        planned_model(
            self.name(),
            &self.registry.0,
            &args,
            Some(crate::models::model::Capability::Logprob),
        )?;
        let response = args.arg_fields[2].data_type();
        if !matches!(
            response,
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null
        ) {
            return plan_err!("ai_logprob: the response must be text, got {response}");
        }
        Ok(Arc::new(datafusion::arrow::datatypes::Field::new(
            self.name(),
            DataType::Float64,
            true,
        )))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        internal_err!("ai_logprob runs asynchronously")
    }
}

#[async_trait::async_trait]
impl AsyncScalarUDFImpl for AiLogprob {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let rows = args.number_rows;
        let spec = executed_model(name, &self.registry.0, &args.args[0])?;
        let settings = crate::models::PrefflowOptions::from_config(&args.config_options);
        let model = self
            .registry
            .0
            .resolve(&spec, &settings, crate::models::model::Capability::Logprob)
            .await
            .map_err(|e| model_err(name, e))?;
        let decoder = model
            .decoder(crate::models::model::Capability::Logprob)
            .map_err(|e| model_err(name, e))?;
        let chat = ChatPrompts::new(name, &spec, &decoder.info)?;
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
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
