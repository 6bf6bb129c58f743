//! The `prefflow` binary; all of it lives in [`prefflow::cli`].

fn main() -> std::process::ExitCode {
    prefflow::cli::main(std::env::args_os())
}
