//! Helpers shared by several SQL functions.

pub mod boundary;
pub mod cache;
pub mod cached;
pub mod calls;
pub mod model_call;
pub mod template;
pub mod text;
pub mod values;
pub mod vectors;
