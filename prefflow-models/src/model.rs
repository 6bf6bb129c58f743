//! A model resolved for one call ([`super::registry::ModelRegistry::resolve`]): one handle over
//! the runtimes, so an SQL function asks for the capability it needs and gets either the
//! runtime or one clear "model X cannot do Y" error, instead of probing kinds itself.

use std::sync::Arc;

use super::decode::Decoder;
use super::encode::EncoderWorker;
use super::error::{ModelError, ModelResult};
use super::marian::Marian;
use super::remote::RemoteModel;
pub use super::types::{Capability, ModelKind};
use super::types::{ModelInfo, ModelSpec};
use tokenizers::Tokenizer;

/// An encoder ready to run: its description, tokenizer and worker.
#[derive(Debug)]
pub struct LoadedModel {
    /// How it was declared.
    pub spec: ModelSpec,
    /// What it is.
    pub info: ModelInfo,
    /// Its tokenizer, shared with token_count.
    pub tokenizer: Arc<Tokenizer>,
    /// Its worker thread.
    pub worker: EncoderWorker,
}

/// What runs a model.
#[derive(Debug, Clone)]
pub enum Model {
    /// An encoder or sequence classifier on a batching worker (embeddings, reward scores).
    Encoder(Arc<LoadedModel>),
    /// A decoder LLM with continuous batching (generation, log-probabilities).
    Decoder(Arc<Decoder>),
    /// A Marian encoder-decoder (translation).
    Marian(Arc<Marian>),
    /// An OpenAI-compatible server (generation, embeddings).
    Remote(Arc<RemoteModel>),
}

impl ModelKind {
    /// The one error for a capability this kind lacks.
    pub fn cannot(self, model: &str, what: Capability) -> ModelError {
        ModelError::Unsupported {
            model: model.to_string(),
            problem: format!("it is {}; it cannot {}", self.describe(), what.verb()),
        }
    }
}

impl Model {
    /// The model's name in SQL.
    pub fn name(&self) -> &str {
        match self {
            Model::Encoder(m) => &m.spec.name,
            Model::Decoder(d) => &d.name,
            Model::Marian(m) => m.name(),
            Model::Remote(r) => &r.name,
        }
    }

    /// Its kind.
    pub fn kind(&self) -> ModelKind {
        match self {
            Model::Encoder(_) => ModelKind::Encoder,
            Model::Decoder(_) => ModelKind::Decoder,
            Model::Marian(_) => ModelKind::Marian,
            Model::Remote(_) => ModelKind::Remote,
        }
    }

    /// The one error for a capability this model lacks.
    pub fn cannot(&self, what: Capability) -> ModelError {
        self.kind().cannot(self.name(), what)
    }

    /// The encoder, for embeddings and scores.
    pub fn encoder(&self, what: Capability) -> ModelResult<&Arc<LoadedModel>> {
        match self {
            Model::Encoder(m) => Ok(m),
            _ => Err(self.cannot(what)),
        }
    }

    /// The local decoder, for generation and log-probabilities.
    pub fn decoder(&self, what: Capability) -> ModelResult<&Arc<Decoder>> {
        match self {
            Model::Decoder(d) => Ok(d),
            _ => Err(self.cannot(what)),
        }
    }
}
