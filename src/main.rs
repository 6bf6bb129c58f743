//! The `prefflow` command; everything lives in the library (`prefflow::cli`).

// mimalloc, wrapped so a template render can be held to a memory budget
// (prefflow_udfs::models::memory_budget).
#[global_allocator]
static ALLOCATOR: prefflow_udfs::models::memory_budget::Budgeted<mimalloc::MiMalloc> =
    prefflow_udfs::models::memory_budget::Budgeted(mimalloc::MiMalloc);

fn main() -> std::process::ExitCode {
    // SAFETY: nothing else runs yet (no thread has started), so setting the environment
    // cannot race with a reader.
    unsafe { prefflow::threads::configure_math_threads() };
    prefflow::cli::main(std::env::args_os())
}
