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

use datafusion::arrow::array::Float64Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::logical_expr::async_udf::AsyncScalarUDFImpl;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::common::function_args::{SharedRegistry, model_err, planned_model, resolved_model};
use crate::common::text::string_arg;
use crate::models::ModelRegistry;
use crate::models::encoding::{self, label_index};
use crate::models::model::Capability;

/// The `ai_reward` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AiReward {
    registry: SharedRegistry,
    signature: Signature,
}

impl AiReward {
    /// `ai_reward` over a session's models.
    pub fn new(registry: Arc<ModelRegistry>) -> Self {
        Self {
            registry: SharedRegistry(registry),
            // Any, not string(3): see model_call::text_args.
            signature: Signature::any(3, Volatility::Volatile),
        }
    }
}

impl ScalarUDFImpl for AiReward {
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        crate::docs::documentation(self.name())
    }

    fn name(&self) -> &str {
        "ai_reward"
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
        let spec = planned_model(
            self.name(),
            &self.registry.0,
            &args,
            Some(crate::models::model::Capability::Score),
        )?;
        crate::common::function_args::text_args(
            self.name(),
            &args,
            &[(1, "the prompt"), (2, "the response")],
        )?;
        let info = self
            .registry
            .0
            .info(&spec)
            .map_err(|e| model_err(self.name(), e))?;
        label_index(&spec, &info).map_err(|m| DataFusionError::Plan(format!("ai_reward: {m}")))?;
        Ok(Arc::new(datafusion::arrow::datatypes::Field::new(
            self.name(),
            DataType::Float64,
            true,
        )))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        internal_err!("ai_reward runs asynchronously")
    }
}

#[async_trait::async_trait]
impl AsyncScalarUDFImpl for AiReward {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let rows = args.number_rows;
        let (model, settings) =
            resolved_model(name, &self.registry.0, &args, Capability::Score).await?;
        let prompts = string_arg(&args.args[1], rows)?;
        let responses = string_arg(&args.args[2], rows)?;
        let scores =
            encoding::score(name, &model, prompts, responses, settings.max_batch_tokens).await?;
        Ok(ColumnarValue::Array(Arc::new(Float64Array::from(scores))))
    }
}
