//! Rotary position embeddings as transformers computes them (`modeling_rope_utils`): the
//! inverse frequencies of every RoPE type decoders ship with (default, linear, dynamic NTK,
//! YaRN, Llama 3, LongRoPE, and llama.cpp's per-frequency factors), the cos / sin scaling
//! ("attention factor") some of them apply, and partial rotary dimensions.
//!
//! Two types depend on the sequence's length, as in transformers' `dynamic_rope_update`: dynamic
//! NTK recomputes its frequencies for a sequence longer than `max_position_embeddings`, and
//! LongRoPE switches from its short to its long factors once a sequence passes the original
//! context. Both decide per forward step from the length the sequence reaches in that step, so a
//! prompt's earlier positions keep the rotation they were cached with, exactly as a transformers
//! `generate` does.

use candle_core::{DType, Device, Result, Tensor, bail};

/// How the frequencies are scaled (`rope_parameters.rope_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum Scaling {
    /// `default`: none.
    Default,
    /// `linear`: positions divided by `factor`.
    Linear {
        /// The divisor.
        factor: f32,
    },
    /// `dynamic` (NTK-aware): past `max_positions`, the base grows with the sequence.
    Dynamic {
        /// The scaling factor.
        factor: f32,
        /// `max_position_embeddings`: the length from which the base is rescaled.
        max_positions: usize,
    },
    /// `yarn`: interpolation blended with extrapolation by frequency, cos / sin scaled.
    Yarn {
        /// The context extension factor.
        factor: f32,
        /// The pretraining context.
        original: usize,
        /// The ramp's fast boundary (rotations).
        beta_fast: f32,
        /// The ramp's slow boundary (rotations).
        beta_slow: f32,
        /// Whether the correction range is rounded to whole dimensions.
        truncate: bool,
        /// What cos and sin are multiplied by.
        attention_factor: f32,
    },
    /// `llama3`: low frequencies divided by `factor`, a smooth ramp between.
    Llama3 {
        /// The divisor of low frequencies.
        factor: f32,
        /// Wavelengths past `original / low_freq_factor` are scaled.
        low_freq_factor: f32,
        /// Wavelengths under `original / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// The pretraining context.
        original: usize,
    },
    /// `longrope` (Phi-3): per-frequency factors, short ones within the original context and
    /// long ones past it; cos / sin scaled.
    LongRope {
        /// Factors while the sequence is within `original`.
        short: Vec<f32>,
        /// Factors once it is past.
        long: Vec<f32>,
        /// The pretraining context.
        original: usize,
        /// What cos and sin are multiplied by.
        attention_factor: f32,
    },
    /// llama.cpp's `rope_freqs` tensor (Llama 3.1 GGUF files): each frequency divided by its
    /// factor.
    Factors(Vec<f32>),
}

/// The RoPE of a group of layers.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    /// `rope_theta`.
    pub base: f32,
    /// Rotated dimensions per head (head_dim × partial_rotary_factor); the rest pass through.
    pub dim: usize,
    /// The scaling type.
    pub scaling: Scaling,
}

impl RopeSpec {
    /// Unscaled RoPE over `dim` dimensions.
    pub fn plain(base: f32, dim: usize) -> Self {
        Self {
            base,
            dim,
            scaling: Scaling::Default,
        }
    }

    /// The inverse frequencies (dim / 2) and the cos / sin factor for a sequence of `seq_len`
    /// tokens (only dynamic NTK and LongRoPE look at it).
    pub fn inv_freq(&self, seq_len: usize) -> (Vec<f32>, f32) {
        let dim = self.dim;
        let base = self.base;
        let plain = |base: f32| -> Vec<f32> {
            (0..dim)
                .step_by(2)
                .map(|i| 1f32 / base.powf(i as f32 / dim as f32))
                .collect()
        };
        match &self.scaling {
            Scaling::Default => (plain(base), 1.0),
            Scaling::Linear { factor } => (plain(base).iter().map(|f| f / factor).collect(), 1.0),
            Scaling::Dynamic {
                factor,
                max_positions,
            } => {
                if seq_len <= *max_positions {
                    return (plain(base), 1.0);
                }
                // transformers computes this with tensors, in f32.
                let grown = factor * seq_len as f32 / *max_positions as f32 - (factor - 1.0);
                let base = base * grown.powf(dim as f32 / (dim as f32 - 2.0));
                (plain(base), 1.0)
            }
            Scaling::Yarn {
                factor,
                original,
                beta_fast,
                beta_slow,
                truncate,
                attention_factor,
            } => {
                let correction = |rotations: f64| {
                    dim as f64 * (*original as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * (base as f64).ln())
                };
                let (mut low, mut high) =
                    (correction(*beta_fast as f64), correction(*beta_slow as f64));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
                if low == high {
                    high += 0.001; // as transformers: no division by zero
                }
                let (low, high) = (low as f32, high as f32);
                let freqs: Vec<f32> = (0..dim)
                    .step_by(2)
                    .enumerate()
                    .map(|(k, i)| {
                        let pos_freq = base.powf(i as f32 / dim as f32);
                        let extrapolation = 1.0 / pos_freq;
                        let interpolation = 1.0 / (factor * pos_freq);
                        let ramp = ((k as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let keep = 1.0 - ramp;
                        interpolation * (1.0 - keep) + extrapolation * keep
                    })
                    .collect();
                (freqs, *attention_factor)
            }
            Scaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original,
            } => {
                let old = *original as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let freqs = plain(base)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        if wavelen < high_wavelen || wavelen > low_wavelen {
                            return scaled;
                        }
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    })
                    .collect();
                (freqs, 1.0)
            }
            Scaling::LongRope {
                short,
                long,
                original,
                attention_factor,
            } => {
                let ext = if seq_len > *original { long } else { short };
                let freqs = (0..dim)
                    .step_by(2)
                    .zip(ext)
                    .map(|(i, e)| 1.0 / (e * base.powf(i as f32 / dim as f32)))
                    .collect();
                (freqs, *attention_factor)
            }
            Scaling::Factors(factors) => (
                plain(base)
                    .iter()
                    .zip(factors)
                    .map(|(f, d)| f / d)
                    .collect(),
                1.0,
            ),
        }
    }

    /// Checks the parameters fit the rotated dimensions.
    pub fn validate(&self) -> Result<()> {
        let half = self.dim / 2;
        if self.dim == 0 || self.dim % 2 == 1 {
            bail!("RoPE over {} dimensions: it needs an even number", self.dim)
        }
        match &self.scaling {
            Scaling::LongRope { short, long, .. } if short.len() != half || long.len() != half => {
                bail!(
                    "longrope factors: {} short and {} long for {half} frequencies",
                    short.len(),
                    long.len()
                )
            }
            Scaling::Factors(f) if f.len() != half => {
                bail!("rope_freqs has {} factors for {half} frequencies", f.len())
            }
            _ => Ok(()),
        }
    }
}

/// A RoPE ready to rotate: the cos / sin rows of every position, computed once where they do
/// not depend on the sequence's length.
pub struct Rope {
    spec: RopeSpec,
    /// Rows for sequences within `threshold` (all sequences when there is none).
    table: (Tensor, Tensor),
    /// LongRoPE's rows past the original context.
    long: Option<(Tensor, Tensor)>,
    /// From which sequence length the rows change (dynamic NTK, LongRoPE).
    threshold: Option<usize>,
    device: Device,
}

/// cos and sin of `positions` × `inv_freq`, times `attention`: (len, dim / 2) each, in f32 as
/// transformers computes them.
fn rows(
    inv_freq: &[f32],
    attention: f32,
    start: usize,
    len: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let theta = Tensor::new(inv_freq, device)?;
    let angles = Tensor::arange(start as u32, (start + len) as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((len, 1))?
        .matmul(&theta.reshape((1, inv_freq.len()))?)?;
    let (cos, sin) = (angles.cos()?, angles.sin()?);
    if attention == 1.0 {
        return Ok((cos, sin));
    }
    Ok(((cos * attention as f64)?, (sin * attention as f64)?))
}

impl Rope {
    /// Precomputes `spec`'s rows for `context` positions.
    pub fn new(spec: RopeSpec, context: usize, device: &Device) -> Result<Self> {
        spec.validate()?;
        let threshold = match &spec.scaling {
            Scaling::Dynamic { max_positions, .. } => Some(*max_positions),
            Scaling::LongRope { original, .. } => Some(*original),
            _ => None,
        };
        let short_len = threshold.map_or(context, |t| t.min(context));
        let (freqs, attention) = spec.inv_freq(short_len);
        let table = rows(&freqs, attention, 0, short_len, device)?;
        let long = match &spec.scaling {
            Scaling::LongRope { original, .. } => {
                let (freqs, attention) = spec.inv_freq(original + 1);
                Some(rows(&freqs, attention, 0, context, device)?)
            }
            _ => None,
        };
        Ok(Self {
            spec,
            table,
            long,
            threshold,
            device: device.clone(),
        })
    }

    /// Rotated dimensions per head.
    pub fn dim(&self) -> usize {
        self.spec.dim
    }

    /// Whether every sequence uses the same rows (no length-dependent type).
    pub fn is_static(&self) -> bool {
        self.threshold.is_none()
    }

    /// The full table of a static RoPE.
    pub fn table(&self) -> &(Tensor, Tensor) {
        &self.table
    }

    /// cos / sin rows of the `t` positions from `pos` of a sequence that reaches `pos + t`
    /// tokens in this step.
    pub fn at(&self, pos: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let reach = pos + t;
        match self.threshold {
            Some(threshold) if reach > threshold => match &self.long {
                Some((cos, sin)) => Ok((cos.narrow(0, pos, t)?, sin.narrow(0, pos, t)?)),
                None => {
                    let (freqs, attention) = self.spec.inv_freq(reach);
                    rows(&freqs, attention, pos, t, &self.device)
                }
            },
            _ => Ok((
                self.table.0.narrow(0, pos, t)?,
                self.table.1.narrow(0, pos, t)?,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama 3.1's published frequencies (factor 8, 1 / 4, original 8192, theta 500000, head
    /// 128): the highest frequency is kept, the lowest divided by 8.
    #[test]
    fn llama3_keeps_high_and_scales_low_frequencies() {
        let spec = RopeSpec {
            base: 500000.0,
            dim: 128,
            scaling: Scaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original: 8192,
            },
        };
        let (scaled, _) = spec.inv_freq(1);
        let (plain, _) = RopeSpec::plain(500000.0, 128).inv_freq(1);
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[63] - plain[63] / 8.0).abs() < 1e-12);
        // Wavelengths between 8192 / 4 and 8192 (frequencies 29-35 here) are blended.
        assert!(scaled[31] < plain[31] && scaled[31] > plain[31] / 8.0);
    }

    /// Dynamic NTK changes nothing within max_position_embeddings and lowers every frequency
    /// but the first past it.
    #[test]
    fn dynamic_ntk_grows_the_base_past_the_context() {
        let spec = RopeSpec {
            base: 10000.0,
            dim: 8,
            scaling: Scaling::Dynamic {
                factor: 4.0,
                max_positions: 24,
            },
        };
        assert_eq!(
            spec.inv_freq(24).0,
            RopeSpec::plain(10000.0, 8).inv_freq(1).0
        );
        let (past, _) = spec.inv_freq(30);
        let (plain, _) = spec.inv_freq(1);
        assert_eq!(past[0], 1.0);
        assert!(past[1..].iter().zip(&plain[1..]).all(|(p, q)| p < q));
    }
}
