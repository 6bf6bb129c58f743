//! `token_count(model, text)`: how many tokens the model's tokenizer makes of a text.
//!
//! ```sql
//! SELECT * FROM prompts WHERE token_count('minilm', prompt) <= 256;
//! ```
//!
//! Counts the text's own tokens: no special tokens, no chat template, no truncation. Only the
//! tokenizer is loaded, never the weights. NULL text gives NULL.

use std::sync::Arc;

use datafusion::arrow::array::{Array, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::logical_expr::async_udf::AsyncScalarUDFImpl;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::common::function_args::{
    SharedRegistry, blocking, executed_model, model_err, planned_model,
};
use crate::common::text::string_arg;
use crate::models::ModelRegistry;

/// The `token_count` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TokenCount {
    registry: SharedRegistry,
    signature: Signature,
}

impl TokenCount {
    /// `token_count` over a session's models.
    pub fn new(registry: Arc<ModelRegistry>) -> Self {
        Self {
            registry: SharedRegistry(registry),
            // Any, not string(2): see model_call::text_args.
            signature: Signature::any(2, Volatility::Volatile),
        }
    }
}

impl ScalarUDFImpl for TokenCount {
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        crate::docs::documentation(self.name())
    }

    fn name(&self) -> &str {
        "token_count"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn return_field_from_args(
        &self,
        args: ReturnFieldArgs,
    ) -> Result<datafusion::arrow::datatypes::FieldRef> {
        // Check the model while planning, so a typo fails before any row is read.
        planned_model(self.name(), &self.registry.0, &args, None)?;
        crate::common::function_args::text_args(self.name(), &args, &[(1, "the text")])?;
        Ok(Arc::new(datafusion::arrow::datatypes::Field::new(
            self.name(),
            DataType::Int64,
            true,
        )))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        internal_err!("token_count runs asynchronously")
    }
}

#[async_trait::async_trait]
impl AsyncScalarUDFImpl for TokenCount {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let rows = args.number_rows;
        let spec = executed_model(name, &self.registry.0, &args.args[0])?;
        let tokenizer = self
            .registry
            .0
            .counting_tokenizer(&spec)
            .map_err(|e| model_err(name, e))?;
        let texts = string_arg(&args.args[1], rows)?;
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
        Ok(ColumnarValue::Array(Arc::new(counts)))
    }
}
