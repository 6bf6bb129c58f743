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

use datafusion::arrow::array::{Array, Float64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::logical_expr::async_udf::AsyncScalarUDFImpl;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use minijinja::context;

use crate::common::function_args::{
    SharedRegistry, blocking, loaded_encoder, model_err, planned_model,
};
use crate::common::text::string_arg;
use crate::models::chat::ChatPrompts;
use crate::models::encode::{Encoded, Task};
use crate::models::model::Capability;
use crate::models::registry::ModelInfo;
use crate::models::{ModelRegistry, ModelSpec};

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

/// Which logit is the score: the single label, or the one named in OPTIONS (label ...).
fn label_index(spec: &ModelSpec, info: &ModelInfo) -> Result<usize, String> {
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
        let spec = planned_model(self.name(), &self.registry.0, &args)?;
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
            loaded_encoder(name, &self.registry.0, &args, Capability::Score).await?;
        let label = label_index(&model.spec, &model.info)
            .map_err(|m| DataFusionError::Execution(format!("ai_reward: {m}")))?;
        let prompts = string_arg(&args.args[1], rows)?;
        let responses = string_arg(&args.args[2], rows)?;
        let tokenizer = Arc::clone(&model.tokenizer);
        let info = model.info.clone();
        let spec_name = model.spec.name.clone();
        let (present, encoded) = blocking(name, move || {
            let chat = match (&info.chat_template, info.is_decoder()) {
                (Some(t), true) => Some(ChatPrompts::with_template(
                    "ai_reward",
                    &spec_name,
                    Some(t.clone()),
                    String::new(),
                    String::new(),
                )?),
                (None, true) => {
                    return Err(DataFusionError::Execution(
                        "ai_reward: a decoder reward model needs a chat_template in tokenizer_config.json".to_string(),
                    ));
                }
                _ => None,
            };
            let mut present = Vec::with_capacity(rows);
            let mut encoded = Vec::with_capacity(rows);
            for i in 0..rows {
                if prompts.is_null(i) || responses.is_null(i) {
                    present.push(false);
                    continue;
                }
                present.push(true);
                let (p, r) = (prompts.value(i), responses.value(i));
                let e = match &chat {
                    Some(c) => {
                        let conversation = minijinja::Value::from(vec![
                            context! { role => "user", content => p },
                            context! { role => "assistant", content => r },
                        ]);
                        tokenizer.encode(c.render("ai_reward", conversation, false)?, false)
                    }
                    None => tokenizer.encode((p, r), true),
                }
                .map_err(|e| DataFusionError::Execution(format!("ai_reward: tokenizer: {e}")))?;
                encoded.push(Encoded {
                    ids: e.get_ids().to_vec(),
                    type_ids: e.get_type_ids().to_vec(),
                });
            }
            Ok((present, encoded))
        })
        .await?;
        crate::common::call_stats::record_tokens(
            encoded.iter().map(|e| e.ids.len() as u64).sum(),
            0,
        );
        let logits = model
            .worker
            .run(Task::Score, encoded, settings.max_batch_tokens)
            .await
            .map_err(|e| model_err(name, e))?;
        let mut it = logits.into_iter();
        let scores: Float64Array = present
            .iter()
            .map(|&p| {
                p.then(|| it.next().and_then(|l| l.get(label).copied()).map(f64::from))
                    .flatten()
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(scores)))
    }
}
