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

use datafusion::arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::logical_expr::async_udf::AsyncScalarUDFImpl;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::common::function_args::{
    SharedRegistry, blocking, model_err, planned_model, resolved_model,
};
use crate::common::text::string_arg;
use crate::models::ModelRegistry;
use crate::models::encode::{Encoded, Task};
use crate::models::model::{Capability, Model};

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
        let spec = planned_model(self.name(), &self.registry.0, &args)?;
        crate::common::function_args::text_args(self.name(), &args, &[(1, "the text")])?;
        let width = match self.registry.0.remote(&spec).map_err(|e| model_err(self.name(), e))? {
            // A server's embedding width is not known before asking it.
            Some(remote) => remote.settings.dimensions.ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "ai_embed: remote model '{}' needs OPTIONS (dimensions 'N'), its embedding width",
                    spec.name
                ))
            })?,
            None => {
                self.registry
                    .0
                    .info(&spec)
                    .map_err(|e| model_err(self.name(), e))?
                    .hidden_size
            }
        };
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
        let (model, settings) =
            resolved_model(name, &self.registry.0, &args, Capability::Embed).await?;
        if let Model::Remote(remote) = &model {
            return embed_remote(remote, string_arg(&args.args[1], rows)?).await;
        }
        let model = Arc::clone(
            model
                .encoder(Capability::Embed)
                .map_err(|e| model_err(name, e))?,
        );
        let texts = string_arg(&args.args[1], rows)?;
        let tokenizer = Arc::clone(&model.tokenizer);
        let (present, encoded) = blocking(name, move || {
            let mut present = Vec::with_capacity(rows);
            let mut encoded = Vec::with_capacity(rows);
            for i in 0..rows {
                if texts.is_null(i) {
                    present.push(false);
                    continue;
                }
                present.push(true);
                let e = tokenizer
                    .encode(texts.value(i), true)
                    .map_err(|e| DataFusionError::Execution(format!("ai_embed: tokenizer: {e}")))?;
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
        let vectors = model
            .worker
            .run(Task::Embed, encoded, settings.max_batch_tokens)
            .await
            .map_err(|e| model_err(name, e))?;
        let dim = model.info.hidden_size;
        let mut values = Vec::with_capacity(rows * dim);
        let mut it = vectors.into_iter();
        for &p in &present {
            match p {
                true => {
                    let v = it.next().unwrap_or_default();
                    if v.len() != dim {
                        return internal_err!(
                            "ai_embed: model gave {} values, expected {dim}",
                            v.len()
                        );
                    }
                    values.extend(v);
                }
                false => values.extend(std::iter::repeat_n(0.0, dim)),
            }
        }
        let array = FixedSizeListArray::try_new(
            Arc::new(Field::new("item", DataType::Float32, true)),
            dim as i32,
            Arc::new(Float32Array::from(values)) as ArrayRef,
            Some(NullBuffer::from(present)),
        )?;
        Ok(ColumnarValue::Array(Arc::new(array)))
    }
}

/// Embeddings from a remote model: texts in requests of 64, all under its concurrency limit.
async fn embed_remote(
    remote: &crate::models::remote::RemoteModel,
    texts: datafusion::arrow::array::StringArray,
) -> Result<ColumnarValue> {
    use crate::models::remote::OnError;
    let dim = remote.settings.dimensions.unwrap_or(0);
    let present: Vec<usize> = (0..texts.len()).filter(|&i| !texts.is_null(i)).collect();
    let chunks: Vec<Vec<usize>> = present.chunks(64).map(|c| c.to_vec()).collect();
    let requests = chunks.iter().map(|rows| {
        let batch: Vec<String> = rows.iter().map(|&i| texts.value(i).to_string()).collect();
        async move { remote.embed(&batch).await }
    });
    let answers = futures::future::join_all(requests).await;
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
    for (rows, answer) in chunks.iter().zip(answers) {
        match answer {
            Ok(vs) => {
                for (&i, v) in rows.iter().zip(vs) {
                    if v.len() != dim {
                        return Err(DataFusionError::Execution(format!(
                            "ai_embed: model '{}' at {}: row {i}: {} values, but OPTIONS (dimensions '{dim}')",
                            remote.name,
                            remote.address(),
                            v.len()
                        )));
                    }
                    vectors[i] = Some(v);
                }
            }
            Err(_) if remote.settings.on_error == OnError::Null => {}
            Err(e) => {
                return Err(DataFusionError::Execution(format!(
                    "ai_embed: model '{}' at {}: rows {}..={}: {e}",
                    remote.name,
                    remote.address(),
                    rows[0],
                    rows[rows.len() - 1]
                )));
            }
        }
    }
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
