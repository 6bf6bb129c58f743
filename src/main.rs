//! The `prefflow` command; everything lives in the library (`prefflow::cli`).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // SAFETY: nothing else runs yet (no thread has started), so setting the environment
    // cannot race with a reader.
    unsafe { prefflow::threads::configure_math_threads() };
    prefflow::cli::main(std::env::args_os())
}
