//! prefflow's CPU math kernels, kept in their own crate so that every build profile (the test
//! build included) optimises them.
//!
//! - [`qmatmul`]: quantized (GGUF) matrix products, batched and batch-invariant, with AVX2
//!   dot products for the 32-wide block types.

pub mod qmatmul;
