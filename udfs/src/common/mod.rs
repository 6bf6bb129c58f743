//! Helpers shared by several SQL functions.

pub mod builtin_aggregate;
pub mod call_wrapper;
pub mod function_args;
pub mod generate_options;
pub mod model_function;
pub mod picked_rows;
pub mod text;
pub mod vectors;
