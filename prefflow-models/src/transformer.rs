//! Decoder-only transformers for generation: Llama (1-3.x, SmolLM2), Mistral, Qwen2, Qwen3,
//! Gemma 2, Gemma 3 and Phi-3, from GGUF files or safetensors folders, written over candle's `QMatMul` so one implementation runs
//! quantized weights (the GGUF default) or f32 weights (safetensors, or GGUF with
//! `OPTIONS (dtype 'f32')`: the parity path against transformers).
//!
//! Unlike candle-transformers' models, `forward` takes several sequences at once, each with its
//! own KV cache and position: the matrix products run on all their tokens together (one read of
//! the weights for the whole batch) while attention runs per sequence. That is what lets the
//! decode worker batch sequences of different lengths and admit new ones at any step.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::PathBuf;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};

use candle_core::{D, DType, Device, Module, Result, Tensor, bail};
use candle_nn::{Embedding, RmsNorm};
use prefflow_kernels::qmatmul::QMatrix;

use crate::rope::{Rope, RopeSpec, Scaling};

/// The architectures this file runs: one implementation, with the switches in [`Config`] named
/// after what each family does differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama (1, 2, 3.x), Mistral (sliding window), SmolLM2.
    Llama,
    /// Qwen2: Llama with q/k/v biases.
    Qwen2,
    /// Qwen3: per-head q/k RMSNorm, head_dim from the config, no biases.
    Qwen3,
    /// Gemma 2: scaled embeddings, sandwich norms, GELU, soft-capped attention and logits,
    /// alternating local / global layers.
    Gemma2,
    /// Gemma 3: Gemma 2 with q/k norms instead of soft-capping, two RoPE bases.
    Gemma3,
    /// Phi-3 / Phi-4-mini: fused qkv and gate/up matrices, partial rotary, LongRoPE.
    Phi3,
}

/// The families, as the error of an unsupported one lists them.
pub const FAMILIES: &str = "llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3";

impl Family {
    /// The family of a GGUF `general.architecture` or a config.json `model_type`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" | "mistral" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            "gemma2" => Some(Self::Gemma2),
            "gemma3" | "gemma3_text" => Some(Self::Gemma3),
            "phi3" => Some(Self::Phi3),
            _ => None,
        }
    }

    fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma2 | Family::Gemma3)
    }
}

/// The shape of a model, and what its family does differently.
#[derive(Debug, Clone)]
pub struct Config {
    /// Architecture.
    pub family: Family,
    /// Hidden width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// RoPE of full-attention layers.
    pub rope: RopeSpec,
    /// RoPE of sliding-window layers (Gemma 3's local layers have their own base).
    pub rope_local: RopeSpec,
    /// Per layer: the sliding window, if the layer attends locally.
    pub windows: Vec<Option<usize>>,
    /// Longest sequence (prompt + generation).
    pub context: usize,
    /// Attention score scale.
    pub attn_scale: f64,
    /// Whether q/k rows are permuted for interleaved RoPE (llama.cpp's llama layout).
    pub interleaved_rope: bool,
    /// Per-head RMSNorm of queries and keys before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Norms after attention and after the feed-forward too (Gemma).
    pub sandwich_norms: bool,
    /// Checkpoint norm weights are offsets: the scale is 1 + w (Gemma).
    pub norm_offset: bool,
    /// Embeddings multiplied by sqrt(hidden) (Gemma).
    pub scaled_embeddings: bool,
    /// The feed-forward gate's activation is GELU (tanh approximation) instead of SiLU (Gemma).
    pub gelu: bool,
    /// Attention scores soft-capped to `cap * tanh(score / cap)` (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Output logits soft-capped the same way (Gemma 2).
    pub final_softcap: Option<f32>,
}

impl Config {
    /// The switches of `family`, around a shape.
    #[allow(clippy::too_many_arguments)]
    fn of(
        family: Family,
        (hidden, heads, kv_heads, head_dim): (usize, usize, usize, usize),
        eps: f64,
        (rope, rope_local): (RopeSpec, RopeSpec),
        windows: Vec<Option<usize>>,
        context: usize,
        attn_scale: f64,
        softcaps: (Option<f32>, Option<f32>),
    ) -> Result<Self> {
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            bail!("{heads} attention heads cannot share {kv_heads} key/value heads")
        }
        if rope.dim > head_dim || rope_local.dim > head_dim {
            bail!("RoPE over {} dimensions of {head_dim}-wide heads", rope.dim)
        }
        let gemma = family.is_gemma();
        Ok(Self {
            family,
            hidden,
            heads,
            kv_heads,
            head_dim,
            eps,
            rope,
            rope_local,
            windows,
            context,
            attn_scale,
            interleaved_rope: false,
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            sandwich_norms: gemma,
            norm_offset: gemma,
            scaled_embeddings: gemma,
            gelu: gemma,
            attn_softcap: softcaps.0,
            final_softcap: softcaps.1,
        })
    }

    /// Reads the shape from GGUF metadata (`{architecture}.…` keys).
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        let arch = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let Some(family) = Family::from_name(&arch) else {
            bail!("GGUF architecture '{arch}' cannot generate ({FAMILIES} can)")
        };
        let get = |k: &str| ct.metadata.get(&format!("{arch}.{k}"));
        let need = |k: &str| {
            get(k)
                .ok_or_else(|| candle_core::Error::Msg(format!("GGUF metadata has no {arch}.{k}")))
        };
        let float = |k: &str| get(k).and_then(|v| v.to_f32().ok());
        let heads = need("attention.head_count")?.to_u32()? as usize;
        let hidden = need("embedding_length")?.to_u32()? as usize;
        let layers = need("block_count")?.to_u32()? as usize;
        let kv_heads = get("attention.head_count_kv")
            .and_then(|v| v.to_u32().ok())
            .map_or(heads, |v| v as usize);
        let head_dim = get("attention.key_length")
            .and_then(|v| v.to_u32().ok())
            .map_or(hidden / heads.max(1), |v| v as usize);
        let eps = need("attention.layer_norm_rms_epsilon")?.to_f32()? as f64;
        let base = float("rope.freq_base").unwrap_or(10000.0);
        let context = get("context_length")
            .and_then(|v| v.to_u32().ok())
            .map_or(4096, |v| v as usize);
        let dim = get("rope.dimension_count")
            .and_then(|v| v.to_u32().ok())
            .map_or(head_dim, |v| v as usize);
        let scaling_type = get("rope.scaling.type")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let factor = float("rope.scaling.factor").unwrap_or(1.0);
        let original = get("rope.scaling.original_context_length")
            .and_then(|v| v.to_u32().ok())
            .map(|v| v as usize);
        let scaling = if ct.tensor_infos.contains_key("rope_freqs.weight") {
            // Llama 3.1: per-frequency divisors; the tensors are read with the weights
            // (Transformer::load), as are LongRoPE's factors below.
            Scaling::Factors(Vec::new())
        } else if ct.tensor_infos.contains_key("rope_factors_long.weight") {
            let original = original.unwrap_or(context);
            let attention_factor = float("rope.scaling.attn_factor").unwrap_or_else(|| {
                let f = context as f64 / original as f64;
                if f <= 1.0 {
                    1.0
                } else {
                    (1.0 + f.ln() / (original as f64).ln()).sqrt() as f32
                }
            });
            Scaling::LongRope {
                short: Vec::new(),
                long: Vec::new(),
                original,
                attention_factor,
            }
        } else {
            match scaling_type.as_str() {
                "" | "none" => Scaling::Default,
                "linear" => Scaling::Linear { factor },
                "yarn" => Scaling::Yarn {
                    factor,
                    original: original.unwrap_or(context),
                    beta_fast: float("rope.scaling.yarn_beta_fast").unwrap_or(32.0),
                    beta_slow: float("rope.scaling.yarn_beta_slow").unwrap_or(1.0),
                    truncate: true,
                    attention_factor: float("rope.scaling.attn_factor")
                        .unwrap_or(0.1 * factor.ln() + 1.0),
                },
                other => bail!(
                    "GGUF rope scaling '{other}' is not supported (none, linear, yarn, rope_freqs and LongRoPE factors are)"
                ),
            }
        };
        let window = get("attention.sliding_window")
            .and_then(|v| v.to_u32().ok())
            .map(|v| v as usize);
        let windows = (0..layers)
            .map(|i| match family {
                // Gemma 2: even layers local (llama.cpp's swa pattern 2); Gemma 3: five local
                // layers, then one global (pattern 6).
                Family::Gemma2 if i % 2 == 0 => window,
                Family::Gemma3 if (i + 1) % 6 != 0 => window,
                Family::Gemma2 | Family::Gemma3 => None,
                // Mistral and Phi-3 files that carry a window apply it everywhere.
                _ => window,
            })
            .collect();
        let rope = RopeSpec { base, dim, scaling };
        let local = RopeSpec::plain(10000.0, dim);
        let softcaps = (
            float("attn_logit_softcapping"),
            float("final_logit_softcapping"),
        );
        let mut config = Self::of(
            family,
            (hidden, heads, kv_heads, head_dim),
            eps,
            (rope, local),
            windows,
            context,
            // llama.cpp's scale of the scores: 1/sqrt(head_dim) unless the file names one
            // (attention.scale; Gemma 2 files with query_pre_attn_scalar unlike head_dim).
            float("attention.scale").map_or(1.0 / (head_dim as f64).sqrt(), |s| s as f64),
            softcaps,
        )?;
        config.interleaved_rope = family == Family::Llama;
        if family != Family::Gemma3 {
            config.rope_local = config.rope.clone();
        }
        Ok(config)
    }

    /// Reads the shape from a Hugging Face config.json (transformers 4 or 5 layout).
    pub fn from_json(c: &serde_json::Value) -> Result<Self> {
        let model_type = c["model_type"].as_str().unwrap_or("");
        let Some(family) = Family::from_name(model_type) else {
            bail!("model_type '{model_type}' cannot generate ({FAMILIES} can)")
        };
        let num = |k: &str| c[k].as_u64().map(|v| v as usize);
        let need = |k: &str| {
            num(k).ok_or_else(|| candle_core::Error::Msg(format!("config.json has no {k}")))
        };
        let hidden = need("hidden_size")?;
        let heads = need("num_attention_heads")?;
        let layers = need("num_hidden_layers")?;
        let kv_heads = num("num_key_value_heads").unwrap_or(heads);
        let head_dim = num("head_dim").unwrap_or(hidden / heads.max(1));
        let eps = c["rms_norm_eps"].as_f64().unwrap_or(1e-6);
        let max_positions = num("max_position_embeddings").unwrap_or(4096);
        // transformers 5 nests rope settings under rope_parameters, per attention type for
        // Gemma 3; older files keep rope_theta / rope_local_base_freq / rope_scaling flat.
        let params = &c["rope_parameters"];
        let full = if params["full_attention"].is_object() {
            &params["full_attention"]
        } else {
            params
        };
        let base = full["rope_theta"]
            .as_f64()
            .or_else(|| c["rope_theta"].as_f64())
            .unwrap_or(10000.0) as f32;
        let local_base = params["sliding_attention"]["rope_theta"]
            .as_f64()
            .or_else(|| c["rope_local_base_freq"].as_f64());
        let scaling = if full["rope_type"].is_string() {
            full
        } else {
            &c["rope_scaling"]
        };
        let partial = full["partial_rotary_factor"]
            .as_f64()
            .or_else(|| c["partial_rotary_factor"].as_f64())
            .unwrap_or(1.0);
        let dim = (head_dim as f64 * partial) as usize;
        let (scaling, context) = rope_scaling(scaling, c, max_positions)?;
        let rope = RopeSpec { base, dim, scaling };
        let rope_local = match local_base {
            Some(b) if family == Family::Gemma3 => RopeSpec::plain(b as f32, dim),
            _ if family == Family::Gemma3 => RopeSpec::plain(10000.0, dim),
            _ => rope.clone(),
        };
        let window = num("sliding_window");
        // transformers 5 writes each layer's type; older configs say it with a pattern
        // (Gemma), max_window_layers (Qwen2: layers from it on are local) or not at all
        // (Mistral, Phi-3: a window applies to every layer).
        let windows = (0..layers)
            .map(|i| {
                let local = match c["layer_types"][i].as_str() {
                    Some(t) => t == "sliding_attention",
                    None => match family {
                        Family::Gemma2 => i % 2 == 0,
                        Family::Gemma3 => (i + 1) % num("sliding_window_pattern").unwrap_or(6) != 0,
                        Family::Qwen2 | Family::Qwen3 => {
                            c["use_sliding_window"].as_bool() == Some(true)
                                && i >= num("max_window_layers").unwrap_or(0)
                        }
                        Family::Llama | Family::Phi3 => true,
                    },
                };
                if local { window } else { None }
            })
            .collect();
        let attn_scale = match num("query_pre_attn_scalar") {
            Some(s) if family.is_gemma() => 1.0 / (s as f64).sqrt(),
            _ => 1.0 / (head_dim as f64).sqrt(),
        };
        let cap = |k: &str| c[k].as_f64().map(|v| v as f32);
        let softcaps = if family == Family::Gemma2 {
            (
                cap("attn_logit_softcapping"),
                cap("final_logit_softcapping"),
            )
        } else {
            for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
                if !c[k].is_null() {
                    bail!("{k} is not supported for {model_type} (Gemma 2 has it)")
                }
            }
            (None, None)
        };
        Self::of(
            family,
            (hidden, heads, kv_heads, head_dim),
            eps,
            (rope, rope_local),
            windows,
            context,
            attn_scale,
            softcaps,
        )
    }
}

/// The RoPE scaling of a config.json (`rope_parameters` or the older `rope_scaling`), and the
/// model's context: dynamic NTK extends it by its factor.
fn rope_scaling(
    s: &serde_json::Value,
    c: &serde_json::Value,
    max_positions: usize,
) -> Result<(Scaling, usize)> {
    let kind = s["rope_type"]
        .as_str()
        .or_else(|| s["type"].as_str())
        .unwrap_or("default");
    let f = |k: &str| s[k].as_f64().map(|v| v as f32);
    let original = s["original_max_position_embeddings"]
        .as_u64()
        .or_else(|| c["original_max_position_embeddings"].as_u64())
        .map(|v| v as usize);
    let need_original = || {
        original.ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "rope scaling '{kind}' needs original_max_position_embeddings"
            ))
        })
    };
    let factor = f("factor");
    let scaling = match kind {
        "default" => Scaling::Default,
        "linear" => Scaling::Linear {
            factor: factor.unwrap_or(1.0),
        },
        "dynamic" => {
            let factor = factor.unwrap_or(1.0);
            let context = (max_positions as f64 * factor as f64) as usize;
            return Ok((
                Scaling::Dynamic {
                    factor,
                    max_positions,
                },
                context.max(max_positions),
            ));
        }
        "yarn" => {
            let original = need_original()?;
            let factor = factor.unwrap_or(max_positions as f32 / original as f32);
            let mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention_factor = match (
                f("attention_factor"),
                s["mscale"].as_f64(),
                s["mscale_all_dim"].as_f64(),
            ) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                    (mscale(factor as f64, m) / mscale(factor as f64, all)) as f32
                }
                _ => mscale(factor as f64, 1.0) as f32,
            };
            Scaling::Yarn {
                factor,
                original,
                beta_fast: f("beta_fast").filter(|v| *v != 0.0).unwrap_or(32.0),
                beta_slow: f("beta_slow").filter(|v| *v != 0.0).unwrap_or(1.0),
                truncate: s["truncate"].as_bool().unwrap_or(true),
                attention_factor,
            }
        }
        "llama3" => Scaling::Llama3 {
            factor: factor.unwrap_or(8.0),
            low_freq_factor: f("low_freq_factor").unwrap_or(1.0),
            high_freq_factor: f("high_freq_factor").unwrap_or(4.0),
            original: need_original()?,
        },
        "longrope" | "su" => {
            let original = need_original()?;
            let list = |k: &str| -> Result<Vec<f32>> {
                s[k].as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_f64())
                            .map(|v| v as f32)
                            .collect()
                    })
                    .ok_or_else(|| candle_core::Error::Msg(format!("longrope needs {k}")))
            };
            let factor = factor.map_or(max_positions as f64 / original as f64, |v| v as f64);
            let attention_factor = f("attention_factor").unwrap_or(if factor <= 1.0 {
                1.0
            } else {
                (1.0 + factor.ln() / (original as f64).ln()).sqrt() as f32
            });
            Scaling::LongRope {
                short: list("short_factor")?,
                long: list("long_factor")?,
                original,
                attention_factor,
            }
        }
        other => bail!(
            "rope scaling '{other}' is not supported (default, linear, dynamic, yarn, llama3 and longrope are)"
        ),
    };
    Ok((scaling, max_positions))
}

/// Where weights come from. Names are GGUF's (`blk.N.attn_q.weight`); a safetensors folder
/// maps them to transformers' names.
pub enum Weights<'a, R: Read + Seek> {
    /// A GGUF file, its matrices kept or converted as `matrices` says.
    Gguf {
        /// Parsed header.
        content: &'a gguf_file::Content,
        /// The open file.
        reader: &'a mut R,
        /// What to do with quantized matrices.
        matrices: Matrices,
    },
    /// safetensors tensors by transformers name, already f32 on the device.
    Safetensors(HashMap<String, Tensor>),
}

/// The transformers name of a GGUF tensor name.
fn hf_name(family: Family, gguf: &str) -> String {
    let (stem, suffix) = gguf.rsplit_once('.').unwrap_or((gguf, ""));
    let top = match stem {
        "token_embd" => Some("model.embed_tokens"),
        "output_norm" => Some("model.norm"),
        "output" => Some("lm_head"),
        _ => None,
    };
    if let Some(t) = top {
        return format!("{t}.{suffix}");
    }
    let Some((block, part)) = stem.strip_prefix("blk.").and_then(|s| s.split_once('.')) else {
        return gguf.to_string();
    };
    let part = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_qkv" => "self_attn.qkv_proj",
        // Phi-3's fused gate and up projections are GGUF's ffn_up (gate first).
        "ffn_up" if family == Family::Phi3 => "mlp.gate_up_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        // Gemma's "pre-feedforward" norm is GGUF's ffn_norm; Llama's is post_attention.
        "ffn_norm" if family.is_gemma() => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        other => other,
    };
    format!("model.layers.{block}.{part}.{suffix}")
}

impl<R: Read + Seek> Weights<'_, R> {
    fn matrices(&self) -> Matrices {
        match self {
            Weights::Gguf { matrices, .. } => *matrices,
            Weights::Safetensors(_) => Matrices::F32,
        }
    }

    fn raw(&mut self, family: Family, name: &str, device: &Device) -> Result<Option<QTensor>> {
        match self {
            Weights::Gguf {
                content, reader, ..
            } => {
                if !content.tensor_infos.contains_key(name) {
                    return Ok(None);
                }
                content.tensor(*reader, name, device).map(Some)
            }
            Weights::Safetensors(map) => {
                let hf = hf_name(family, name);
                let t = map
                    .get(&hf)
                    .or_else(|| map.get(hf.trim_start_matches("model.")))
                    .or_else(|| map.get(&format!("language_model.{hf}")));
                t.map(|t| QTensor::quantize(t, GgmlDType::F32)).transpose()
            }
        }
    }

    fn vector(&mut self, family: Family, name: &str, device: &Device) -> Result<Option<Tensor>> {
        let Some(t) = self.raw(family, name, device)? else {
            return Ok(None);
        };
        let t = t.dequantize(device)?;
        // Gemma's RMSNorm scales by (1 + w); GGUF files store 1 + w already, transformers
        // checkpoints store w.
        if family.is_gemma()
            && name.ends_with("norm.weight")
            && matches!(self, Weights::Safetensors(_))
        {
            return (t + 1.0).map(Some);
        }
        Ok(Some(t))
    }

    fn matrix(&mut self, family: Family, name: &str, device: &Device) -> Result<Option<Matrix>> {
        let Some(q) = self.raw(family, name, device)? else {
            return Ok(None);
        };
        matmul(q, self.matrices(), device).map(Some)
    }
}

/// What a GGUF model's quantized matrices become at load (`CREATE MODEL ... OPTIONS (dtype ...)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matrices {
    /// As stored (the default).
    Keep,
    /// Dequantized to f32: transformers' numbers (the parity path).
    F32,
    /// Q4_1, Q5_0 and Q5_1 re-quantized to Q8_0 (`dtype 'q8_0'`): kept for files whose block
    /// types prefflow has no fast kernel for; the price is a second rounding.
    Q8_0,
}

fn matmul(q: QTensor, matrices: Matrices, device: &Device) -> Result<Matrix> {
    let dense = match matrices {
        Matrices::F32 => QMatMul::Tensor(q.dequantize(device)?),
        Matrices::Q8_0
            if matches!(
                q.dtype(),
                GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
            ) && device.is_cpu() =>
        {
            let f = q.dequantize(device)?;
            return matmul(
                QTensor::quantize(&f, GgmlDType::Q8_0)?,
                Matrices::Keep,
                device,
            );
        }
        _ if device.is_cpu() => match QMatrix::from_qtensor(&q)? {
            Some(m) => return Ok(Matrix::Quantized(m)),
            None => QMatMul::from_qtensor(q)?,
        },
        _ => QMatMul::from_qtensor(q)?,
    };
    Ok(Matrix::Candle(dense))
}

/// A weight matrix: quantized blocks multiplied by prefflow's batched, batch-invariant kernels
/// on the CPU (see `prefflow_kernels::qmatmul`), or candle's (float matrices, GPUs).
pub enum Matrix {
    /// GGUF blocks as stored, on the CPU.
    Quantized(QMatrix),
    /// Anything else.
    Candle(QMatMul),
}

impl Matrix {
    /// `x · wᵀ`: every row's result is independent of the other rows in the batch (prefflow's
    /// quantized kernels compute each output element the same way for one row or many; float
    /// matrices run candle's matmul).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Matrix::Quantized(m) => m.forward(x),
            Matrix::Candle(w) => w.forward(x),
        }
    }
}

struct Linear {
    w: Matrix,
    b: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.w.forward(x)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// The query, key and value projections: three matrices, or one fused (Phi-3's qkv_proj) whose
/// output is cut into the three.
enum Qkv {
    Separate(Linear, Linear, Linear),
    Fused(Linear),
}

/// The feed-forward's gate and up projections: two matrices, or one fused (Phi-3's
/// gate_up_proj, gate first).
enum GateUp {
    Separate(Matrix, Matrix),
    Fused(Matrix),
}

struct Block {
    attn_norm: RmsNorm,
    qkv: Qkv,
    o: Matrix,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    post_attn_norm: Option<RmsNorm>,
    ffn_norm: RmsNorm,
    post_ffn_norm: Option<RmsNorm>,
    gate_up: GateUp,
    down: Matrix,
    window: Option<usize>,
    local_rope: bool,
}

impl Block {
    /// Queries, keys and values of `a` (tokens, hidden): (tokens, heads·d), (tokens, kv·d) twice.
    fn project(
        &self,
        a: &Tensor,
        (h, kvh, d): (usize, usize, usize),
    ) -> Result<(Tensor, Tensor, Tensor)> {
        match &self.qkv {
            Qkv::Separate(q, k, v) => Ok((q.forward(a)?, k.forward(a)?, v.forward(a)?)),
            Qkv::Fused(qkv) => {
                let all = qkv.forward(a)?;
                let q = all.narrow(1, 0, h * d)?.contiguous()?;
                let k = all.narrow(1, h * d, kvh * d)?.contiguous()?;
                let v = all.narrow(1, (h + kvh) * d, kvh * d)?.contiguous()?;
                Ok((q, k, v))
            }
        }
    }

    /// The gate and up projections of `f`.
    fn gate_up(&self, f: &Tensor) -> Result<(Tensor, Tensor)> {
        match &self.gate_up {
            GateUp::Separate(gate, up) => Ok((gate.forward(f)?, up.forward(f)?)),
            GateUp::Fused(both) => {
                let all = both.forward(f)?;
                let half = all.dim(1)? / 2;
                Ok((
                    all.narrow(1, 0, half)?.contiguous()?,
                    all.narrow(1, half, half)?.contiguous()?,
                ))
            }
        }
    }
}

/// The keys and values of one sequence, per layer, in buffers that grow by doubling so a decode
/// step writes one position instead of copying the whole history.
#[derive(Default)]
pub struct Cache {
    len: usize,
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl Cache {
    /// Tokens seen so far (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was seen yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// An independent copy (samples of one prompt continue from one prefill).
    pub fn fork(&self) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => Ok(Some((k.copy()?, v.copy()?))),
                None => Ok(None),
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            len: self.len,
            layers,
        })
    }

    /// Writes `k`, `v` (kv_heads, t, head_dim) at `pos` in `layer`; returns every key and value
    /// so far.
    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let pos = self.len;
        let (kvh, t, d) = k.dims3()?;
        let need = pos + t;
        let slot = &mut self.layers[layer];
        let cap = match slot {
            Some((kb, _)) => kb.dim(1)?,
            None => 0,
        };
        if need > cap {
            let grown = need.max(cap * 2).next_multiple_of(64);
            let nk = Tensor::zeros((kvh, grown, d), k.dtype(), k.device())?;
            let nv = Tensor::zeros((kvh, grown, d), v.dtype(), v.device())?;
            if let Some((ok, ov)) = slot.as_ref()
                && pos > 0
            {
                nk.slice_set(&ok.narrow(1, 0, pos)?.contiguous()?, 1, 0)?;
                nv.slice_set(&ov.narrow(1, 0, pos)?.contiguous()?, 1, 0)?;
            }
            *slot = Some((nk, nv));
        }
        let (kb, vb) = slot.as_ref().expect("cache slot filled above");
        kb.slice_set(k, 1, pos)?;
        vb.slice_set(v, 1, pos)?;
        Ok((kb.narrow(1, 0, need)?, vb.narrow(1, 0, need)?))
    }
}

/// One sequence's part of a forward pass: new tokens after what its cache holds.
pub struct Step<'a> {
    /// The new tokens.
    pub ids: &'a [u32],
    /// The sequence's cache, extended by the pass.
    pub cache: &'a mut Cache,
}

/// A loaded decoder.
pub struct Transformer {
    config: Config,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    /// The language-model head; None for a body loaded for another head (classifiers).
    output: Option<Matrix>,
    rope: Rope,
    rope_local: Rope,
    device: Device,
}

impl Transformer {
    /// Builds the model from `weights`, with its language-model head.
    pub fn load<R: Read + Seek>(
        config: Config,
        weights: Weights<'_, R>,
        device: &Device,
    ) -> Result<Self> {
        Self::load_with(config, weights, device, true)
    }

    /// Builds the body only (embeddings, blocks, final norm), for a head of its own: a reward
    /// model's score, an embedder's pooling.
    pub fn load_body<R: Read + Seek>(
        config: Config,
        weights: Weights<'_, R>,
        device: &Device,
    ) -> Result<Self> {
        Self::load_with(config, weights, device, false)
    }

    fn load_with<R: Read + Seek>(
        mut config: Config,
        mut weights: Weights<'_, R>,
        device: &Device,
        head: bool,
    ) -> Result<Self> {
        let f = config.family;
        let need_matrix = |w: &mut Weights<'_, R>, name: &str| {
            w.matrix(f, name, device)?
                .ok_or_else(|| candle_core::Error::Msg(format!("the weights have no {name}")))
        };
        let need_vector = |w: &mut Weights<'_, R>, name: &str| {
            w.vector(f, name, device)?
                .ok_or_else(|| candle_core::Error::Msg(format!("the weights have no {name}")))
        };
        let eps = config.eps;
        let embed_q = weights
            .raw(f, "token_embd.weight", device)?
            .ok_or_else(|| {
                candle_core::Error::Msg("the weights have no token embeddings".into())
            })?;
        let embed = embed_q.dequantize(device)?;
        let mut blocks = Vec::with_capacity(config.windows.len());
        for (i, window) in config.windows.iter().enumerate() {
            let p = format!("blk.{i}");
            let norm = |w: &mut Weights<'_, R>, n: &str| -> Result<RmsNorm> {
                Ok(RmsNorm::new(
                    need_vector(w, &format!("{p}.{n}.weight"))?,
                    eps,
                ))
            };
            let optional_norm =
                |w: &mut Weights<'_, R>, on: bool, n: &str| -> Result<Option<RmsNorm>> {
                    if !on {
                        return Ok(None);
                    }
                    Ok(Some(norm(w, n)?))
                };
            let linear = |w: &mut Weights<'_, R>, n: &str| -> Result<Linear> {
                Ok(Linear {
                    w: need_matrix(w, &format!("{p}.{n}.weight"))?,
                    b: w.vector(f, &format!("{p}.{n}.bias"), device)?,
                })
            };
            let attn_norm = norm(&mut weights, "attn_norm")?;
            let qkv = match weights.matrix(f, &format!("{p}.attn_qkv.weight"), device)? {
                Some(w) => Qkv::Fused(Linear {
                    w,
                    b: weights.vector(f, &format!("{p}.attn_qkv.bias"), device)?,
                }),
                None => Qkv::Separate(
                    linear(&mut weights, "attn_q")?,
                    linear(&mut weights, "attn_k")?,
                    linear(&mut weights, "attn_v")?,
                ),
            };
            let o = linear(&mut weights, "attn_output")?.w;
            let gate_up = if f == Family::Phi3 {
                GateUp::Fused(linear(&mut weights, "ffn_up")?.w)
            } else {
                GateUp::Separate(
                    linear(&mut weights, "ffn_gate")?.w,
                    linear(&mut weights, "ffn_up")?.w,
                )
            };
            let down = linear(&mut weights, "ffn_down")?.w;
            // In a Llama checkpoint the name post_attention_layernorm means the pre-feedforward
            // norm; only sandwich-norm families have a norm after attention.
            let sandwich = config.sandwich_norms;
            blocks.push(Block {
                attn_norm,
                qkv,
                o,
                q_norm: optional_norm(&mut weights, config.qk_norm, "attn_q_norm")?,
                k_norm: optional_norm(&mut weights, config.qk_norm, "attn_k_norm")?,
                post_attn_norm: optional_norm(&mut weights, sandwich, "post_attention_norm")?,
                ffn_norm: norm(&mut weights, "ffn_norm")?,
                post_ffn_norm: optional_norm(&mut weights, sandwich, "post_ffw_norm")?,
                gate_up,
                down,
                window: *window,
                local_rope: config.family == Family::Gemma3 && window.is_some(),
            });
        }
        let norm = RmsNorm::new(need_vector(&mut weights, "output_norm.weight")?, eps);
        // Tied embeddings: no output matrix, the embedding matrix is the head.
        let output = match weights.matrix(f, "output.weight", device)? {
            _ if !head => None,
            Some(m) => Some(m),
            None => Some(matmul(embed_q, weights.matrices(), device)?),
        };
        // GGUF files carry per-frequency RoPE factors as tensors (Llama 3.1, LongRoPE).
        let mut factors = |name: &str| -> Result<Vec<f32>> {
            weights
                .vector(f, name, device)?
                .ok_or_else(|| candle_core::Error::Msg(format!("the weights have no {name}")))?
                .to_vec1::<f32>()
        };
        for spec in [&mut config.rope, &mut config.rope_local] {
            match &mut spec.scaling {
                Scaling::Factors(v) if v.is_empty() => *v = factors("rope_freqs.weight")?,
                Scaling::LongRope { short, long, .. } if short.is_empty() => {
                    *short = factors("rope_factors_short.weight")?;
                    *long = factors("rope_factors_long.weight")?;
                }
                _ => {}
            }
        }
        let rope = Rope::new(config.rope.clone(), config.context, device)?;
        let rope_local = Rope::new(config.rope_local.clone(), config.context, device)?;
        Ok(Self {
            embed: Embedding::new(embed, config.hidden),
            blocks,
            norm,
            output,
            rope,
            rope_local,
            device: device.clone(),
            config,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The cache length at which a generated sequence is encoded again whole: LongRoPE models
    /// (Phi-3) rotate every position with their long factors once a sequence outgrows the
    /// original context, and transformers recomputes the cache at that point.
    pub fn reencodes_at(&self) -> Option<usize> {
        match &self.config.rope.scaling {
            Scaling::LongRope { original, .. } => Some(*original),
            _ => None,
        }
    }

    /// Runs every step's new tokens and returns their final hidden states, normed, one row per
    /// token in step order. Each cache grows by its step's tokens.
    pub fn forward(&self, steps: &mut [Step<'_>]) -> Result<Tensor> {
        let c = &self.config;
        if self.blocks.is_empty() {
            bail!("the model has no layers");
        }
        let mut spans = Vec::with_capacity(steps.len());
        let mut ids = Vec::new();
        for s in steps.iter_mut() {
            if s.ids.is_empty() {
                bail!("a sequence step has no tokens");
            }
            if s.cache.len + s.ids.len() > c.context {
                bail!(
                    "the sequence reaches {} tokens, past the model's context of {}",
                    s.cache.len + s.ids.len(),
                    c.context
                );
            }
            if s.cache.layers.len() != self.blocks.len() {
                s.cache.layers = (0..self.blocks.len()).map(|_| None).collect();
            }
            spans.push((ids.len(), s.ids.len(), s.cache.len));
            ids.extend_from_slice(s.ids);
        }
        let mut x = self
            .embed
            .forward(&Tensor::new(ids.as_slice(), &self.device)?)?;
        if c.scaled_embeddings {
            x = (x * (c.hidden as f64).sqrt())?;
        }
        let (h, kvh, d) = (c.heads, c.kv_heads, c.head_dim);
        let groups = h / kvh;
        for (l, block) in self.blocks.iter().enumerate() {
            let a = block.attn_norm.forward(&x)?;
            let (q, k, v) = block.project(&a, (h, kvh, d))?;
            let rope = if block.local_rope {
                &self.rope_local
            } else {
                &self.rope
            };
            // A decode step (one token per sequence) rotates every sequence's q and k in one
            // call, each at its own position; a prefill does it per sequence.
            let decoding = spans.iter().all(|&(_, t, _)| t == 1);
            let together = if decoding {
                let b = steps.len();
                let mut qb = q.reshape((b, h, d))?;
                let mut kb = k.reshape((b, kvh, d))?;
                if let (Some(qn), Some(kn)) = (&block.q_norm, &block.k_norm) {
                    qb = qn.forward(&qb)?;
                    kb = kn.forward(&kb)?;
                }
                let (cb, sb) = if rope.is_static() {
                    let (cos, sin) = rope.table();
                    let at: Vec<u32> = spans.iter().map(|&(_, _, p)| p as u32).collect();
                    let at = Tensor::new(at.as_slice(), &self.device)?;
                    (cos.index_select(&at, 0)?, sin.index_select(&at, 0)?)
                } else {
                    // Length-dependent RoPE: each sequence's row for the length it reaches.
                    let rows = spans
                        .iter()
                        .map(|&(_, _, p)| rope.at(p, 1))
                        .collect::<Result<Vec<_>>>()?;
                    let (cs, ss): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
                    (Tensor::cat(&cs, 0)?, Tensor::cat(&ss, 0)?)
                };
                let (cb, sb) = (cb.unsqueeze(1)?, sb.unsqueeze(1)?);
                let qb = self.rotate(&qb.unsqueeze(2)?.contiguous()?, &cb, &sb, rope.dim())?;
                let kb = self.rotate(&kb.unsqueeze(2)?.contiguous()?, &cb, &sb, rope.dim())?;
                Some((qb, kb, v.reshape((b, kvh, 1, d))?))
            } else {
                None
            };
            // A decode step on the CPU: every sequence's attention in one kernel call (see
            // prefflow_kernels::attention) instead of ~10 tensor operations per sequence.
            if let Some((qb, kb, vb)) = &together
                && self.device.is_cpu()
                && qb.dtype() == DType::F32
            {
                for (i, s) in steps.iter_mut().enumerate() {
                    s.cache.append(l, &kb.get(i)?, &vb.get(i)?)?;
                }
                let queries = qb.flatten_all()?.to_vec1::<f32>()?;
                let attn = decode_attention(
                    &queries,
                    steps,
                    &spans,
                    l,
                    block.window,
                    (h, kvh, d),
                    c.attn_scale as f32,
                    c.attn_softcap,
                )?;
                let attn = Tensor::from_vec(attn, (steps.len(), h * d), &self.device)?;
                x = self.feed(block, x, &attn)?;
                continue;
            }
            let mut outs = Vec::with_capacity(steps.len());
            for (i, (s, &(off, t, pos))) in steps.iter_mut().zip(&spans).enumerate() {
                let (qi, ki, vi) = match &together {
                    Some((qb, kb, vb)) => (qb.get(i)?, kb.get(i)?, vb.get(i)?),
                    None => {
                        let mut qi = q.narrow(0, off, t)?.reshape((t, h, d))?;
                        let mut ki = k.narrow(0, off, t)?.reshape((t, kvh, d))?;
                        if let (Some(qn), Some(kn)) = (&block.q_norm, &block.k_norm) {
                            qi = qn.forward(&qi)?;
                            ki = kn.forward(&ki)?;
                        }
                        let qi = qi.transpose(0, 1)?.contiguous()?.unsqueeze(0)?;
                        let ki = ki.transpose(0, 1)?.contiguous()?.unsqueeze(0)?;
                        let vi = v
                            .narrow(0, off, t)?
                            .reshape((t, kvh, d))?
                            .transpose(0, 1)?
                            .contiguous()?;
                        let (ci, si) = rope.at(pos, t)?;
                        let qi = self.rotate(&qi, &ci, &si, rope.dim())?.squeeze(0)?;
                        let ki = self.rotate(&ki, &ci, &si, rope.dim())?.squeeze(0)?;
                        (qi, ki, vi)
                    }
                };
                let (keys, values) = s.cache.append(l, &ki, &vi)?;
                let total = pos + t;
                // Query heads of one kv head side by side: (kv_heads, groups * t, d).
                let qi = qi.reshape((kvh, groups * t, d))?;
                let mut scores = (qi.matmul(&keys.t()?)? * c.attn_scale)?;
                if let Some(cap) = c.attn_softcap {
                    scores = ((scores / cap as f64)?.tanh()? * cap as f64)?;
                }
                let scores = match mask(t, pos, block.window, &self.device)? {
                    Some(m) => scores
                        .reshape((kvh, groups, t, total))?
                        .broadcast_add(&m)?
                        .reshape((kvh, groups * t, total))?,
                    None => scores,
                };
                let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                let o = probs
                    .matmul(&values.contiguous()?)?
                    .reshape((h, t, d))?
                    .transpose(0, 1)?
                    .reshape((t, h * d))?;
                outs.push(o);
            }
            let attn = Tensor::cat(&outs, 0)?;
            x = self.feed(block, x, &attn)?;
        }
        for (s, &(_, t, _)) in steps.iter_mut().zip(&spans) {
            s.cache.len += t;
        }
        self.norm.forward(&x)
    }

    /// The rest of a block after attention: output projection, residual, feed-forward.
    fn feed(&self, block: &Block, x: Tensor, attn: &Tensor) -> Result<Tensor> {
        let mut y = block.o.forward(attn)?;
        if let Some(n) = &block.post_attn_norm {
            y = n.forward(&y)?;
        }
        let x = (x + y)?;
        let f = block.ffn_norm.forward(&x)?;
        let (gate, up) = block.gate_up(&f)?;
        let act = if self.config.gelu {
            gate.gelu()? // tanh approximation, as gelu_pytorch_tanh
        } else {
            candle_nn::ops::silu(&gate)?
        };
        let mut y = block.down.forward(&(act * up)?)?;
        if let Some(n) = &block.post_ffn_norm {
            y = n.forward(&y)?;
        }
        x + y
    }

    /// RoPE on (batch, heads, tokens, head_dim) with the model's pairing of dimensions, over
    /// the first `dim` dimensions of each head (partial rotary: the rest pass through).
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, dim: usize) -> Result<Tensor> {
        let full = x.dim(3)?;
        let turn = |x: &Tensor| {
            if self.config.interleaved_rope {
                candle_nn::rotary_emb::rope_i(x, cos, sin)
            } else {
                candle_nn::rotary_emb::rope(x, cos, sin)
            }
        };
        if dim == full {
            return turn(x);
        }
        let turned = turn(&x.narrow(3, 0, dim)?.contiguous()?)?;
        Tensor::cat(&[turned, x.narrow(3, dim, full - dim)?], 3)?.contiguous()
    }

    /// Next-token logits (rows, vocab) of hidden states, soft-capped where the model is.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let Some(output) = &self.output else {
            bail!("the model was loaded without its language-model head")
        };
        let logits = output.forward(hidden)?;
        match self.config.final_softcap {
            Some(cap) => (logits / cap as f64)?.tanh()? * cap as f64,
            None => Ok(logits),
        }
    }
}

/// Decode-step attention on the CPU for every step (one new token each, already appended to
/// its cache at layer `layer`): the caches' f32 buffers read in place.
fn decode_attention(
    queries: &[f32],
    steps: &[Step<'_>],
    spans: &[(usize, usize, usize)],
    layer: usize,
    window: Option<usize>,
    (heads, kv_heads, head_dim): (usize, usize, usize),
    scale: f32,
    softcap: Option<f32>,
) -> Result<Vec<f32>> {
    let buffers: Vec<&(Tensor, Tensor)> = steps
        .iter()
        .map(|s| {
            s.cache.layers[layer]
                .as_ref()
                .ok_or_else(|| candle_core::Error::Msg("cache layer not filled".into()))
        })
        .collect::<Result<_>>()?;
    let guards: Vec<_> = buffers
        .iter()
        .map(|(k, v)| (k.storage_and_layout(), v.storage_and_layout()))
        .collect();
    fn f32s<'a>(s: &'a candle_core::Storage, l: &candle_core::Layout) -> Result<&'a [f32]> {
        match s {
            candle_core::Storage::Cpu(c) => Ok(&c.as_slice::<f32>()?[l.start_offset()..]),
            _ => bail!("decode attention runs on the CPU"),
        }
    }
    let mut sequences = Vec::with_capacity(steps.len());
    for ((kg, vg), &(_, _, pos)) in guards.iter().zip(spans) {
        let end = pos + 1;
        let start = window.map_or(0, |w| end.saturating_sub(w));
        sequences.push(prefflow_kernels::attention::Sequence {
            keys: f32s(&kg.0, kg.1)?,
            values: f32s(&vg.0, vg.1)?,
            plane_stride: kg.1.stride()[0],
            start,
            end,
        });
    }
    Ok(prefflow_kernels::attention::decode(
        queries,
        &sequences,
        (heads, kv_heads, head_dim),
        scale,
        softcap,
    ))
}

/// The additive mask of `t` new tokens at `pos` over all `pos + t` positions: causal, and
/// within `window` positions for sliding-window layers. None when nothing is masked.
fn mask(t: usize, pos: usize, window: Option<usize>, device: &Device) -> Result<Option<Tensor>> {
    let total = pos + t;
    let hidden = |i: usize, j: usize| j > pos + i || window.is_some_and(|w| pos + i - j >= w);
    let any = (0..t).any(|i| (0..total).any(|j| hidden(i, j)));
    if !any {
        return Ok(None);
    }
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..total).map(move |j| if hidden(i, j) { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (t, total), device).map(Some)
}

/// safetensors weights of a folder as f32 tensors on `device`, by name.
pub fn read_safetensors(files: &[PathBuf], device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut all = HashMap::new();
    for f in files {
        for (name, t) in candle_core::safetensors::load(f, device)? {
            all.insert(name, t.to_dtype(DType::F32)?);
        }
    }
    Ok(all)
}

/// Log-probabilities of each next token: row i scores `next[i]`.
pub fn token_logprobs(logits: &Tensor, next: &[u32]) -> Result<Vec<f32>> {
    let lp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let idx = Tensor::new(next, logits.device())?.unsqueeze(1)?;
    lp.narrow(0, 0, next.len())?
        .gather(&idx, 1)?
        .squeeze(1)?
        .to_vec1()
}
