//! Decode-step attention: one new query token per sequence over its cached keys and values,
//! every sequence and head of a step in one call.
//!
//! Run with tensor ops this is about ten small operations per sequence and layer (matmul,
//! scale, softmax, matmul, reshapes), whose fixed costs dominate a batched decode step of a
//! small model. Here each (sequence, head) is one task on the pool: scores, a max-subtracted
//! softmax and the weighted sum of values, in f32 and in a fixed order, so a sequence's result
//! never depends on which others share the step.

use rayon::prelude::*;

/// One sequence's cached keys and values for a layer: `kv_heads` planes of `head_dim`-wide
/// rows, plane `g` starting at `g * plane_stride`; positions `start..end` are attended.
pub struct Sequence<'a> {
    /// The keys.
    pub keys: &'a [f32],
    /// The values (same layout as the keys).
    pub values: &'a [f32],
    /// Elements between the starts of two kv heads' planes.
    pub plane_stride: usize,
    /// First attended position (a sliding window starts later).
    pub start: usize,
    /// One past the last attended position (the new token's).
    pub end: usize,
}

/// Attention of `queries` (sequences x heads x head_dim, row-major) over each sequence's cache;
/// query head `h` reads kv head `h / (heads / kv_heads)`. Scores are `q·k * scale`, soft-capped
/// to `cap * tanh(score / cap)` where `softcap` is given (Gemma 2). Returns the same shape as
/// `queries`.
pub fn decode(
    queries: &[f32],
    sequences: &[Sequence<'_>],
    (heads, kv_heads, head_dim): (usize, usize, usize),
    scale: f32,
    softcap: Option<f32>,
) -> Vec<f32> {
    let groups = heads / kv_heads.max(1);
    let mut out = vec![0f32; sequences.len() * heads * head_dim];
    out.par_chunks_mut(head_dim)
        .enumerate()
        .for_each(|(task, o)| {
            let (s, h) = (task / heads, task % heads);
            let seq = &sequences[s];
            let q = &queries[task * head_dim..(task + 1) * head_dim];
            let plane = (h / groups) * seq.plane_stride;
            fn row(data: &[f32], plane: usize, j: usize, d: usize) -> &[f32] {
                &data[plane + j * d..plane + (j + 1) * d]
            }
            let scores: Vec<f32> = (seq.start..seq.end)
                .map(|j| {
                    let s = dot(q, row(seq.keys, plane, j, head_dim)) * scale;
                    match softcap {
                        Some(cap) => (s / cap).tanh() * cap,
                        None => s,
                    }
                })
                .collect();
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let weights: Vec<f32> = scores.iter().map(|&v| (v - max).exp()).collect();
            let total: f32 = weights.iter().sum();
            for (j, w) in (seq.start..seq.end).zip(&weights) {
                let w = w / total;
                for (o, v) in o.iter_mut().zip(row(seq.values, plane, j, head_dim)) {
                    *o += w * v;
                }
            }
        });
    out
}

/// A dot product in eight lanes (the compiler vectorises it), summed in a fixed order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain softmax attention, with grouped heads and a window.
    #[test]
    fn matches_the_definition() {
        let (heads, kv_heads, d, cap) = (4, 2, 12, 16);
        let value = |i: usize| ((i * 37 % 101) as f32 / 50.0) - 1.0;
        let keys: Vec<f32> = (0..kv_heads * cap * d).map(value).collect();
        let values: Vec<f32> = (0..kv_heads * cap * d).map(|i| value(i + 7)).collect();
        let queries: Vec<f32> = (0..2 * heads * d).map(|i| value(i + 3)).collect();
        let seqs = [
            Sequence {
                keys: &keys,
                values: &values,
                plane_stride: cap * d,
                start: 0,
                end: 9,
            },
            Sequence {
                keys: &keys,
                values: &values,
                plane_stride: cap * d,
                start: 3,
                end: 11,
            },
        ];
        // Plain, and soft-capped (Gemma 2) at a cap the scores pass.
        for softcap in [None, Some(0.7f32)] {
            let got = decode(&queries, &seqs, (heads, kv_heads, d), 0.5, softcap);
            for (s, seq) in seqs.iter().enumerate() {
                for h in 0..heads {
                    let q = &queries[(s * heads + h) * d..][..d];
                    let g = h / (heads / kv_heads);
                    let k = |j: usize| &keys[g * cap * d + j * d..][..d];
                    let v = |j: usize| &values[g * cap * d + j * d..][..d];
                    let scores: Vec<f64> = (seq.start..seq.end)
                        .map(|j| 0.5 * q.iter().zip(k(j)).map(|(a, b)| (a * b) as f64).sum::<f64>())
                        .map(|s| softcap.map_or(s, |c| (s / c as f64).tanh() * c as f64))
                        .collect();
                    let z: f64 = scores.iter().map(|s| s.exp()).sum();
                    for i in 0..d {
                        let want: f64 = (seq.start..seq.end)
                            .zip(&scores)
                            .map(|(j, sc)| sc.exp() / z * v(j)[i] as f64)
                            .sum();
                        let have = got[(s * heads + h) * d + i] as f64;
                        assert!(
                            (have - want).abs() < 1e-5,
                            "seq {s} head {h} dim {i}: {have} vs {want}"
                        );
                    }
                }
            }
            // A sequence's result does not depend on the others in the call.
            let alone = decode(
                &queries[heads * d..],
                &seqs[1..],
                (heads, kv_heads, d),
                0.5,
                softcap,
            );
            assert_eq!(alone, got[heads * d..].to_vec());
        }
    }
}
