//! A model resolved for one call ([`super::registry::ModelRegistry::resolve`]): one handle over
//! the runtimes, so an SQL function asks for the capability it needs and gets either the
//! runtime or one clear "model X cannot do Y" error, instead of probing kinds itself.

use std::sync::Arc;

use super::decode::Decoder;
use super::encode::EncoderWorker;
use super::error::{ModelError, ModelResult};
use super::marian::Marian;
use super::remote::RemoteModel;
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

/// What an SQL function asks of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Sentence embeddings (ai_embed).
    Embed,
    /// Reward scores (ai_reward).
    Score,
    /// Text generation (ai_generate, ai_generate_n, ai_judge).
    Generate,
    /// Log-probabilities of a response (ai_logprob).
    Logprob,
    /// Translation (ai_translate, translate_json).
    Translate,
}

impl Capability {
    fn verb(self) -> &'static str {
        match self {
            Capability::Embed => "embed text",
            Capability::Score => "score responses",
            Capability::Generate => "generate text",
            Capability::Logprob => "compute log-probabilities",
            Capability::Translate => "translate",
        }
    }
}

/// What kind of model a declaration names, known from its address and files alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// See [`Model::Encoder`].
    Encoder,
    /// See [`Model::Decoder`].
    Decoder,
    /// See [`Model::Marian`].
    Marian,
    /// See [`Model::Remote`].
    Remote,
}

impl ModelKind {
    fn describe(self) -> &'static str {
        match self {
            ModelKind::Encoder => "an encoder (embeddings, classifiers)",
            ModelKind::Decoder => "a decoder LLM",
            ModelKind::Marian => "a Marian translation model",
            ModelKind::Remote => "a remote (OpenAI-compatible) model",
        }
    }

    /// Whether this kind of model can do `what`.
    pub fn can(self, what: Capability) -> bool {
        use Capability::*;
        matches!(
            (self, what),
            (ModelKind::Encoder, Embed | Score)
                | (ModelKind::Decoder, Generate | Logprob | Translate)
                | (ModelKind::Marian, Translate)
                | (ModelKind::Remote, Embed | Generate | Translate)
        )
    }

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
