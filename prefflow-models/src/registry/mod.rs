//! The models of a session, in three parts: the [`catalog`] of declared models (what each is,
//! decided once at declaration), the [`metadata`] its files hold (config, tokenizers, GGUF
//! headers; read once per path), and the [`slots`] of loaded models (one map for every runtime).
//! A session has one registry; every SQL function and query shares what it has loaded.

pub mod catalog;
pub mod metadata;
pub mod slots;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokenizers::Tokenizer;

use crate::call_stats::Activity;
use crate::decode::DecoderInfo;
use crate::error::ModelResult;
use crate::identity::{FileMemo, model_identity};
pub use crate::model::{Capability, LoadedModel, Model, ModelKind};
use crate::remote::RemoteModel;
use crate::result_key::{Key, ResultStore};
use crate::settings::PrefflowOptions;
pub use crate::types::{ModelInfo, ModelSpec, Pooling};
use catalog::Catalog;
pub use catalog::MODEL_OPTIONS;
use metadata::FileMetadata;
use slots::LoadSlots;

/// The models of one session.
#[derive(Debug, Default)]
pub struct ModelRegistry {
    catalog: Catalog,
    files: FileMetadata,
    loads: LoadSlots,
    result_store: RwLock<Option<Arc<dyn ResultStore>>>,
    file_hashes: FileMemo,
    activity: Arc<Activity>,
}

impl ModelRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// CREATE [OR REPLACE] MODEL name FROM 'uri' OPTIONS (...): fetches hf:// models and
    /// checks the files are there, so a bad model fails here rather than mid-query.
    pub async fn declare(
        &self,
        name: &str,
        uri: &str,
        options: BTreeMap<String, String>,
        replace: bool,
        if_not_exists: bool,
    ) -> ModelResult<()> {
        let declared = self
            .catalog
            .declare(name, uri, options, replace, if_not_exists)
            .await?;
        if declared.is_some() {
            self.loads.forget_remote(name);
        }
        Ok(())
    }

    /// Takes declarations made elsewhere (a cluster client's), already resolved and checked:
    /// a model declared the same way stays as it is (and loaded), a changed one is replaced.
    pub fn adopt(&self, specs: Vec<ModelSpec>) {
        self.catalog.adopt(specs)
    }

    /// DROP MODEL [IF EXISTS] name.
    pub fn drop_model(&self, name: &str, if_exists: bool) -> ModelResult<()> {
        self.catalog.drop_model(name, if_exists)
    }

    /// Every declared model, by name.
    pub fn list(&self) -> Vec<ModelSpec> {
        self.catalog.list()
    }

    /// A declared model by name, or a local folder / .gguf file taken as an address.
    pub fn spec(&self, name_or_uri: &str) -> ModelResult<ModelSpec> {
        self.catalog.spec(name_or_uri)
    }

    /// The model of `spec` resolved, for `what`, to what runs it (loaded once per session). A
    /// model that cannot do `what` is refused before any weights are read, with one error
    /// naming the model, what it is and what it cannot do.
    pub async fn resolve(
        &self,
        spec: &ModelSpec,
        settings: &PrefflowOptions,
        what: Capability,
    ) -> ModelResult<Model> {
        if !spec.kind.can(what) {
            return Err(spec.kind.cannot(&spec.name, what));
        }
        Ok(match spec.kind {
            ModelKind::Remote => Model::Remote(self.remote(spec)?.expect("a remote model")),
            ModelKind::Marian => Model::Marian(
                self.loads
                    .marian(spec, settings)
                    .await?
                    .expect("a Marian model"),
            ),
            ModelKind::Decoder => Model::Decoder(self.loads.decoder(spec, settings).await?),
            ModelKind::Encoder => {
                Model::Encoder(self.loads.encoder(spec, settings, &self.files).await?)
            }
        })
    }

    /// The client of a remote (openai://) model, None for a local one.
    pub fn remote(&self, spec: &ModelSpec) -> ModelResult<Option<Arc<RemoteModel>>> {
        self.loads.remote(spec)
    }

    /// What a model is, from its JSON files (cached; no weights are read).
    pub fn info(&self, spec: &ModelSpec) -> ModelResult<ModelInfo> {
        self.files.info(spec)
    }

    /// What SHOW MODELS says of a model: architecture, parameters, dtype, context.
    pub fn summary(&self, spec: &ModelSpec) -> ModelResult<crate::summary::Summary> {
        self.files.summary(spec)
    }

    /// What a decoder's files say about its text (chat template, special tokens), cached.
    pub fn decoder_info(&self, spec: &ModelSpec) -> ModelResult<DecoderInfo> {
        self.files.decoder_info(spec)
    }

    /// The model's tokenizer, truncating at the model's maximum length.
    pub fn tokenizer(&self, spec: &ModelSpec) -> ModelResult<Arc<Tokenizer>> {
        self.files.tokenizer(spec)
    }

    /// The tokenizer without truncation, for counting a text's tokens.
    pub fn counting_tokenizer(&self, spec: &ModelSpec) -> ModelResult<Arc<Tokenizer>> {
        self.files.counting_tokenizer(spec)
    }

    /// Keeps model results in `store` (the engine's result cache).
    pub fn set_result_store(&self, store: Option<Arc<dyn ResultStore>>) {
        *self.result_store.write().expect("registry lock") = store;
    }

    /// The result cache, if the session has one.
    pub fn result_store(&self) -> Option<Arc<dyn ResultStore>> {
        self.result_store.read().expect("registry lock").clone()
    }

    /// The identity of a model's outputs for the result cache: its files' hashes, options and
    /// the device. Reads the files the first time (blocking: call it off the runtime).
    /// Unless `writable`, the cache is only read (`prefflow.cache = 'read'`).
    pub fn identity(
        &self,
        spec: &ModelSpec,
        device: &str,
        writable: bool,
    ) -> datafusion::common::Result<Key> {
        let store = self.result_store();
        model_identity(spec, device, store.as_deref(), writable, &self.file_hashes)
    }

    /// What the session's model functions are doing, for progress display.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }
}
