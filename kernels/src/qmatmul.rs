//! Quantized matrix products on the CPU for GGUF weights as stored, batched and batch-invariant.
//!
//! candle multiplies a quantized matrix by many rows with other kernels than by one row
//! (repacked Q4_K / Q6_K tiles on AVX2), so a row's result depended on its neighbours, and
//! prefflow ran one row at a time; candle's Q4_1 / Q5_0 / Q5_1 dot products are scalar besides.
//! Here every output element is one dot product computed the same way whatever the batch: the
//! activations are quantized per row as llama.cpp does (Q8_0, or Q8_1 with its block sum, for
//! the 32-wide types; candle's Q8_K for K-quants), and each weight row is decoded once per
//! group of up to four activation rows whose sums run side by side but never mix. AVX2 + FMA +
//! F16C kernels for Q4_1, Q5_0, Q5_1 and Q8_0 (detected at run time, scalar otherwise);
//! K-quants and Q4_0 use candle's per-row dot products. The math runs on the model thread's
//! rayon pool (sized by `prefflow.threads`), split over output columns.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4K, BlockQ5K, BlockQ6K, GgmlType,
};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor};
use half::f16;
use rayon::prelude::*;

/// A 32-wide weight block: 4-bit values with scale and minimum.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Q4_1 {
    d: u16,
    m: u16,
    qs: [u8; 16],
}

/// A 32-wide weight block: 5-bit signed values with a scale.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Q5_0 {
    d: u16,
    qh: [u8; 4],
    qs: [u8; 16],
}

/// A 32-wide weight block: 5-bit values with scale and minimum.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Q5_1 {
    d: u16,
    m: u16,
    qh: [u8; 4],
    qs: [u8; 16],
}

/// A 32-wide block of 8-bit values with a scale (weights, and activations for Q5_0 / Q8_0).
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct Q8_0 {
    d: u16,
    qs: [i8; 32],
}

/// A 32-wide activation block quantized as Q8_1 (for Q4_1 / Q5_1): values, the scale and
/// `s = d * sum(qs)`, both rounded to f16 as llama.cpp stores them but kept as f32 so the
/// kernels do not convert them for every weight row.
#[derive(Clone, Copy, Default)]
pub struct Q8_1 {
    qs: [i8; 32],
    d: f32,
    s: f32,
}

/// A 32-wide activation block quantized as Q8_0 (for Q5_0 / Q8_0): values and the scale
/// (rounded to f16, kept as f32).
#[derive(Clone, Copy, Default)]
pub struct A8_0 {
    qs: [i8; 32],
    d: f32,
}

const _: () = assert!(std::mem::size_of::<Q4_1>() == 20);
const _: () = assert!(std::mem::size_of::<Q5_0>() == 22);
const _: () = assert!(std::mem::size_of::<Q5_1>() == 24);
const _: () = assert!(std::mem::size_of::<Q8_0>() == 34);

fn h2f(h: u16) -> f32 {
    f16::from_bits(h).to_f32()
}

/// One block of 32 activations as llama.cpp's AVX2 path quantizes it (round half to even, so
/// the scalar fallback gives the same values): the values, the f32 scale and their sum.
fn quantize_block(xs: &[f32], qs: &mut [i8; 32]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C; xs holds 32 values.
        return unsafe { avx2::quantize_block(xs, qs) };
    }
    quantize_block_scalar(xs, qs)
}

fn quantize_block_scalar(xs: &[f32], qs: &mut [i8; 32]) -> (f32, i32) {
    let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0;
    for (q, v) in qs.iter_mut().zip(xs) {
        *q = (v * id).round_ties_even() as i8;
        sum += *q as i32;
    }
    (d, sum)
}

/// An activation block: its scale, its `d * sum` (Q8_1 only) and values.
pub trait Activation: Copy + Send + Sync + Default {
    /// Quantizes one activation row into blocks of this kind.
    fn quantize(x: &[f32], out: &mut [Self]);
    /// The scale.
    fn d(&self) -> f32;
    /// `d * sum(values)` where the block carries it.
    fn s(&self) -> f32 {
        0.0
    }
    /// Value `j` of 32.
    fn q(&self, j: usize) -> i32;
}

impl Activation for A8_0 {
    /// llama.cpp's `quantize_row_q8_0`.
    fn quantize(x: &[f32], out: &mut [Self]) {
        for (b, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
            let (d, _) = quantize_block(xs, &mut b.qs);
            b.d = f16::from_f32(d).to_f32();
        }
    }
    fn d(&self) -> f32 {
        self.d
    }
    fn q(&self, j: usize) -> i32 {
        self.qs[j] as i32
    }
}

impl Activation for Q8_1 {
    /// llama.cpp's `quantize_row_q8_1`: `s` from the f32 scale.
    fn quantize(x: &[f32], out: &mut [Self]) {
        for (b, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
            let (d, sum) = quantize_block(xs, &mut b.qs);
            b.d = f16::from_f32(d).to_f32();
            b.s = f16::from_f32(sum as f32 * d).to_f32();
        }
    }
    fn d(&self) -> f32 {
        self.d
    }
    fn s(&self) -> f32 {
        self.s
    }
    fn q(&self, j: usize) -> i32 {
        self.qs[j] as i32
    }
}

/// One kind of weight block with its activation block and dot products of one weight row with
/// up to four activation rows (`out[r] = dot(w, a[r])`, each row summed on its own).
pub trait Kernel: Copy + Send + Sync + 'static {
    /// The activation block (its quantizer is the one llama.cpp pairs with this weight type).
    type A: Activation;
    /// The block's scale.
    fn d(&self) -> f32;
    /// The block's minimum (added to every value), for the types that have one.
    fn m(&self) -> f32 {
        0.0
    }
    /// Weight value `j` of 32 (before scale and minimum).
    fn q(&self, j: usize) -> i32;
    /// Portable dot products (the reference): llama.cpp's scalar arithmetic.
    fn dots_scalar(w: &[Self], sc: &[[f32; 2]], a: &[&[Self::A]], out: &mut [f32]) {
        for (o, a) in out.iter_mut().zip(a) {
            let mut sum = 0f32;
            for ((x, s), y) in w.iter().zip(sc).zip(a.iter()) {
                let sumi: i32 = (0..32).map(|j| x.q(j) * y.q(j)).sum();
                sum += s[0] * y.d() * sumi as f32 + s[1] * y.s();
            }
            *o = sum;
        }
    }
    /// The fastest dot products this CPU has; same per-row arithmetic for any number of rows.
    /// `sc` holds each block's (scale, minimum) as f32, converted once at load.
    fn dots(w: &[Self], sc: &[[f32; 2]], a: &[&[Self::A]], out: &mut [f32]);
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// `dots` through an AVX2 kernel when the CPU has it: the rows in groups of four (the same
/// arithmetic per row whatever the group), the scalar reference otherwise.
macro_rules! dispatch {
    ($kernel:ident) => {
        fn dots(w: &[Self], sc: &[[f32; 2]], a: &[&[Self::A]], out: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                let mut r = 0;
                while r < a.len() {
                    let left = a.len() - r;
                    // SAFETY: the CPU has AVX2, FMA and F16C (has_avx2).
                    unsafe {
                        match left {
                            1 => avx2::$kernel::<1>(w, sc, &a[r..r + 1], &mut out[r..r + 1]),
                            2 => avx2::$kernel::<2>(w, sc, &a[r..r + 2], &mut out[r..r + 2]),
                            3 => avx2::$kernel::<3>(w, sc, &a[r..r + 3], &mut out[r..r + 3]),
                            _ => avx2::$kernel::<4>(w, sc, &a[r..r + 4], &mut out[r..r + 4]),
                        }
                    }
                    r += left.min(4);
                }
                return;
            }
            Self::dots_scalar(w, sc, a, out)
        }
    };
}

/// The fifth bit of value `j` of a Q5 block, as 16 or 0.
fn q5_high(qh: [u8; 4], j: usize) -> i32 {
    ((u32::from_le_bytes(qh) >> j) & 1) as i32 * 16
}

/// Nibble `j` of 32: low nibbles hold values 0..16, high nibbles 16..32.
fn nibble(qs: &[u8; 16], j: usize) -> i32 {
    if j < 16 {
        (qs[j] & 0x0F) as i32
    } else {
        (qs[j - 16] >> 4) as i32
    }
}

impl Kernel for Q4_1 {
    type A = Q8_1;
    fn d(&self) -> f32 {
        h2f(self.d)
    }
    fn m(&self) -> f32 {
        h2f(self.m)
    }
    fn q(&self, j: usize) -> i32 {
        nibble(&self.qs, j)
    }
    dispatch!(q4_1);
}

impl Kernel for Q5_0 {
    type A = A8_0;
    fn d(&self) -> f32 {
        h2f(self.d)
    }
    fn q(&self, j: usize) -> i32 {
        nibble(&self.qs, j) + q5_high(self.qh, j) - 16
    }
    dispatch!(q5_0);
}

impl Kernel for Q5_1 {
    type A = Q8_1;
    fn d(&self) -> f32 {
        h2f(self.d)
    }
    fn m(&self) -> f32 {
        h2f(self.m)
    }
    fn q(&self, j: usize) -> i32 {
        nibble(&self.qs, j) + q5_high(self.qh, j)
    }
    dispatch!(q5_1);
}

impl Kernel for Q8_0 {
    type A = A8_0;
    fn d(&self) -> f32 {
        h2f(self.d)
    }
    fn q(&self, j: usize) -> i32 {
        self.qs[j] as i32
    }
    dispatch!(q8_0);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{A8_0, Activation, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }
    }

    /// 32 nibbles as bytes: the low nibbles (elements 0..16) then the high ones (16..32).
    #[inline(always)]
    unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
        unsafe {
            let q = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
            _mm256_and_si256(
                _mm256_set_m128i(_mm_srli_epi16(q, 4), q),
                _mm256_set1_epi8(0x0F),
            )
        }
    }

    /// 0xFF in byte j where bit j of `qh` is set (llama.cpp's bytes_from_bits_32).
    #[inline(always)]
    unsafe fn bits(qh: [u8; 4]) -> __m256i {
        unsafe {
            let x = u32::from_le_bytes(qh) as i32;
            let shuf = _mm256_set_epi64x(
                0x0303030303030303,
                0x0202020202020202,
                0x0101010101010101,
                0,
            );
            let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x), shuf);
            let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
            _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
        }
    }

    /// Sums of products of unsigned bytes `x` and signed bytes `y`, as 8 floats.
    #[inline(always)]
    unsafe fn dot_u8_i8(x: __m256i, y: __m256i) -> __m256 {
        unsafe {
            let p = _mm256_maddubs_epi16(x, y);
            _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)))
        }
    }

    /// Sums of products of signed bytes, as 8 floats.
    #[inline(always)]
    unsafe fn dot_i8_i8(x: __m256i, y: __m256i) -> __m256 {
        unsafe { dot_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x)) }
    }

    #[inline(always)]
    unsafe fn load(qs: &[i8; 32]) -> __m256i {
        unsafe { _mm256_loadu_si256(qs.as_ptr() as *const __m256i) }
    }

    /// See [`super::quantize_block`]; llama.cpp's AVX2 `quantize_row_q8_0` / `_q8_1`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_block(xs: &[f32], qs: &mut [i8; 32]) -> (f32, i32) {
        unsafe {
            let p = xs.as_ptr();
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let sign = _mm256_set1_ps(-0.0);
            let mut m = _mm256_andnot_ps(sign, v[0]);
            for x in &v[1..] {
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *x));
            }
            let m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
            let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            let amax = _mm_cvtss_f32(m4);
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
            let round = |x: __m256| {
                _mm256_cvtps_epi32(_mm256_round_ps(
                    _mm256_mul_ps(x, id),
                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
                ))
            };
            let i = [round(v[0]), round(v[1]), round(v[2]), round(v[3])];
            let total =
                _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
            let t4 = _mm_add_epi32(
                _mm256_extracti128_si256(total, 1),
                _mm256_castsi256_si128(total),
            );
            let t4 = _mm_add_epi32(t4, _mm_unpackhi_epi64(t4, t4));
            let t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0b01));
            let sum = _mm_cvtsi128_si32(t4);
            let packed = _mm256_packs_epi16(
                _mm256_packs_epi32(i[0], i[1]),
                _mm256_packs_epi32(i[2], i[3]),
            );
            let ordered =
                _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, ordered);
            (d, sum)
        }
    }

    /// One kernel: `$decode` turns a weight block into (32 values as bytes, scale, minimum),
    /// `$dot` multiplies them with an activation block's values; each row sums on its own.
    macro_rules! kernel {
        ($name:ident, $w:ty, $a:ty, |$x:ident, $s:ident| $decode:expr, $dot:ident, $with_min:expr) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $name<const R: usize>(
                w: &[$w],
                sc: &[[f32; 2]],
                a: &[&[$a]],
                out: &mut [f32],
            ) {
                unsafe {
                    let mut acc = [_mm256_setzero_ps(); R];
                    let mut mins = [0f32; R];
                    for (b, ($x, $s)) in w.iter().zip(sc).enumerate() {
                        let (q, dx, mx): (__m256i, f32, f32) = $decode;
                        for r in 0..R {
                            let y = &a[r][b];
                            let p = $dot(q, load(&y.qs));
                            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dx * y.d), p, acc[r]);
                            if $with_min {
                                mins[r] += mx * y.s();
                            }
                        }
                    }
                    for r in 0..R {
                        out[r] = hsum(acc[r]) + mins[r];
                    }
                }
            }
        };
    }

    kernel!(
        q4_1,
        Q4_1,
        Q8_1,
        |x, s| (nibbles(&x.qs), s[0], s[1]),
        dot_u8_i8,
        true
    );
    // nibble - 16 where the fifth bit is clear: the signed value in two's complement.
    kernel!(
        q5_0,
        Q5_0,
        A8_0,
        |x, s| (
            _mm256_or_si256(
                nibbles(&x.qs),
                _mm256_andnot_si256(bits(x.qh), _mm256_set1_epi8(0xF0u8 as i8))
            ),
            s[0],
            0.0
        ),
        dot_i8_i8,
        false
    );
    kernel!(
        q5_1,
        Q5_1,
        Q8_1,
        |x, s| (
            _mm256_or_si256(
                nibbles(&x.qs),
                _mm256_and_si256(bits(x.qh), _mm256_set1_epi8(0x10))
            ),
            s[0],
            s[1]
        ),
        dot_u8_i8,
        true
    );
    kernel!(
        q8_0,
        Q8_0,
        A8_0,
        |x, s| (load(&x.qs), s[0], 0.0),
        dot_i8_i8,
        false
    );
}

/// Blocks of one of this module's kernels with each block's (scale, minimum) as f32, converted
/// once at load instead of in every product.
struct Packed<K> {
    blocks: Vec<K>,
    scales: Vec<[f32; 2]>,
}

impl<K: Kernel> Packed<K> {
    fn new(blocks: Vec<K>) -> Self {
        let scales = blocks.iter().map(|b| [b.d(), b.m()]).collect();
        Self { blocks, scales }
    }
}

/// The weights of one matrix, as stored.
enum Blocks {
    Q4_1(Packed<Q4_1>),
    Q5_0(Packed<Q5_0>),
    Q5_1(Packed<Q5_1>),
    Q8_0(Packed<Q8_0>),
    Q4_0(Vec<BlockQ4_0>),
    Q2K(Vec<BlockQ2K>),
    Q3K(Vec<BlockQ3K>),
    Q4K(Vec<BlockQ4K>),
    Q5K(Vec<BlockQ5K>),
    Q6K(Vec<BlockQ6K>),
}

/// A quantized (n x k) weight matrix multiplied as `x · wᵀ` on the CPU.
pub struct QMatrix {
    n: usize,
    k: usize,
    blocks: Blocks,
}

/// Copies raw block bytes into a vector of blocks.
fn blocks_from<T: Copy>(bytes: &[u8], zero: T) -> Vec<T> {
    let size = std::mem::size_of::<T>();
    let mut out = vec![zero; bytes.len() / size];
    // SAFETY: T is a plain repr(C) block of integers (no invalid bit patterns), `out` holds
    // exactly bytes.len() / size of them, and the copy is byte-wise (no alignment needed).
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            out.as_mut_ptr() as *mut u8,
            out.len() * size,
        )
    };
    out
}

fn candle_blocks<T: GgmlType>(bytes: &[u8]) -> Vec<T> {
    let size = std::mem::size_of::<T>();
    let mut out: Vec<T> = (0..bytes.len() / size).map(|_| T::zeros()).collect();
    // SAFETY: as in blocks_from: candle's blocks are repr(C) plain data.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            out.as_mut_ptr() as *mut u8,
            out.len() * size,
        )
    };
    out
}

impl QMatrix {
    /// The matrix of a GGUF tensor, when its block type is one this module multiplies (None
    /// for float matrices and types it does not know).
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        let (n, k) = q.shape().dims2()?;
        let dtype = q.dtype();
        if k % dtype.block_size() != 0 {
            return Ok(None);
        }
        let bytes = q.data()?;
        let blocks = match dtype {
            GgmlDType::Q4_1 => Blocks::Q4_1(Packed::new(blocks_from(
                &bytes,
                Q4_1 {
                    d: 0,
                    m: 0,
                    qs: [0; 16],
                },
            ))),
            GgmlDType::Q5_0 => Blocks::Q5_0(Packed::new(blocks_from(
                &bytes,
                Q5_0 {
                    d: 0,
                    qh: [0; 4],
                    qs: [0; 16],
                },
            ))),
            GgmlDType::Q5_1 => Blocks::Q5_1(Packed::new(blocks_from(
                &bytes,
                Q5_1 {
                    d: 0,
                    m: 0,
                    qh: [0; 4],
                    qs: [0; 16],
                },
            ))),
            GgmlDType::Q8_0 => Blocks::Q8_0(Packed::new(blocks_from(&bytes, Q8_0::default()))),
            GgmlDType::Q4_0 => Blocks::Q4_0(candle_blocks(&bytes)),
            GgmlDType::Q2K => Blocks::Q2K(candle_blocks(&bytes)),
            GgmlDType::Q3K => Blocks::Q3K(candle_blocks(&bytes)),
            GgmlDType::Q4K => Blocks::Q4K(candle_blocks(&bytes)),
            GgmlDType::Q5K => Blocks::Q5K(candle_blocks(&bytes)),
            GgmlDType::Q6K => Blocks::Q6K(candle_blocks(&bytes)),
            _ => return Ok(None),
        };
        Ok(Some(Self { n, k, blocks }))
    }

    /// `x · wᵀ` for x of shape (..., k); every output element is computed the same way
    /// whatever the number of rows.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().unwrap_or(&0);
        if k != self.k {
            candle_core::bail!("quantized matmul: input width {k}, matrix takes {}", self.k);
        }
        let m = x.elem_count() / k.max(1);
        let data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let out = match &self.blocks {
            Blocks::Q4_1(w) => multiply(w, &data, m, self.k, self.n),
            Blocks::Q5_0(w) => multiply(w, &data, m, self.k, self.n),
            Blocks::Q5_1(w) => multiply(w, &data, m, self.k, self.n),
            Blocks::Q8_0(w) => multiply(w, &data, m, self.k, self.n),
            Blocks::Q4_0(w) => multiply_candle(w, &data, m, self.k, self.n),
            Blocks::Q2K(w) => multiply_candle(w, &data, m, self.k, self.n),
            Blocks::Q3K(w) => multiply_candle(w, &data, m, self.k, self.n),
            Blocks::Q4K(w) => multiply_candle(w, &data, m, self.k, self.n),
            Blocks::Q5K(w) => multiply_candle(w, &data, m, self.k, self.n),
            Blocks::Q6K(w) => multiply_candle(w, &data, m, self.k, self.n),
        };
        let mut shape = dims;
        if let Some(last) = shape.last_mut() {
            *last = self.n;
        }
        Tensor::from_vec(out, shape, &Device::Cpu)
    }
}

/// Output columns per parallel task: enough tasks to balance the pool, each long enough that
/// the split costs little.
fn columns_per_task(n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (n / (threads * 8)).clamp(8, 256)
}

/// `x · wᵀ` with one of this module's kernels; returns (m, n) row-major.
fn multiply<K: Kernel>(w: &Packed<K>, x: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let kb = k / 32;
    let mut a = vec![K::A::default(); m * kb];
    for (row, out) in x.chunks_exact(k).zip(a.chunks_exact_mut(kb)) {
        K::A::quantize(row, out);
    }
    let rows: Vec<&[K::A]> = a.chunks_exact(kb).collect();
    columns(n, m, |col, out| {
        let cols = col * kb..(col + 1) * kb;
        K::dots(&w.blocks[cols.clone()], &w.scales[cols], &rows, out)
    })
}

/// `x · wᵀ` with candle's dot product for a block type, one (row, column) at a time.
fn multiply_candle<T: GgmlType>(w: &[T], x: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let kb = k / T::BLCK_SIZE;
    let mut a: Vec<T::VecDotType> = (0..m * kb).map(|_| T::VecDotType::zeros()).collect();
    for (row, out) in x.chunks_exact(k).zip(a.chunks_exact_mut(kb)) {
        T::VecDotType::from_float(row, out);
    }
    columns(n, m, |col, out| {
        let wc = &w[col * kb..(col + 1) * kb];
        for (o, row) in out.iter_mut().zip(a.chunks_exact(kb)) {
            *o = T::vec_dot(k, wc, row);
        }
    })
}

/// Fills an (m, n) output by columns in parallel: `dot(col, out)` writes column `col` for
/// every row.
fn columns(n: usize, m: usize, dot: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    if m == 0 || n == 0 {
        return Vec::new();
    }
    let per = columns_per_task(n);
    let mut by_column = vec![0f32; n * m];
    by_column
        .par_chunks_mut(per * m)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (i, out) in chunk.chunks_exact_mut(m).enumerate() {
                dot(task * per + i, out);
            }
        });
    if m == 1 {
        return by_column;
    }
    let mut out = vec![0f32; n * m];
    for (col, values) in by_column.chunks_exact(m).enumerate() {
        for (row, v) in values.iter().enumerate() {
            out[row * n + col] = *v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn matrix(dtype: GgmlDType, n: usize, k: usize) -> QMatrix {
        let w = Tensor::from_vec(random(n * k, 7), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        QMatrix::from_qtensor(&q).unwrap().unwrap()
    }

    /// Every type the bundled models carry: one row alone gives the same bits as the same row
    /// inside batches of 2, 7 and 16.
    #[test]
    fn rows_do_not_depend_on_their_batch() {
        let k = 512;
        for dtype in [
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
            GgmlDType::Q4_0,
        ] {
            let w = matrix(dtype, 40, k);
            let x = random(16 * k, 3);
            let alone: Vec<Vec<f32>> = (0..16)
                .map(|r| {
                    let t = Tensor::from_vec(x[r * k..(r + 1) * k].to_vec(), (1, k), &Device::Cpu)
                        .unwrap();
                    w.forward(&t)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap()
                })
                .collect();
            for batch in [2, 7, 16] {
                let t =
                    Tensor::from_vec(x[..batch * k].to_vec(), (batch, k), &Device::Cpu).unwrap();
                let out = w.forward(&t).unwrap().to_vec2::<f32>().unwrap();
                for (r, row) in out.iter().enumerate() {
                    let same = row
                        .iter()
                        .zip(&alone[r])
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{dtype:?}: row {r} differs inside a batch of {batch}");
                }
            }
        }
    }

    /// The AVX2 activation quantizer gives the scalar one's values, scale and sum.
    #[test]
    fn activation_quantizers_agree() {
        let mut x = random(32 * 64, 5);
        // Ties at .5 after scaling, zeros and a block of zeros.
        x[3] = 0.0;
        x[4] = -x[5];
        x[64..96].fill(0.0);
        for xs in x.chunks_exact(32) {
            let (mut a, mut b) = ([0i8; 32], [0i8; 32]);
            let fast = quantize_block(xs, &mut a);
            let slow = quantize_block_scalar(xs, &mut b);
            assert_eq!((a, fast.0.to_bits(), fast.1), (b, slow.0.to_bits(), slow.1));
        }
    }

    fn check<K: Kernel>(w: &[K], sc: &[[f32; 2]], a: &[Vec<K::A>]) {
        let rows: Vec<&[K::A]> = a.iter().map(|r| r.as_slice()).collect();
        let mut fast = vec![0f32; rows.len()];
        let mut slow = vec![0f32; rows.len()];
        K::dots(w, sc, &rows, &mut fast);
        K::dots_scalar(w, sc, &rows, &mut slow);
        for (f, s) in fast.iter().zip(&slow) {
            assert!((f - s).abs() <= 1e-4 * s.abs().max(1.0), "{f} vs {s}");
        }
    }

    /// The SIMD dot products agree with the scalar reference (only the float summation order
    /// differs), and the whole product with candle's dequantized matmul.
    #[test]
    fn simd_dot_products_match_the_scalar_reference() {
        let k = 256;
        let x = random(5 * k, 11);
        macro_rules! case {
            ($dtype:expr, $variant:ident) => {{
                let m = matrix($dtype, 3, k);
                let Blocks::$variant(w) = &m.blocks else {
                    unreachable!()
                };
                let kb = k / 32;
                for col in 0..3 {
                    let a: Vec<Vec<_>> = x
                        .chunks_exact(k)
                        .map(|row| {
                            let mut out = vec![Default::default(); kb];
                            <<$variant as Kernel>::A as Activation>::quantize(row, &mut out);
                            out
                        })
                        .collect();
                    let cols = col * kb..(col + 1) * kb;
                    check(&w.blocks[cols.clone()], &w.scales[cols], &a);
                }
            }};
        }
        case!(GgmlDType::Q4_1, Q4_1);
        case!(GgmlDType::Q5_0, Q5_0);
        case!(GgmlDType::Q5_1, Q5_1);
        case!(GgmlDType::Q8_0, Q8_0);
        // Against candle's f32 product of the dequantized matrix: activation quantization
        // error only.
        for dtype in [
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ] {
            let w = Tensor::from_vec(random(8 * k, 7), (8, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let ours = QMatrix::from_qtensor(&q).unwrap().unwrap();
            let xt = Tensor::from_vec(x.clone(), (5, k), &Device::Cpu).unwrap();
            let got = ours.forward(&xt).unwrap().to_vec2::<f32>().unwrap();
            let want = xt
                .matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap())
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                assert!(
                    (g - w).abs() < 0.05 * w.abs().max(1.0),
                    "{dtype:?}: {g} vs {w}"
                );
            }
        }
    }

    /// The same products as candle's quantized matmul (Q5_0 / Q8_0 to the last bits; Q4_1 /
    /// Q5_1 within the rounding of the activation block sum, which llama.cpp takes from the
    /// f32 scale and candle from the f16 one).
    #[test]
    fn products_match_candle() {
        use candle_core::Module;
        use candle_core::quantized::QMatMul;
        let (n, k) = (64, 576);
        let w = Tensor::from_vec(random(n * k, 1), (n, k), &Device::Cpu).unwrap();
        let x = Tensor::from_vec(random(k, 2), (1, k), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let ours = QMatrix::from_qtensor(&q)
                .unwrap()
                .unwrap()
                .forward(&x)
                .unwrap();
            let theirs = QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
            let a = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 5e-3, "{dtype:?}: worst difference {worst}");
        }
    }
}
