//! f32 matrix products through the system's OpenBLAS, found at run time.
//!
//! candle's f32 GEMM reaches about 40% of torch's per-thread throughput on the shapes small
//! encoders use; OpenBLAS (Debian's `libopenblas0-pthread`) reaches torch's. It is loaded with
//! `dlopen` when first asked for, so a machine without it still builds, links and runs (callers
//! fall back to candle) instead of failing at link time; `PREFFLOW_BLAS=off` disables it.
//! Used where a row's result may depend on the batch (encoders, whose padded batches already
//! do), not in the decoders' batch-invariant paths.

use rayon::prelude::*;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

type Sgemm = unsafe extern "C" fn(
    order: i32,
    trans_a: i32,
    trans_b: i32,
    m: i32,
    n: i32,
    k: i32,
    alpha: f32,
    a: *const f32,
    lda: i32,
    b: *const f32,
    ldb: i32,
    beta: f32,
    c: *mut f32,
    ldc: i32,
);
type SetThreads = unsafe extern "C" fn(i32);

struct Blas {
    // Kept so the functions below stay loaded.
    _library: libloading::Library,
    sgemm: Sgemm,
    set_threads: Option<SetThreads>,
    threads: AtomicUsize,
}

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

fn blas() -> Option<&'static Blas> {
    static BLAS: OnceLock<Option<Blas>> = OnceLock::new();
    BLAS.get_or_init(|| {
        if std::env::var("PREFFLOW_BLAS").is_ok_and(|v| v == "off") {
            return None;
        }
        ["libopenblas.so.0", "libopenblas.so"]
            .iter()
            .find_map(|name| {
                // SAFETY: loading OpenBLAS runs its initialisers, which only set up its own
                // thread pool; the symbols are C functions with the signatures above.
                unsafe {
                    let library = libloading::Library::new(name).ok()?;
                    let sgemm = *library.get::<Sgemm>(b"cblas_sgemm\0").ok()?;
                    let set_threads = library
                        .get::<SetThreads>(b"openblas_set_num_threads\0")
                        .ok()
                        .map(|f| *f);
                    Some(Blas {
                        _library: library,
                        sgemm,
                        set_threads,
                        threads: AtomicUsize::new(0),
                    })
                }
            })
    })
    .as_ref()
}

/// Whether OpenBLAS was found (and not disabled).
pub fn available() -> bool {
    blas().is_some()
}

/// `x · wᵀ` for x (m, k) and w (n, k), row-major, split by rows over the calling rayon pool
/// (`threads` parts); None when OpenBLAS is not available.
///
/// OpenBLAS runs single-threaded inside each part: its own thread pool waits by spinning and
/// yielding, and beside the model's rayon pool the two fought for the cores (measured: a
/// seventh of an embedding run in the scheduler).
pub fn linear(
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
) -> Option<Vec<f32>> {
    let blas = blas()?;
    assert!(x.len() >= m * k && w.len() >= n * k, "blas::linear: shapes");
    let mut y = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return Some(y);
    }
    if let Some(set) = blas.set_threads
        && blas.threads.swap(1, Ordering::Relaxed) != 1
    {
        // SAFETY: a plain C call taking a thread count.
        unsafe { set(1) };
    }
    let rows = m.div_ceil(threads.max(1)).max(16);
    y.par_chunks_mut(rows * n)
        .zip(x[..m * k].par_chunks(rows * k))
        .for_each(|(y, x)| {
            let part = x.len() / k;
            // SAFETY: the pointers cover part*k, n*k and part*n floats, leading dimensions
            // match the row-major layouts.
            unsafe {
                (blas.sgemm)(
                    ROW_MAJOR,
                    NO_TRANS,
                    TRANS,
                    part as i32,
                    n as i32,
                    k as i32,
                    1.0,
                    x.as_ptr(),
                    k as i32,
                    w.as_ptr(),
                    k as i32,
                    0.0,
                    y.as_mut_ptr(),
                    n as i32,
                )
            };
        });
    Some(y)
}

/// `x · wᵀ + b` (b of length n), with BERT's erf GELU applied in the same pass when `gelu`.
#[allow(clippy::too_many_arguments)]
pub fn dense(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    threads: usize,
    gelu: bool,
) -> Option<Vec<f32>> {
    let mut y = linear(x, w, m, b.len(), k, threads)?;
    crate::activation::bias_gelu(&mut y, b, gelu);
    Some(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_a_plain_product() {
        if !available() {
            eprintln!("OpenBLAS not installed: nothing to compare");
            return;
        }
        let (m, n, k) = (5, 7, 33);
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 / 7.0 - 0.9).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 11) as f32 / 5.0 - 1.0).collect();
        let y = linear(&x, &w, m, n, k, 2).unwrap();
        for r in 0..m {
            for c in 0..n {
                let want: f32 = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum();
                assert!((y[r * n + c] - want).abs() < 1e-4, "{r},{c}");
            }
        }
    }
}
