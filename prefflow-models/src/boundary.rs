//! Where the model layer meets DataFusion: model errors named after the SQL function (keeping
//! the model error as their source), and CPU work moved off the async runtime. Imports only
//! the model layer's error type, so both the model layer and the SQL functions use it.

use datafusion::common::{DataFusionError, Result};

use crate::error::ModelError;

/// A model-layer error at the SQL boundary: its message names the function, and it keeps the
/// [`ModelError`] as its source, so a library user can match on a model failure
/// (`DataFusionError::External`, downcast to [`FunctionError`]).
#[derive(Debug, thiserror::Error)]
#[error("{function}: {source}")]
pub struct FunctionError {
    /// The SQL function.
    pub function: String,
    /// What the model layer reported.
    #[source]
    pub source: ModelError,
}

/// A model-layer error as a DataFusion error that names the SQL function.
pub fn model_err(function: &str, e: ModelError) -> DataFusionError {
    DataFusionError::External(Box::new(FunctionError {
        function: function.to_string(),
        source: e,
    }))
}

/// Runs CPU-heavy work (tokenizing a batch) on tokio's blocking pool, never on the runtime's
/// worker threads.
pub async fn blocking<T, F>(function: &str, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DataFusionError::Execution(format!("{function}: worker task failed: {e}")))?
}
