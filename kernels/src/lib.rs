//! prefflow's CPU math kernels, kept in their own crate so that every build profile (the test
//! build included) optimises them.
//!
//! - [`qmatmul`]: quantized (GGUF) matrix products, batched and batch-invariant, with AVX2
//!   dot products for the 32-wide block types.
//! - [`attention`]: decode-step attention for every sequence and head of a step at once.
//! - [`blas`]: f32 products through the system's OpenBLAS when it is installed.
//! - [`activation`]: bias + erf GELU in one pass over the pool.

pub mod activation;
pub mod attention;
pub mod blas;
pub mod qmatmul;
