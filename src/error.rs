//! The engine's error type: `thiserror` inside, `DataFusionError` at the SQL boundary.

use datafusion::error::DataFusionError;

/// Result with [`PrefflowError`].
pub type Result<T, E = PrefflowError> = std::result::Result<T, E>;

/// Everything that can go wrong running prefflow statements.
#[derive(Debug, thiserror::Error)]
pub enum PrefflowError {
    /// A planning or execution error from DataFusion (including our SQL functions).
    #[error("{}", describe_datafusion(.0))]
    DataFusion(DataFusionError),
    /// A statement failed; `location` is `file:line`.
    #[error("{location}: {source}")]
    Statement {
        /// Where the failing statement starts, as `file:line`.
        location: String,
        /// Why it failed.
        #[source]
        source: Box<PrefflowError>,
    },
    /// A query file could not be split into statements, or a `${name}` has no value.
    #[error("{0}")]
    Script(String),
    /// Reading or writing a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Fetching from the Hugging Face Hub failed.
    #[error("{url}: {message}")]
    Hub {
        /// The hf:// address asked for.
        url: String,
        /// What went wrong (never contains the token).
        message: String,
    },
    /// A model could not be declared or found.
    #[error("{0}")]
    Model(String),
    /// An output target that would destroy what prefflow did not write, or cannot be written.
    #[error("{0}")]
    Target(String),
    /// A bad command-line or API argument.
    #[error("{0}")]
    Usage(String),
}

impl PrefflowError {
    /// Attaches the `file:line` of the statement that failed.
    pub fn at(self, location: impl Into<String>) -> Self {
        PrefflowError::Statement {
            location: location.into(),
            source: Box::new(self),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        PrefflowError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

impl From<DataFusionError> for PrefflowError {
    /// A prefflow error that crossed DataFusion (raised inside a sink DataFusion ran) comes
    /// back as itself, so its message is not prefixed with DataFusion's "External error".
    fn from(e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<PrefflowError>() {
                Ok(p) => *p,
                Err(inner) => PrefflowError::DataFusion(DataFusionError::External(inner)),
            },
            other => PrefflowError::DataFusion(other),
        }
    }
}

impl From<PrefflowError> for DataFusionError {
    fn from(e: PrefflowError) -> Self {
        match e {
            PrefflowError::DataFusion(e) => e,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

/// DataFusion wraps messages in context lines and backtraces; a CLI error is one line.
/// With RUST_BACKTRACE set, DataFusion appends a backtrace after "backtrace:": cut.
pub fn one_line(message: &str) -> String {
    let message = message
        .split_once(DataFusionError::BACK_TRACE_SEP)
        .map_or(message, |(m, _)| m);
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A DataFusion error as one line; a parser error reads as `syntax error: …`, not as
/// `SQL error: ParserError("…")`.
fn describe_datafusion(e: &DataFusionError) -> String {
    use datafusion::sql::sqlparser::parser::ParserError;
    if let DataFusionError::SQL(pe, _) = e.find_root() {
        let m = match pe.as_ref() {
            ParserError::ParserError(m) | ParserError::TokenizerError(m) => m.clone(),
            ParserError::RecursionLimitExceeded => "the statement is nested too deeply".to_string(),
        };
        return one_line(&format!("syntax error: {m}"));
    }
    one_line(&e.to_string())
}
