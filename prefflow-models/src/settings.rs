//! `SET prefflow.…` options for model execution.

use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::common::extensions_options;

extensions_options! {
    /// The fields of [`PrefflowOptions`].
    pub struct PrefflowSettings {
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
        /// On a cluster: the client's CREATE MODEL declarations (JSON), set by the engine, so
        /// executors load the same models.
        pub models: String, default = String::new()
        /// On a cluster: the client's prefflow version, set by the engine; executors of
        /// another version refuse its tasks.
        pub client_version: String, default = String::new()
    }
}

/// Options under the `prefflow.` prefix, e.g. `SET prefflow.max_batch_tokens = 4096`.
///
/// A wrapper over the macro-made fields so its entries carry the `prefflow.` prefix: DataFusion
/// lists an extension's entries without it, and a Ballista client sends the listed entries to
/// the scheduler and executors, where unprefixed keys would be lost.
#[derive(Debug, Clone, Default)]
pub struct PrefflowOptions(pub PrefflowSettings);

impl std::ops::Deref for PrefflowOptions {
    type Target = PrefflowSettings;

    fn deref(&self) -> &PrefflowSettings {
        &self.0
    }
}

impl ConfigExtension for PrefflowOptions {
    const PREFIX: &'static str = "prefflow";
}

impl ExtensionOptions for PrefflowOptions {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> datafusion::common::Result<()> {
        self.0.set(key, value)
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        self.0
            .entries()
            .into_iter()
            .map(|e| ConfigEntry {
                key: format!("{}.{}", Self::PREFIX, e.key),
                ..e
            })
            .collect()
    }
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
