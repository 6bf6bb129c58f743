//! Models: declaration (CREATE MODEL), files (local folders, GGUF files, hf://), and the
//! runtime — one worker thread per loaded model that batches requests from every partition.

pub mod bert;
pub mod chat;
pub mod decode;
pub mod error;
pub mod generation;
pub mod gguf;
pub mod hub;
pub mod identity;
pub mod marian;
pub mod model;
pub mod qwen2;
pub mod registry;
pub mod remote;
pub mod settings;
pub mod source;
pub mod transformer;
pub mod types;
pub mod worker;

pub use error::ModelError;
pub use registry::{ModelRegistry, ModelSpec};
pub use settings::PrefflowOptions;
