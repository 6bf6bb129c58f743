//! Models: declaration (CREATE MODEL), files (local folders, GGUF files, hf://), and the
//! runtimes — one worker thread per loaded model that batches requests from every partition.
//!
//! Layers, bottom up (`scripts/module-graph` checks there is no import cycle):
//! - `types`, `error`, `settings`: shared types; import nothing else of the crate.
//! - `call_stats` (what calls did, for progress and the card), `result_key` (the result
//!   cache's keys and store), `boundary` (model errors named after the SQL function, CPU work
//!   off the runtime), `template` and `memory_budget` (bounded Jinja renders), `values` (SQL
//!   rows as template values): what the services below and the SQL functions share.
//! - `source`, `hub`, `gguf`, `rope`, `transformer`, `bert`, `deberta`, `modernbert`, `decoder_head`:
//!   files and
//!   architectures.
//! - runtimes: `encode` (token-budget batches for encoders and classifiers), `decode`
//!   (continuous batching for decoder LLMs), `marian` (batched greedy over `marian_net`),
//!   `remote` (OpenAI-compatible servers, with `admission`: adaptive requests in flight).
//! - `summary` (what SHOW MODELS says of a model, from file headers), `model` (one resolved
//!   handle over the runtimes, with capability checks), `identity`
//!   (what the result cache keys a model by), `registry` (declared and loaded models).
//! - services over the runtimes: `chat` (chat templates), `generation` (prompts, seeds,
//!   batching, stop strings, local or remote), `translation` (Marian, or a translation
//!   prompt through generation), `encoding` (embeddings and reward scores, local or remote).
//!
//! The SQL functions (`prefflow-udfs`, one file each) parse their arguments and options and
//! call these; this crate knows nothing of them (the compiler holds the direction).

pub mod admission;
pub mod bert;
pub mod boundary;
pub mod call_stats;
pub mod chat;
pub mod deberta;
pub mod decode;
pub mod decoder_head;
pub mod encode;
pub mod encoding;
pub mod endpoints;
pub mod error;
pub mod generation;
pub mod gguf;
pub mod hub;
pub mod identity;
pub mod marian;
pub mod marian_net;
pub mod memory_budget;
pub mod model;
pub mod modernbert;
pub mod rate_limit;
pub mod registry;
pub mod remote;
pub mod remote_scoring;
pub mod result_key;
pub mod rope;
pub mod row_errors;
pub mod secrets;
pub mod settings;
pub mod source;
pub mod stable_hash;
pub mod summary;
pub mod template;
pub mod thread;
pub mod transformer;
pub mod translation;
pub mod types;
pub mod values;

pub use error::ModelError;
pub use registry::{ModelRegistry, ModelSpec};
pub use settings::PrefflowOptions;

// The unit tests run with the allocator the `prefflow` binary installs, so the template memory
// budget is exercised as users get it.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: memory_budget::Budgeted<std::alloc::System> =
    memory_budget::Budgeted(std::alloc::System);
