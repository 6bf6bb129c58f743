//! `ai_embed(model, text)`: a sentence embedding from an encoder model.
//!
//! ```sql
//! CREATE MODEL minilm FROM 'models/all-minilm-l6-v2';
//! SELECT question, ai_embed('minilm', question) AS embedding FROM questions;
//! ```
//!
//! Returns FixedSizeList<Float32> of the model's width. Pooling (mean / CLS / max) and L2
//! normalisation follow the model's sentence-transformers files (1_Pooling/config.json,
//! modules.json); inputs are truncated at its max_seq_length. Rows from every partition are
//! batched together on the model's worker thread; a row's embedding does not depend on the
//! batch it ran in (beyond float rounding). NULL text gives NULL.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, FixedSizeListArray, Float32Array};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::logical_expr::{Signature, Volatility};

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
            signature: Signature::any(2, Volatility::Volatile),
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
        Ok(embedding_type(width))
    }

    async fn run(&self, call: &Call<'_>) -> Result<ArrayRef> {
        let name = Self::NAME;
        let dim = match call.args.return_field.data_type() {
            DataType::FixedSizeList(_, n) => *n as usize,
            other => return internal_err!("ai_embed: planned as {other}"),
        };
        let texts = string_arg(&call.args.args[1], call.rows())?;
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
