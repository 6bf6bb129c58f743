//! ModernBERT encoders (`ModernBertModel` embedders such as gte-modernbert and nomic's, and
//! `ModernBertForSequenceClassification`) as transformers computes them: pre-norm layers,
//! rotary positions with one base for global and one for local layers, local layers attending
//! within `local_attention / 2` tokens on either side, a gated GELU feed-forward, and the
//! dense → activation → norm head on the CLS token or the mean.
//!
//! Rows run one at a time, without padding: a row's output never depends on the others.

use candle_core::{DType, Device, Module, Result, Tensor, bail};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

use super::encode::{Backend, Encoded, Task};
use super::rope::{Rope, RopeSpec};
use super::source::{read_json, safetensors_files};
use super::types::{ModelInfo, ModelSpec, Pooling};

struct Layer {
    /// None for layer 0, whose attention norm is the identity.
    attn_norm: Option<LayerNorm>,
    wqkv: Linear,
    wo: Linear,
    mlp_norm: LayerNorm,
    wi: Linear,
    mlp_out: Linear,
    /// Half-window of a local layer (|i - j| <= it); None for a global one.
    window: Option<usize>,
}

/// A loaded ModernBERT.
pub struct ModernBert {
    embed: Embedding,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    rope_global: Rope,
    rope_local: Rope,
    heads: usize,
    act: String,
    /// head.dense, its activation, head.norm and the classifier; with the pooling (CLS or mean).
    head: Option<(Linear, String, LayerNorm, Linear, bool)>,
    pooling: Pooling,
    normalize: bool,
    device: Device,
}

fn activation(name: &str, x: &Tensor) -> Result<Tensor> {
    match name {
        "gelu" => x.gelu_erf(),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => x.gelu(),
        "silu" | "swish" => candle_nn::ops::silu(x),
        "relu" => x.relu(),
        other => bail!("unsupported activation '{other}'"),
    }
}

impl ModernBert {
    /// Loads config.json and the safetensors weights (memory-mapped).
    pub fn load(spec: &ModelSpec, info: &ModelInfo, device: &Device) -> Result<Self> {
        let c = read_json(&spec.name, &spec.path.join("config.json"))
            .map_err(candle_core::Error::wrap)?;
        let num = |k: &str| -> Result<usize> {
            c[k].as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| candle_core::Error::Msg(format!("config.json has no {k}")))
        };
        let flag = |k: &str, default: bool| c[k].as_bool().unwrap_or(default);
        let (h, heads, layers_n) = (
            num("hidden_size")?,
            num("num_attention_heads")?,
            num("num_hidden_layers")?,
        );
        let inter = num("intermediate_size")?;
        let vocab = num("vocab_size")?;
        let context = num("max_position_embeddings").unwrap_or(8192);
        let eps = c["norm_eps"].as_f64().unwrap_or(1e-5);
        let (norm_bias, attn_bias, mlp_bias) = (
            flag("norm_bias", false),
            flag("attention_bias", false),
            flag("mlp_bias", false),
        );
        let local = c["local_attention"].as_u64().unwrap_or(128) as usize;
        let every = c["global_attn_every_n_layers"].as_u64().unwrap_or(3) as usize;
        let theta = |kind: &str, flat: &str, default: f64| {
            c["rope_parameters"][kind]["rope_theta"]
                .as_f64()
                .or_else(|| c[flat].as_f64())
                .unwrap_or(default) as f32
        };
        for kind in ["full_attention", "sliding_attention"] {
            let t = c["rope_parameters"][kind]["rope_type"]
                .as_str()
                .unwrap_or("default");
            if t != "default" {
                bail!("ModernBERT with rope scaling '{t}' is not supported")
            }
        }
        let d = h / heads;
        let rope_global = Rope::new(
            RopeSpec::plain(theta("full_attention", "global_rope_theta", 160000.0), d),
            context,
            device,
        )?;
        let rope_local = Rope::new(
            RopeSpec::plain(theta("sliding_attention", "local_rope_theta", 10000.0), d),
            context,
            device,
        )?;
        let files = safetensors_files(&spec.name, &spec.path).map_err(candle_core::Error::wrap)?;
        // SAFETY: the weight files are not modified while mapped (they are read-only inputs).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, device)? };
        let base = if vb.contains_tensor("model.embeddings.tok_embeddings.weight") {
            vb.pp("model")
        } else {
            vb.clone()
        };
        let norm = |vb: VarBuilder| -> Result<LayerNorm> {
            let w = vb.get(h, "weight")?;
            Ok(if norm_bias {
                LayerNorm::new(w, vb.get(h, "bias")?, eps)
            } else {
                LayerNorm::new_no_bias(w, eps)
            })
        };
        let lin = |vb: VarBuilder, i: usize, o: usize, bias: bool| -> Result<Linear> {
            let w = vb.get((o, i), "weight")?;
            let b = if bias { Some(vb.get(o, "bias")?) } else { None };
            Ok(Linear::new(w, b))
        };
        let layers = (0..layers_n)
            .map(|i| {
                let l = base.pp(format!("layers.{i}"));
                let global = match c["layer_types"][i].as_str() {
                    Some(t) => t == "full_attention",
                    None => i % every.max(1) == 0,
                };
                Ok(Layer {
                    attn_norm: if i == 0 {
                        None
                    } else {
                        Some(norm(l.pp("attn_norm"))?)
                    },
                    wqkv: lin(l.pp("attn.Wqkv"), h, 3 * h, attn_bias)?,
                    wo: lin(l.pp("attn.Wo"), h, h, attn_bias)?,
                    mlp_norm: norm(l.pp("mlp_norm"))?,
                    wi: lin(l.pp("mlp.Wi"), h, 2 * inter, mlp_bias)?,
                    mlp_out: lin(l.pp("mlp.Wo"), inter, h, mlp_bias)?,
                    window: (!global).then_some(local / 2),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head = if info.architecture.ends_with("ForSequenceClassification") {
            let pooling = c["classifier_pooling"].as_str().unwrap_or("cls");
            if !matches!(pooling, "cls" | "mean") {
                bail!("classifier_pooling '{pooling}' is not supported (cls and mean are)")
            }
            Some((
                lin(vb.pp("head.dense"), h, h, flag("classifier_bias", false))?,
                c["classifier_activation"]
                    .as_str()
                    .unwrap_or("gelu")
                    .to_string(),
                norm(vb.pp("head.norm"))?,
                lin(vb.pp("classifier"), h, info.labels.len().max(1), true)?,
                pooling == "mean",
            ))
        } else {
            None
        };
        Ok(Self {
            embed: Embedding::new(
                base.pp("embeddings.tok_embeddings")
                    .get((vocab, h), "weight")?,
                h,
            ),
            embed_norm: norm(base.pp("embeddings.norm"))?,
            layers,
            final_norm: norm(base.pp("final_norm"))?,
            rope_global,
            rope_local,
            heads,
            act: c["hidden_activation"]
                .as_str()
                .unwrap_or("gelu")
                .to_string(),
            head,
            pooling: info.pooling,
            normalize: info.normalize,
            device: device.clone(),
        })
    }

    /// Final hidden states (n, hidden) of one row.
    fn hidden(&self, ids: &[u32]) -> Result<Tensor> {
        let n = ids.len();
        let mut x = self
            .embed_norm
            .forward(&self.embed.forward(&Tensor::new(ids, &self.device)?)?)?;
        let h = x.dim(1)?;
        let (heads, d) = (self.heads, h / self.heads);
        let scale = 1.0 / (d as f64).sqrt();
        for layer in &self.layers {
            let a = match &layer.attn_norm {
                Some(norm) => norm.forward(&x)?,
                None => x.clone(),
            };
            // (n, 3, heads, d) → three (1, heads, n, d).
            let qkv = layer.wqkv.forward(&a)?.reshape((n, 3, heads, d))?;
            let part = |i: usize| -> Result<Tensor> {
                qkv.narrow(1, i, 1)?
                    .squeeze(1)?
                    .transpose(0, 1)?
                    .contiguous()?
                    .unsqueeze(0)
            };
            let rope = if layer.window.is_some() {
                &self.rope_local
            } else {
                &self.rope_global
            };
            let (cos, sin) = rope.at(0, n)?;
            let q = candle_nn::rotary_emb::rope(&part(0)?, &cos, &sin)?.squeeze(0)?;
            let k = candle_nn::rotary_emb::rope(&part(1)?, &cos, &sin)?.squeeze(0)?;
            let v = part(2)?.squeeze(0)?;
            let mut scores = (q.matmul(&k.t()?)? * scale)?;
            if let Some(w) = layer.window {
                let mask: Vec<f32> = (0..n)
                    .flat_map(|i| {
                        (0..n).map(move |j| {
                            if i.abs_diff(j) <= w {
                                0.0
                            } else {
                                f32::NEG_INFINITY
                            }
                        })
                    })
                    .collect();
                scores = scores.broadcast_add(&Tensor::from_vec(mask, (n, n), &self.device)?)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = probs.matmul(&v)?.transpose(0, 1)?.reshape((n, h))?;
            x = (x + layer.wo.forward(&context)?)?;
            let both = layer.wi.forward(&layer.mlp_norm.forward(&x)?)?;
            let half = both.dim(1)? / 2;
            let (input, gate) = (both.narrow(1, 0, half)?, both.narrow(1, half, half)?);
            let y = (activation(&self.act, &input)? * gate)?;
            x = (x + layer.mlp_out.forward(&y)?)?;
        }
        self.final_norm.forward(&x)
    }
}

impl Backend for ModernBert {
    fn run(&mut self, task: Task, batch: &[&Encoded]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(batch.len());
        for e in batch {
            if e.ids.is_empty() {
                bail!("a row has no tokens");
            }
            let n = e.ids.len();
            let hidden = self.hidden(&e.ids)?;
            let v = match task {
                Task::Score => {
                    let Some((dense, act, norm, classifier, mean)) = &self.head else {
                        bail!(
                            "this ModernBERT model has no classification head (architectures in config.json)"
                        )
                    };
                    let pooled = if *mean {
                        hidden.mean_keepdim(0)?
                    } else {
                        hidden.narrow(0, 0, 1)?
                    };
                    classifier
                        .forward(&norm.forward(&activation(act, &dense.forward(&pooled)?)?)?)?
                }
                Task::Embed => {
                    let mask = Tensor::ones((1, n), DType::U32, &self.device)?;
                    crate::bert::pool(
                        &hidden.unsqueeze(0)?,
                        &mask,
                        &[n],
                        self.pooling,
                        self.normalize,
                    )?
                }
            };
            out.push(v.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?);
        }
        Ok(out)
    }

    fn max_rows(&self) -> usize {
        1
    }
}
