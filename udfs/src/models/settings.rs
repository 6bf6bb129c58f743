//! `SET prefflow.…` options for model execution.

use datafusion::common::config::ConfigExtension;
use datafusion::common::extensions_options;

extensions_options! {
    /// Options under the `prefflow.` prefix, e.g. `SET prefflow.max_batch_tokens = 4096`.
    pub struct PrefflowOptions {
        /// Tokens per model batch, padding included (rows x longest row); bigger batches are
        /// faster per row and use more memory.
        pub max_batch_tokens: usize, default = 8192
        /// Where models run: 'cpu' or 'cuda:N' (needs a build with the cuda feature).
        pub device: String, default = "cpu".to_string()
        /// Threads each model's math may use; 0 means one per CPU core.
        pub threads: usize, default = 0
        /// Sequences a decoder generates together (continuous batching); 1 decodes one at a
        /// time. Results do not depend on it.
        pub decode_batch: usize, default = 16
        /// The result cache: 'readwrite' reuses results and stores new ones as each batch
        /// completes, 'read' only reuses, 'off' neither (the model runs on every row).
        pub cache: String, default = "readwrite".to_string()
        /// Keep only shard 'i/N' of the input rows (0 <= i < N); '' keeps all.
        pub shard: String, default = String::new()
        /// The column whose hash picks a row's shard; '' hashes whole rows.
        pub shard_key: String, default = String::new()
    }
}

impl ConfigExtension for PrefflowOptions {
    const PREFIX: &'static str = "prefflow";
}

impl PrefflowOptions {
    /// The options in force for a call, from the session's config.
    pub fn from_config(config: &datafusion::config::ConfigOptions) -> Self {
        config
            .extensions
            .get::<PrefflowOptions>()
            .cloned()
            .unwrap_or_default()
    }
}
