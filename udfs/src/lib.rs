//! prefflow's SQL functions.
//!
//! One file per SQL function, named after it; [`registry`] is the one table from SQL name to
//! function, so the list of everything the engine offers is readable in one place.

pub mod ai_embed;
pub mod ai_generate;
pub mod ai_generate_n;
pub mod ai_judge;
pub mod ai_logprob;
pub mod ai_reward;
pub mod ai_translate;
pub mod apply_chat_template;
pub mod arg_max;
pub mod arg_min;
pub mod common;
pub mod docs;
pub mod extract_boxed;
pub mod extract_tag;
pub mod first_value;
pub mod functions;
pub mod kmeans;
pub mod min_max;
pub mod near_duplicate;
pub mod render;
pub mod strip_think;
pub mod token_count;
pub mod translate_json;

pub use functions::{aggregate_functions, scalar_functions, window_functions};
/// The model layer the functions call (its own crate, so the compiler holds the direction
/// SQL functions → model services → runtimes → kernels).
pub use prefflow_models as models;

// The unit tests run with the allocator the `prefflow` binary installs, so the template memory
// budget is exercised as users get it.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: models::memory_budget::Budgeted<std::alloc::System> =
    models::memory_budget::Budgeted(std::alloc::System);
