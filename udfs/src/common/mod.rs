//! Helpers shared by several SQL functions.

pub mod text;
pub mod values;
