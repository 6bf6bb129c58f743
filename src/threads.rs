//! Thread settings for the model math that must be decided before any thread starts.
//!
//! candle asks for its thread count on every f32 matmul (attention runs one per sequence and
//! layer), and without `RAYON_NUM_THREADS` each ask reads the CPU topology from /proc: measured
//! at a fifth of a batched decode step on 2 cores (SmolLM2 Q4_1, 16 sequences, 64 tokens each:
//! 23.3 s -> 18.5 s). candle's barrier pool (its elementwise ops) is left at the same size:
//! shrinking it to the calling thread (CANDLE_NUM_THREADS=1) gained 4% in generation but cost
//! a fifth of an embedding run without OpenBLAS (GELU, softmax and norms on one core).

/// Sets `RAYON_NUM_THREADS` (the machine's cores) unless the user set it.
///
/// # Safety
/// Call before any other thread starts (it writes the process environment): the `prefflow`
/// binary does it first thing in `main`; a program embedding prefflow can call it at the top
/// of its own `main`, or set the variables itself.
pub unsafe fn configure_math_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: the caller guarantees no other thread runs.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", cores.to_string()) };
    }
}
