//! `ai_embed(model, text [, options])`: a sentence embedding from an encoder model.
//!
//! ```sql
//! CREATE MODEL minilm FROM 'models/all-minilm-l6-v2';
//! SELECT question, ai_embed('minilm', question) AS embedding FROM questions;
//! -- Instruction embedders (Qwen3-Embedding, e5): a named prompt of the model, or any text.
//! SELECT ai_embed('qwen3e', question, named_struct('prompt_name', 'query')) FROM questions;
//! SELECT ai_embed('e5', passage, named_struct('prompt', 'passage: ')) FROM passages;
//! ```
//!
//! Options: `prompt_name` (one of the `prompts` of the model's config_sentence_transformers.json;
//! its `default_prompt_name` applies when none is given) or `prompt` (the text itself), put
//! before every sentence as sentence-transformers' `encode(prompt_name=...)` does.
//! Returns FixedSizeList<Float32> of the model's width. Pooling (mean / CLS / max) and L2
//! normalisation follow the model's sentence-transformers files (1_Pooling/config.json,
//! modules.json); inputs are truncated at its max_seq_length. Rows from every partition are
//! batched together on the model's worker thread; a row's embedding does not depend on the
//! batch it ran in (beyond float rounding). NULL text gives NULL.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, FixedSizeListArray, Float32Array};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{DataFusionError, Result, ScalarValue, internal_err};
use datafusion::logical_expr::{ColumnarValue, Signature, TypeSignature, Volatility};

use crate::common::model_function::{Call, ModelFunction, Planning};
use crate::common::text::string_arg;
use crate::models::encoding as embedding;
use crate::models::model::Capability;

/// The `ai_embed` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AiEmbed {
    signature: Signature,
}

impl Default for AiEmbed {
    fn default() -> Self {
        Self {
            // Volatile: it must run in the executor (on the model's worker), never be folded
            // as a constant while planning.
            // Any, not string(2): see function_args::text_args.
            signature: Signature::one_of(
                vec![TypeSignature::Any(2), TypeSignature::Any(3)],
                Volatility::Volatile,
            ),
        }
    }
}

/// The Arrow type of an embedding of `dim` values.
pub fn embedding_type(dim: usize) -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new("item", DataType::Float32, true)),
        dim as i32,
    )
}

#[async_trait::async_trait]
impl ModelFunction for AiEmbed {
    const NAME: &'static str = "ai_embed";
    const NEEDS: Option<Capability> = Some(Capability::Embed);

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn plan(&self, call: &Planning<'_>) -> Result<DataType> {
        call.text_args(&[(1, "the text")])?;
        let width = embedding::width(call.registry, &call.spec)
            .map_err(|e| DataFusionError::Plan(format!("ai_embed: {e}")))?;
        if let Some(f) = call.args.arg_fields.get(2)
            && !matches!(f.data_type(), DataType::Struct(_))
        {
            return Err(DataFusionError::Plan(format!(
                "ai_embed: options must be a struct such as named_struct('prompt_name', 'query'), got {}",
                f.data_type()
            )));
        }
        // A literal's prompt is checked now (an unknown prompt_name fails before any row).
        if let Some(Some(options)) = call.args.scalar_arguments.get(2) {
            let (name, text) = prompt_options(options).map_err(DataFusionError::Plan)?;
            embedding::prompt(call.registry, &call.spec, name.as_deref(), text.as_deref())
                .map_err(|e| DataFusionError::Plan(format!("ai_embed: {e}")))?;
        }
        Ok(embedding_type(width))
    }

    async fn run(&self, call: &Call<'_>) -> Result<ArrayRef> {
        let name = Self::NAME;
        let dim = match call.args.return_field.data_type() {
            DataType::FixedSizeList(_, n) => *n as usize,
            other => return internal_err!("ai_embed: planned as {other}"),
        };
        let texts = string_arg(&call.args.args[1], call.rows())?;
        let (prompt_name, prompt_text) = match call.args.args.get(2) {
            Some(ColumnarValue::Scalar(s)) => {
                prompt_options(s).map_err(DataFusionError::Execution)?
            }
            Some(_) => return internal_err!("ai_embed: options must be a literal"),
            None => (None, None),
        };
        let prefix = embedding::prompt(
            call.registry,
            call.spec,
            prompt_name.as_deref(),
            prompt_text.as_deref(),
        )
        .map_err(|e| DataFusionError::Execution(format!("ai_embed: {e}")))?;
        let texts = if prefix.is_empty() {
            texts
        } else {
            texts
                .iter()
                .map(|t| t.map(|t| format!("{prefix}{t}")))
                .collect()
        };
        let vectors = embedding::embed(
            name,
            call.model(name).await?,
            texts,
            dim,
            call.settings.max_batch_tokens,
        )
        .await?;
        let valid: Vec<bool> = vectors.iter().map(Option::is_some).collect();
        let values: Vec<f32> = vectors
            .into_iter()
            .flat_map(|v| v.unwrap_or_else(|| vec![0.0; dim]))
            .collect();
        let array = FixedSizeListArray::try_new(
            Arc::new(Field::new("item", DataType::Float32, true)),
            dim as i32,
            Arc::new(Float32Array::from(values)) as ArrayRef,
            Some(NullBuffer::from(valid)),
        )?;
        Ok(Arc::new(array))
    }
}

/// `prompt_name` and `prompt` of ai_embed's options struct.
fn prompt_options(
    options: &ScalarValue,
) -> std::result::Result<(Option<String>, Option<String>), String> {
    let ScalarValue::Struct(s) = options else {
        return Err(format!(
            "ai_embed: options must be a struct such as named_struct('prompt_name', 'query'), got {options}"
        ));
    };
    let (mut name, mut text) = (None, None);
    for (field, column) in s.fields().iter().zip(s.columns()) {
        let v = ScalarValue::try_from_array(column, 0).map_err(|e| e.to_string())?;
        let value = match &v {
            ScalarValue::Utf8(Some(t))
            | ScalarValue::Utf8View(Some(t))
            | ScalarValue::LargeUtf8(Some(t)) => t.clone(),
            other => {
                return Err(format!(
                    "ai_embed: option {} must be text, got {other}",
                    field.name()
                ));
            }
        };
        match field.name().as_str() {
            "prompt_name" => name = Some(value),
            "prompt" => text = Some(value),
            other => {
                return Err(format!(
                    "ai_embed: unknown option '{other}' (known: prompt_name, prompt)"
                ));
            }
        }
    }
    if name.is_some() && text.is_some() {
        return Err("ai_embed: give prompt_name or prompt, not both".to_string());
    }
    Ok((name, text))
}
