//! The model layer's shared types. This module imports nothing else of the crate, so any module
//! (model runtimes, the result cache, the SQL functions) can use them without import cycles.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A declared model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// The name SQL refers to it by (the URI itself for undeclared models).
    pub name: String,
    /// The address it was declared with.
    pub uri: String,
    /// The local folder or .gguf file.
    pub path: PathBuf,
    /// OPTIONS (key 'value', ...).
    pub options: BTreeMap<String, String>,
    /// What the model is, decided once from its address and files when it was declared.
    pub kind: ModelKind,
    /// The GGUF file the model is, where it is one (decided with the kind).
    pub gguf: Option<PathBuf>,
}

/// What kind of model a declaration names, known from its address and files alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// An encoder or sequence classifier on a batching worker (embeddings, reward scores).
    Encoder,
    /// A decoder LLM with continuous batching (generation, log-probabilities).
    Decoder,
    /// A Marian encoder-decoder (translation).
    Marian,
    /// An OpenAI-compatible server (generation, embeddings).
    Remote,
}

impl ModelKind {
    /// Every kind, for parsing [`ModelKind::as_str`] back.
    pub const ALL: [ModelKind; 4] = [
        ModelKind::Encoder,
        ModelKind::Decoder,
        ModelKind::Marian,
        ModelKind::Remote,
    ];

    /// A short stable name (what a cluster client sends its executors).
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Encoder => "encoder",
            ModelKind::Decoder => "decoder",
            ModelKind::Marian => "marian",
            ModelKind::Remote => "remote",
        }
    }

    /// The kind [`ModelKind::as_str`] names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The kind in an error message.
    pub fn describe(self) -> &'static str {
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
                | (
                    ModelKind::Remote,
                    Embed | Score | Generate | Logprob | Translate
                )
        )
    }
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
    /// What the capability does, in an error message.
    pub fn verb(self) -> &'static str {
        match self {
            Capability::Embed => "embed text",
            Capability::Score => "score responses",
            Capability::Generate => "generate text",
            Capability::Logprob => "compute log-probabilities",
            Capability::Translate => "translate",
        }
    }
}

/// How a sentence-transformers model pools token vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over real (unpadded) tokens.
    Mean,
    /// The first ([CLS]) token.
    Cls,
    /// Element-wise max over real tokens.
    Max,
    /// Sum over real tokens divided by the square root of their count.
    MeanSqrtLen,
    /// The last real token (decoder embedders: Qwen3-Embedding, e5-mistral).
    LastToken,
}

/// What a model is, read from its JSON files without loading weights.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// `architectures[0]` of config.json, e.g. BertModel or Qwen2ForSequenceClassification.
    pub architecture: String,
    /// config.json `model_type`.
    pub model_type: String,
    /// Width of the hidden states (and of embeddings).
    pub hidden_size: usize,
    /// Label names of a classification head, by index.
    pub labels: Vec<String>,
    /// Longest input in tokens; longer inputs are truncated.
    pub max_seq_length: usize,
    /// Embedding pooling.
    pub pooling: Pooling,
    /// Whether embeddings are L2-normalised (a sentence-transformers Normalize module).
    pub normalize: bool,
    /// The chat template of tokenizer_config.json, for decoder models.
    pub chat_template: Option<String>,
    /// tokenizer_config.json's `bos_token` and `eos_token` (empty when it has none): a chat
    /// template that begins with `{{ bos_token }}` renders them, as transformers does.
    pub bos_token: String,
    /// See `bos_token`.
    pub eos_token: String,
    /// config.json `pad_token_id`.
    pub pad_token_id: Option<u32>,
    /// sentence-transformers' named prompts (config_sentence_transformers.json `prompts`):
    /// the text put before a sentence, e.g. Qwen3-Embedding's query instruction.
    pub prompts: std::collections::BTreeMap<String, String>,
    /// The prompt used when none is named (`default_prompt_name`).
    pub default_prompt: Option<String>,
}

/// What a decoder's files say about text in and out.
#[derive(Debug, Clone)]
pub struct DecoderInfo {
    /// `general.architecture` (GGUF) or `model_type` (config.json), e.g. llama.
    pub architecture: String,
    /// Token ids that end a generation.
    pub eos_ids: Vec<u32>,
    /// The BOS token's text, for chat templates.
    pub bos_token: String,
    /// The EOS token's text, for chat templates.
    pub eos_token: String,
    /// The chat template (GGUF metadata, chat_template.jinja or tokenizer_config.json).
    pub chat_template: Option<String>,
    /// Whether raw completions start with BOS (GGUF add_bos_token; Gemma needs it).
    pub add_bos: Option<u32>,
    /// Longest sequence (prompt + generation) in tokens.
    pub context: usize,
}

/// How to generate: sampling, length, stop strings, seed, and how the prompt is prepared
/// (chat template, truncation). SQL functions parse it from their options struct; the model
/// layer (local decoders and remote servers) takes it as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Sampling temperature; 0 is greedy.
    pub temperature: f64,
    /// Nucleus mass.
    pub top_p: Option<f64>,
    /// Top-k.
    pub top_k: Option<usize>,
    /// Most new tokens.
    pub max_tokens: usize,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Run seed.
    pub seed: u64,
    /// Apply the chat template.
    pub chat: bool,
    /// Keep the end of a prompt too long for the context (and max_tokens) instead of failing.
    pub truncate: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: None,
            top_k: None,
            max_tokens: 256,
            stop: Vec::new(),
            seed: 0,
            chat: true,
            truncate: false,
        }
    }
}

/// Whether an address names a remote (OpenAI-compatible) model.
pub fn is_remote(uri: &str) -> bool {
    uri.starts_with("openai://")
        || uri.starts_with("openai+http://")
        || uri.starts_with("openai+https://")
}
