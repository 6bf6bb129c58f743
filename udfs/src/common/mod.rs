//! Helpers shared by several SQL functions.

pub mod chat;
pub mod model_call;
pub mod text;
pub mod values;
pub mod vectors;
