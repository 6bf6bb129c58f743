//! DeBERTa-v2 / v3 encoders (`DebertaV2ForSequenceClassification`: the OpenAssistant reward
//! models, and `DebertaV2Model` embedders) as transformers computes them: disentangled attention,
//! where each score adds content-to-position and position-to-content terms read from shared
//! relative-position embeddings, with log-scaled position buckets.
//!
//! Rows run one at a time, without padding: a row's output never depends on the others.

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, bail};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear};
use serde::Deserialize;

use super::encode::{Backend, Encoded, Task};
use super::source::{model_config, safetensors_files};
use super::types::{ModelInfo, ModelSpec, Pooling};

/// The fields of a DeBERTa-v2 config.json the encoder needs.
#[derive(Debug, Clone, Deserialize)]
struct Config {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "gelu")]
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default)]
    type_vocab_size: usize,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    relative_attention: bool,
    #[serde(default)]
    position_buckets: Option<i64>,
    #[serde(default)]
    max_relative_positions: Option<i64>,
    #[serde(default)]
    pos_att_type: Option<serde_json::Value>,
    #[serde(default)]
    norm_rel_ebd: Option<String>,
    #[serde(default)]
    share_att_key: Option<bool>,
    #[serde(default = "yes")]
    position_biased_input: bool,
    #[serde(default)]
    embedding_size: Option<usize>,
    #[serde(default)]
    conv_kernel_size: Option<usize>,
    #[serde(default)]
    pooler_hidden_size: Option<usize>,
    #[serde(default = "gelu")]
    pooler_hidden_act: String,
}

fn gelu() -> String {
    "gelu".to_string()
}
fn eps() -> f64 {
    1e-7
}
fn yes() -> bool {
    true
}

fn activation(name: &str, x: &Tensor) -> Result<Tensor> {
    match name {
        "gelu" => x.gelu_erf(),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => x.gelu(),
        "relu" => x.relu(),
        "tanh" => x.tanh(),
        other => bail!("unsupported activation '{other}'"),
    }
}

/// `make_log_bucket_position`: relative distances beyond half the buckets are log-scaled, in f32
/// as transformers computes them.
fn bucket(relative: i64, buckets: i64, max_position: i64) -> i64 {
    let mid = buckets / 2;
    let sign = relative.signum();
    let abs = if relative < mid && relative > -mid {
        mid - 1
    } else {
        relative.abs()
    };
    if abs <= mid {
        return relative;
    }
    let ratio = (abs as f32 / mid as f32).ln() / (((max_position - 1) as f32) / mid as f32).ln();
    let log_pos = (ratio * (mid - 1) as f32).ceil() as i64 + mid;
    log_pos * sign
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    /// Position projections when the checkpoint does not share them with query / key.
    pos_key: Option<Linear>,
    pos_query: Option<Linear>,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    out: Linear,
    out_norm: LayerNorm,
}

/// A loaded DeBERTa-v2 / v3 model.
pub struct Deberta {
    words: Embedding,
    positions: Option<Embedding>,
    types: Option<Embedding>,
    embed_proj: Option<Linear>,
    norm: LayerNorm,
    layers: Vec<Layer>,
    /// Relative-position embeddings (2 × span, hidden), normed where the model says.
    relative: Option<Tensor>,
    /// Half the relative embeddings: distances are clamped to ±span.
    span: i64,
    buckets: i64,
    max_relative: i64,
    c2p: bool,
    p2c: bool,
    heads: usize,
    act: String,
    /// pooler.dense + its activation, and the classifier.
    head: Option<(Linear, String, Linear)>,
    pooling: Pooling,
    normalize: bool,
    device: Device,
}

impl Deberta {
    /// Loads config.json and the safetensors weights (memory-mapped).
    pub fn load(spec: &ModelSpec, info: &ModelInfo, device: &Device) -> Result<Self> {
        let c: Config = model_config(&spec.name, &spec.path).map_err(candle_core::Error::wrap)?;
        if c.conv_kernel_size.unwrap_or(0) > 0 {
            bail!("DeBERTa's convolution layer (conv_kernel_size) is not supported")
        }
        let files = safetensors_files(&spec.name, &spec.path).map_err(candle_core::Error::wrap)?;
        // SAFETY: the weight files are not modified while mapped (they are read-only inputs).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, device)? };
        let base = if vb.contains_tensor("deberta.embeddings.word_embeddings.weight") {
            vb.pp("deberta")
        } else {
            vb.clone()
        };
        let h = c.hidden_size;
        let e = c.embedding_size.unwrap_or(h);
        let eb = base.pp("embeddings");
        let kinds: Vec<String> = match &c.pos_att_type {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str())
                .map(str::to_lowercase)
                .collect(),
            Some(serde_json::Value::String(s)) => {
                s.split('|').map(|p| p.trim().to_lowercase()).collect()
            }
            _ => Vec::new(),
        };
        let (c2p, p2c) = (
            kinds.iter().any(|k| k == "c2p"),
            kinds.iter().any(|k| k == "p2c"),
        );
        let share = c.share_att_key.unwrap_or(false);
        let max_relative = match c.max_relative_positions.unwrap_or(-1) {
            m if m < 1 => c.max_position_embeddings as i64,
            m => m,
        };
        let buckets = c.position_buckets.unwrap_or(-1);
        let span = if buckets > 0 { buckets } else { max_relative };
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = base.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention.self");
                let own = |on: bool, name: &str| -> Result<Option<Linear>> {
                    if on && !share && c.relative_attention {
                        Ok(Some(linear(h, h, a.pp(name))?))
                    } else {
                        Ok(None)
                    }
                };
                Ok(Layer {
                    query: linear(h, h, a.pp("query_proj"))?,
                    key: linear(h, h, a.pp("key_proj"))?,
                    value: linear(h, h, a.pp("value_proj"))?,
                    pos_key: own(c2p, "pos_key_proj")?,
                    pos_query: own(p2c, "pos_query_proj")?,
                    attention_out: linear(h, h, l.pp("attention.output.dense"))?,
                    attention_norm: layer_norm(
                        h,
                        c.layer_norm_eps,
                        l.pp("attention.output.LayerNorm"),
                    )?,
                    intermediate: linear(h, c.intermediate_size, l.pp("intermediate.dense"))?,
                    out: linear(c.intermediate_size, h, l.pp("output.dense"))?,
                    out_norm: layer_norm(h, c.layer_norm_eps, l.pp("output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let relative = if c.relative_attention {
            let table = base
                .pp("encoder.rel_embeddings")
                .get((2 * span as usize, h), "weight")?;
            let normed = c
                .norm_rel_ebd
                .as_deref()
                .unwrap_or("none")
                .to_lowercase()
                .split('|')
                .any(|p| p.trim() == "layer_norm");
            Some(if normed {
                layer_norm(h, c.layer_norm_eps, base.pp("encoder.LayerNorm"))?.forward(&table)?
            } else {
                table
            })
        } else {
            None
        };
        let head = if info.architecture.ends_with("ForSequenceClassification") {
            let p = c.pooler_hidden_size.unwrap_or(h);
            Some((
                linear(p, p, vb.pp("pooler.dense"))?,
                c.pooler_hidden_act.clone(),
                linear(p, info.labels.len().max(1), vb.pp("classifier"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            words: embedding(c.vocab_size, e, eb.pp("word_embeddings"))?,
            positions: if c.position_biased_input {
                Some(embedding(
                    c.max_position_embeddings,
                    e,
                    eb.pp("position_embeddings"),
                )?)
            } else {
                None
            },
            types: if c.type_vocab_size > 0 {
                Some(embedding(
                    c.type_vocab_size,
                    e,
                    eb.pp("token_type_embeddings"),
                )?)
            } else {
                None
            },
            embed_proj: if e != h {
                Some(candle_nn::linear_no_bias(e, h, eb.pp("embed_proj"))?)
            } else {
                None
            },
            norm: layer_norm(h, c.layer_norm_eps, eb.pp("LayerNorm"))?,
            layers,
            relative,
            span,
            buckets,
            max_relative,
            c2p,
            p2c,
            heads: c.num_attention_heads,
            act: c.hidden_act.clone(),
            head,
            pooling: info.pooling,
            normalize: info.normalize,
            device: device.clone(),
        })
    }

    /// The relative position of query `i` to key `j`, bucketed.
    fn relative(&self, i: usize, j: usize) -> i64 {
        let r = i as i64 - j as i64;
        if self.buckets > 0 && self.max_relative > 0 {
            bucket(r, self.buckets, self.max_relative)
        } else {
            r
        }
    }

    /// (heads, n, d) of (n, hidden).
    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let (n, h) = x.dims2()?;
        x.reshape((n, self.heads, h / self.heads))?
            .transpose(0, 1)?
            .contiguous()
    }

    /// Hidden states (n, hidden) of one row.
    fn hidden(&self, e: &Encoded) -> Result<Tensor> {
        let n = e.ids.len();
        let ids = Tensor::new(e.ids.as_slice(), &self.device)?;
        let mut x = self.words.forward(&ids)?;
        if let Some(p) = &self.positions {
            x = (x + p.forward(&Tensor::arange(0u32, n as u32, &self.device)?)?)?;
        }
        if let Some(t) = &self.types {
            let types: Vec<u32> = (0..n)
                .map(|i| e.type_ids.get(i).copied().unwrap_or(0))
                .collect();
            x = (x + t.forward(&Tensor::new(types.as_slice(), &self.device)?)?)?;
        }
        if let Some(p) = &self.embed_proj {
            x = p.forward(&x)?;
        }
        let mut x = self.norm.forward(&x)?;
        let heads = self.heads;
        let d = x.dim(1)? / heads;
        let factor = 1 + usize::from(self.c2p) + usize::from(self.p2c);
        // transformers: sqrt(head_dim * factor) as an f32 tensor.
        let scale = ((d * factor) as f32).sqrt() as f64;
        let span = self.span;
        let window = (2 * span) as usize;
        // Gather indexes of the two position terms, shared by every layer and head.
        let (c2p_index, p2c_index) = if self.relative.is_some() {
            let mut c2p = Vec::with_capacity(n * n);
            let mut p2c = Vec::with_capacity(n * n);
            for i in 0..n {
                for j in 0..n {
                    c2p.push((self.relative(i, j) + span).clamp(0, 2 * span - 1) as u32);
                    // The p2c term of (query i, key j) reads key j's row at -rel(j, i).
                    p2c.push((-self.relative(j, i) + span).clamp(0, 2 * span - 1) as u32);
                }
            }
            let index = |v: Vec<u32>| -> Result<Tensor> {
                Tensor::from_vec(v, (1, n, n), &self.device)?
                    .broadcast_as((heads, n, n))?
                    .contiguous()
            };
            (Some(index(c2p)?), Some(index(p2c)?))
        } else {
            (None, None)
        };
        for layer in &self.layers {
            let q = self.split(&layer.query.forward(&x)?)?;
            let k = self.split(&layer.key.forward(&x)?)?;
            let v = self.split(&layer.value.forward(&x)?)?;
            let mut scores = (q.matmul(&k.t()?)? / scale)?;
            if let Some(rel) = &self.relative {
                let rel = rel.narrow(0, 0, window)?;
                if self.c2p {
                    let pos_key = match &layer.pos_key {
                        Some(p) => p.forward(&rel)?,
                        None => layer.key.forward(&rel)?,
                    };
                    let att = q.matmul(&self.split(&pos_key)?.t()?)?;
                    let index = c2p_index.as_ref().expect("indexes with relative attention");
                    scores = (scores + (att.contiguous()?.gather(index, 2)? / scale)?)?;
                }
                if self.p2c {
                    let pos_query = match &layer.pos_query {
                        Some(p) => p.forward(&rel)?,
                        None => layer.query.forward(&rel)?,
                    };
                    // (heads, key, 2·span): row j is key j against every distance.
                    let att = k.matmul(&self.split(&pos_query)?.t()?)?.contiguous()?;
                    let index = p2c_index.as_ref().expect("indexes with relative attention");
                    // Entry (i, j) needs att[j, p2c(i, j)]: gather along keys' distances on
                    // the transposed index, then transpose back.
                    let gathered = att.gather(&index.transpose(1, 2)?.contiguous()?, 2)?;
                    scores = (scores + (gathered.transpose(1, 2)? / scale)?)?;
                }
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = probs.matmul(&v)?.transpose(0, 1)?.reshape((n, heads * d))?;
            let a = layer
                .attention_norm
                .forward(&(layer.attention_out.forward(&context)? + &x)?)?;
            let i = activation(&self.act, &layer.intermediate.forward(&a)?)?;
            x = layer.out_norm.forward(&(layer.out.forward(&i)? + a)?)?;
        }
        Ok(x)
    }
}

impl Backend for Deberta {
    fn run(&mut self, task: Task, batch: &[&Encoded]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(batch.len());
        for e in batch {
            if e.ids.is_empty() {
                bail!("a row has no tokens");
            }
            let hidden = self.hidden(e)?;
            let v = match task {
                Task::Score => {
                    let Some((pooler, act, classifier)) = &self.head else {
                        bail!(
                            "this DeBERTa model has no classification head (architectures in config.json)"
                        )
                    };
                    let cls = hidden.i(0..1)?;
                    classifier.forward(&activation(act, &pooler.forward(&cls)?)?)?
                }
                Task::Embed => {
                    let n = e.ids.len();
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

#[cfg(test)]
mod tests {
    /// transformers' buckets for 256 buckets over 512 positions (DeBERTa-v3): exact within
    /// ±128, log-scaled beyond, symmetric.
    #[test]
    fn buckets_match_transformers() {
        assert_eq!(super::bucket(5, 256, 512), 5);
        assert_eq!(super::bucket(-128, 256, 512), -128);
        assert_eq!(super::bucket(129, 256, 512), 129);
        assert_eq!(super::bucket(300, 256, 512), 207);
        assert_eq!(super::bucket(-300, 256, 512), -207);
        assert_eq!(super::bucket(-200, 256, 512), -169);
        assert_eq!(super::bucket(511, 256, 512), 255);
        // The tiny fixture's 8 buckets over 128 positions.
        let got: Vec<i64> = [3, 4, 5, 6, 10, 20, -20, 30]
            .iter()
            .map(|&r| super::bucket(r, 8, 128))
            .collect();
        assert_eq!(got, [3, 4, 5, 5, 5, 6, -6, 6]);
    }
}
