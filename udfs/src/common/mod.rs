//! Helpers shared by several SQL functions.

pub mod boundary;
pub mod builtin_aggregate;
pub mod call_stats;
pub mod call_wrapper;
pub mod function_args;
pub mod memory_budget;
pub mod picked_rows;
pub mod result_key;
pub mod template;
pub mod text;
pub mod values;
pub mod vectors;
