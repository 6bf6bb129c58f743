//! GEMM shapes of the bundled models, timed: candle's f32 matmul and OpenBLAS (when
//! installed), `x (m, k) · wᵀ (n, k)`. Prints one line per shape and engine: GFLOP/s.
//! Run through scripts/bench-gemm, which times torch.matmul on the same shapes beside it.
//!
//!   cargo run --release -p prefflow-kernels --example gemm [-- THREADS]

use candle_core::{Device, Tensor};
use std::time::Instant;

/// (name, m, k, n): MiniLM with 32 sentences of 20 tokens (640 rows), SmolLM2 decode of 16
/// sequences and a 512-token prefill.
const SHAPES: [(&str, usize, usize, usize); 6] = [
    ("minilm qkv", 640, 384, 1152),
    ("minilm ffn-up", 640, 384, 1536),
    ("minilm ffn-down", 640, 1536, 384),
    ("smollm2 decode ffn-up", 16, 576, 1536),
    ("smollm2 prefill ffn-up", 512, 576, 1536),
    ("smollm2 prefill ffn-down", 512, 1536, 576),
];

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut runs = 0;
    while start.elapsed().as_secs_f64() < 0.5 {
        f();
        runs += 1;
    }
    start.elapsed().as_secs_f64() / runs as f64
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    pool.install(|| {
        for (name, m, k, n) in SHAPES {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i % 89) as f32 - 44.0) / 89.0)
                .collect();
            let flops = 2.0 * (m * k * n) as f64;
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
            let wt_t = wt.t().unwrap();
            let s = time(|| {
                xt.matmul(&wt_t).unwrap();
            });
            println!("{name}\tcandle\t{:.1}", flops / s / 1e9);
            if prefflow_kernels::blas::available() {
                let s = time(|| {
                    prefflow_kernels::blas::linear(&x, &w, m, n, k, threads).unwrap();
                });
                println!("{name}\topenblas\t{:.1}", flops / s / 1e9);
            }
        }
    });
}
