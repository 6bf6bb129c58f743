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
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::logical_expr::async_udf::AsyncScalarUDFImpl;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::common::function_args::{SharedRegistry, planned_model, resolved_model};
use crate::common::text::string_arg;
use crate::models::ModelRegistry;
use crate::models::encoding as embedding;
use crate::models::model::Capability;

/// The `ai_embed` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AiEmbed {
    registry: SharedRegistry,
    signature: Signature,
}

impl AiEmbed {
    /// `ai_embed` over a session's models.
    pub fn new(registry: Arc<ModelRegistry>) -> Self {
        Self {
            registry: SharedRegistry(registry),
            // Volatile: it must run in the executor (on the model's worker), never be folded
            // as a constant while planning.
            // Any, not string(2): see model_call::text_args.
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

impl ScalarUDFImpl for AiEmbed {
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        crate::docs::documentation(self.name())
    }

    fn name(&self) -> &str {
        "ai_embed"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        internal_err!("ai_embed: return_field_from_args is used instead")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let spec = planned_model(
            self.name(),
            &self.registry.0,
            &args,
            Some(crate::models::model::Capability::Embed),
        )?;
        crate::common::function_args::text_args(self.name(), &args, &[(1, "the text")])?;
        let width = embedding::width(&self.registry.0, &spec)
            .map_err(|e| DataFusionError::Plan(format!("ai_embed: {e}")))?;
        Ok(Arc::new(Field::new(
            self.name(),
            embedding_type(width),
            true,
        )))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        internal_err!("ai_embed runs asynchronously")
    }
}

#[async_trait::async_trait]
impl AsyncScalarUDFImpl for AiEmbed {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let rows = args.number_rows;
        let dim = match args.return_field.data_type() {
            DataType::FixedSizeList(_, n) => *n as usize,
            other => return internal_err!("ai_embed: planned as {other}"),
        };
        let (model, settings) =
            resolved_model(name, &self.registry.0, &args, Capability::Embed).await?;
        let texts = string_arg(&args.args[1], rows)?;
        let vectors = embedding::embed(name, &model, texts, dim, settings.max_batch_tokens).await?;
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
        Ok(ColumnarValue::Array(Arc::new(array)))
    }
}
