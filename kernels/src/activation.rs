//! Elementwise work after a linear layer, fused into one pass over the model's rayon pool:
//! bias and BERT's erf GELU with a vectorisable erf (libm's erff is scalar).

use rayon::prelude::*;

/// Adds the bias `b` to every row of `y` (rows of `b.len()`) and applies BERT's erf GELU when
/// `gelu`, over the calling rayon pool: candle's erf is libm's scalar erff, and bias, GELU as
/// separate tensor ops each pass over the whole activation.
pub fn bias_gelu(y: &mut [f32], b: &[f32], gelu: bool) {
    let n = b.len().max(1);
    y.par_chunks_mut(n * 16).for_each(|rows| {
        for row in rows.chunks_exact_mut(n) {
            for (v, bias) in row.iter_mut().zip(b) {
                *v += bias;
            }
            if gelu {
                gelu_erf(row);
            }
        }
    });
}

/// `gelu(x)` with the error function (BERT's "gelu"), in place, vectorisable (libm's erff
/// is scalar and was a tenth of an embedding run).
pub fn gelu_erf(xs: &mut [f32]) {
    for x in xs {
        let z = *x * std::f32::consts::FRAC_1_SQRT_2;
        *x = 0.5 * *x * (1.0 + erf(z));
    }
}

/// erf as a rational function of x on [-4, 4] (outside, +-1 in f32): Eigen's / XLA's
/// single-precision fit, within a few ulp.
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_2e-3;
    q = x2 * q + -1.426_473_9e-2;
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_accurate() {
        for i in -400..=400 {
            let x = i as f64 / 100.0;
            // erf by its series (converges everywhere; enough terms for |x| <= 4).
            let mut term = x;
            let mut sum = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            let want = sum * 2.0 / std::f64::consts::PI.sqrt();
            let got = erf(x as f32) as f64;
            assert!((got - want).abs() < 5e-7, "erf({x}) = {got}, want {want}");
        }
    }
}
