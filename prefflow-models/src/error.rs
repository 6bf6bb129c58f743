//! Errors of the model layer; they become `DataFusionError`s at the SQL function boundary,
//! where the function's name is put in front.

/// What can go wrong declaring, loading or running a model. `Clone`, so one failure (a
/// worker that could not load) reaches every request waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    /// A model name that is not declared and not a usable address.
    #[error(
        "unknown model '{0}': declare it with CREATE MODEL {0} FROM '<folder, .gguf file or hf://ORG/NAME>'"
    )]
    Unknown(String),
    /// A file the model needs is missing or unreadable.
    #[error("model '{model}': {path}: {problem}")]
    File {
        /// The model's name or address.
        model: String,
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The model's files are there but describe something prefflow cannot run for this call.
    #[error("model '{model}': {problem}")]
    Unsupported {
        /// The model's name or address.
        model: String,
        /// Why.
        problem: String,
    },
    /// A bad CREATE MODEL statement or option.
    #[error("{0}")]
    Declaration(String),
    /// The Hub could not deliver the model.
    #[error("model '{model}': {message}")]
    Hub {
        /// The model's name or address.
        model: String,
        /// hf-hub's message (never contains the token).
        message: String,
    },
    /// candle failed loading or running the model.
    #[error("model '{model}': {message}")]
    Candle {
        /// The model's name or address.
        model: String,
        /// candle's message, without the backtrace it may carry.
        message: String,
    },
    /// The model's worker thread is gone (it panicked or the session closed).
    #[error("model '{0}': its worker thread stopped")]
    WorkerGone(String),
}

/// Result with [`ModelError`].
pub type ModelResult<T> = Result<T, ModelError>;

impl ModelError {
    /// A candle error, as a one-line message.
    pub fn candle(model: &str, e: &candle_core::Error) -> Self {
        ModelError::Candle {
            model: model.to_string(),
            message: clean(e),
        }
    }
}

/// candle's message without backtraces (they appear when RUST_BACKTRACE is set).
fn clean(e: &candle_core::Error) -> String {
    use candle_core::Error;
    match e {
        Error::WithBacktrace { inner, .. } => clean(inner),
        Error::Context { inner, context } => format!("{context}: {}", clean(inner)),
        Error::WithPath { inner, path } => format!("{}: {}", path.display(), clean(inner)),
        other => other.to_string(),
    }
}
