//! Helpers shared by several SQL functions.

pub mod model_call;
pub mod text;
pub mod values;
pub mod vectors;
