//! The one Hugging Face Hub client prefflow builds, for datasets and models alike: HF_ENDPOINT,
//! HF_HOME and HF_TOKEN (or the cached login token) are honoured; no progress bars.

use std::path::PathBuf;

use hf_hub::Cache;
use hf_hub::api::tokio::{Api, ApiBuilder, ApiError};

/// A Hub client configured from the environment.
pub fn api() -> Result<Api, ApiError> {
    let mut builder = ApiBuilder::from_env()
        .with_progress(false)
        .with_token(token());
    if let Ok(home) = std::env::var("HF_HOME") {
        builder = builder.with_cache_dir(PathBuf::from(home).join("hub"));
    }
    builder.build()
}

/// The Hub token: HF_TOKEN, else the cached login token (hf-hub reads only the latter). Spaces
/// and a newline around it (`export HF_TOKEN=$(cat token.txt)`) are not part of it.
pub fn token() -> Option<String> {
    std::env::var("HF_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .or_else(|| Cache::from_env().token().map(|t| t.trim().to_string()))
}

/// A Hub client's error (hf-hub 0.4's for downloads, 1.0's for pushes) as one line with its
/// causes, each said once. The token is sent only in a request header, but a server's error
/// body may echo the headers, so every form of it is masked here.
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    let tokens: Vec<String> = std::env::var("HF_TOKEN")
        .ok()
        .into_iter()
        .chain(Cache::from_env().token())
        .collect();
    super::secrets::mask(&msg, &tokens)
}
