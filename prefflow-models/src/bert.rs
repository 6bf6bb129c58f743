//! BERT-family encoders — BERT, RoBERTa and XLM-RoBERTa (positions offset past the padding id,
//! as transformers numbers them) — for sentence embeddings (sentence-transformers pooling and
//! normalisation) and `*ForSequenceClassification` heads (BERT's pooler + classifier, RoBERTa's
//! dense + out_proj on <s>).
//!
//! The encoder is written here rather than taken from candle-transformers: candle's BERT runs
//! every linear layer as a batch of small (sequence x hidden) matmuls, one per row, which on
//! CPU is several times slower than one (rows*sequence x hidden) matmul. Weight names are
//! Hugging Face's, with or without the `bert.` prefix.

use candle_core::{D, DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear};
use serde::Deserialize;

use super::encode::{Backend, Encoded, Task};
use super::source::{model_config, safetensors_files};
use super::types::{ModelInfo, ModelSpec, Pooling};

/// The fields of a BERT config.json the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "default_types")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    pad_token_id: Option<u32>,
}

fn default_act() -> String {
    "gelu".to_string()
}
fn default_types() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

struct Layer {
    /// Query, key and value projections as one (3 * hidden, hidden) matrix: one product.
    qkv: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    out: Dense,
    out_norm: LayerNorm,
}

/// A linear layer: OpenBLAS on the CPU when it is installed (see prefflow_kernels::blas, about
/// 2x candle's f32 GEMM on these shapes), candle's matmul otherwise.
struct Dense {
    linear: Linear,
    /// The bias as a row, on the CPU (added with the GELU in one pass).
    bias: Option<Vec<f32>>,
    /// (out, in) weights, row-major, when OpenBLAS runs the product.
    blas: Option<Vec<f32>>,
}

impl Dense {
    fn new(linear: Linear) -> Result<Self> {
        let cpu = linear.weight().device().is_cpu();
        let bias = if cpu {
            Some(match linear.bias() {
                Some(b) => b.to_vec1::<f32>()?,
                None => vec![0.0; linear.weight().dim(0)?],
            })
        } else {
            None
        };
        let blas = if cpu && prefflow_kernels::blas::available() {
            Some(linear.weight().flatten_all()?.to_vec1::<f32>()?)
        } else {
            None
        };
        Ok(Self { linear, bias, blas })
    }

    /// Concatenates layers with the same input along their outputs.
    fn stacked(layers: &[Linear]) -> Result<Self> {
        let w = Tensor::cat(&layers.iter().map(|l| l.weight()).collect::<Vec<_>>(), 0)?;
        let b = layers
            .iter()
            .map(|l| l.bias().cloned())
            .collect::<Option<Vec<_>>>()
            .map(|b| Tensor::cat(&b, 0))
            .transpose()?;
        Self::new(Linear::new(w, b))
    }

    /// `x · wᵀ + b`, with BERT's erf GELU applied in the same pass when `gelu`: OpenBLAS when
    /// installed, else candle's matmul, then bias and GELU in one pass over the pool.
    fn forward(&self, x: &Tensor, gelu: bool) -> Result<Tensor> {
        let Some(b) = &self.bias else {
            let y = self.linear.forward(x)?;
            return if gelu { y.gelu_erf() } else { Ok(y) };
        };
        let (m, k) = x.dims2()?;
        let threads = rayon::current_num_threads();
        let blas = match &self.blas {
            Some(w) => {
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                prefflow_kernels::blas::dense(&xs, w, b, m, k, threads, gelu)
            }
            None => None,
        };
        let y = match blas {
            Some(y) => y,
            None => {
                let w = self.linear.weight().t()?;
                let mut y = x.matmul(&w)?.flatten_all()?.to_vec1::<f32>()?;
                prefflow_kernels::activation::bias_gelu(&mut y, b, gelu);
                y
            }
        };
        Tensor::from_vec(y, (m, b.len()), x.device())
    }
}

/// BERT embeddings and encoder layers.
struct Encoder {
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    act: String,
}

impl Encoder {
    fn load(vb: VarBuilder, c: &Config) -> Result<Self> {
        let e = vb.pp("embeddings");
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let h = c.hidden_size;
                Ok(Layer {
                    qkv: Dense::stacked(&[
                        linear(h, h, l.pp("attention.self.query"))?,
                        linear(h, h, l.pp("attention.self.key"))?,
                        linear(h, h, l.pp("attention.self.value"))?,
                    ])?,
                    attention_out: Dense::new(linear(h, h, l.pp("attention.output.dense"))?)?,
                    attention_norm: layer_norm(
                        h,
                        c.layer_norm_eps,
                        l.pp("attention.output.LayerNorm"),
                    )?,
                    intermediate: Dense::new(linear(
                        h,
                        c.intermediate_size,
                        l.pp("intermediate.dense"),
                    )?)?,
                    out: Dense::new(linear(c.intermediate_size, h, l.pp("output.dense"))?)?,
                    out_norm: layer_norm(h, c.layer_norm_eps, l.pp("output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            words: embedding(c.vocab_size, c.hidden_size, e.pp("word_embeddings"))?,
            positions: embedding(
                c.max_position_embeddings,
                c.hidden_size,
                e.pp("position_embeddings"),
            )?,
            token_types: embedding(
                c.type_vocab_size,
                c.hidden_size,
                e.pp("token_type_embeddings"),
            )?,
            norm: layer_norm(c.hidden_size, c.layer_norm_eps, e.pp("LayerNorm"))?,
            layers,
            heads: c.num_attention_heads,
            hidden: c.hidden_size,
            act: c.hidden_act.clone(),
        })
    }

    fn activation(&self, x: &Tensor) -> Result<Tensor> {
        match self.act.as_str() {
            "gelu" => x.gelu_erf(),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => x.gelu(),
            "relu" => x.relu(),
            other => candle_core::bail!("unsupported hidden_act '{other}'"),
        }
    }

    /// Hidden states (rows, length, hidden) for padded ids with their position ids and a 0/1
    /// mask.
    fn forward(
        &self,
        ids: &Tensor,
        types: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let (h, heads) = (self.hidden, self.heads);
        let d = h / heads;
        let x = self
            .words
            .forward(ids)?
            .add(&self.token_types.forward(types)?)?
            .add(&self.positions.forward(positions)?)?;
        // Every linear layer runs on (rows * length, hidden): one big matmul.
        let mut x = self.norm.forward(&x)?.reshape((b * l, h))?;
        // Padded keys get a large negative score, so softmax gives them no weight.
        let bias = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((b, 1, 1, l))?;
        let scale = 1.0 / (d as f64).sqrt();
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()
        };
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x, false)?;
            let q = split(qkv.narrow(1, 0, h)?)?;
            let k = split(qkv.narrow(1, h, h)?)?;
            let v = split(qkv.narrow(1, 2 * h, h)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * l, h))?;
            let a = layer
                .attention_norm
                .forward(&layer.attention_out.forward(&context, false)?.add(&x)?)?;
            let i = if self.act == "gelu" {
                layer.intermediate.forward(&a, true)?
            } else {
                self.activation(&layer.intermediate.forward(&a, false)?)?
            };
            x = layer
                .out_norm
                .forward(&layer.out.forward(&i, false)?.add(&a)?)?;
        }
        x.reshape((b, l, h))
    }
}

/// A classification head.
enum Head {
    /// BERT: pooler.dense → tanh → classifier, on [CLS].
    Pooler(Linear, Linear),
    /// RoBERTa: classifier.dense → tanh → classifier.out_proj, on <s>.
    Roberta(Linear, Linear),
}

/// A loaded BERT-family model.
pub struct Bert {
    model: Encoder,
    head: Option<Head>,
    pooling: Pooling,
    normalize: bool,
    /// RoBERTa's first position id (padding_idx + 1); 0 for BERT.
    first_position: Option<u32>,
    /// Segment ids the model has: RoBERTa has one, so a pair's second segment reads as 0, as
    /// transformers (which passes no token_type_ids to RoBERTa) does.
    type_vocab: usize,
    device: Device,
}

impl Bert {
    /// Loads config.json and the safetensors weights (memory-mapped).
    pub fn load(spec: &ModelSpec, info: &ModelInfo, device: &Device) -> Result<Self> {
        let config: Config =
            model_config(&spec.name, &spec.path).map_err(candle_core::Error::wrap)?;
        let files = safetensors_files(&spec.name, &spec.path).map_err(candle_core::Error::wrap)?;
        // SAFETY: the weight files are not modified while mapped (they are read-only inputs).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, device)? };
        let roberta = matches!(info.model_type.as_str(), "roberta" | "xlm-roberta");
        let prefix = ["bert", "roberta"]
            .into_iter()
            .find(|p| vb.contains_tensor(&format!("{p}.embeddings.word_embeddings.weight")));
        let base = match prefix {
            Some(p) => vb.pp(p),
            None => vb.clone(),
        };
        let model = Encoder::load(base.clone(), &config)?;
        let (h, labels) = (config.hidden_size, info.labels.len().max(1));
        let head = if !info.architecture.ends_with("ForSequenceClassification") {
            None
        } else if roberta {
            Some(Head::Roberta(
                linear(h, h, vb.pp("classifier.dense"))?,
                linear(h, labels, vb.pp("classifier.out_proj"))?,
            ))
        } else {
            Some(Head::Pooler(
                linear(h, h, base.pp("pooler.dense"))?,
                linear(h, labels, vb.pp("classifier"))?,
            ))
        };
        // transformers numbers RoBERTa's real tokens from padding_idx + 1.
        let first_position = roberta.then(|| config.pad_token_id.unwrap_or(1) + 1);
        Ok(Self {
            model,
            head,
            pooling: info.pooling,
            normalize: info.normalize,
            first_position,
            type_vocab: config.type_vocab_size,
            device: device.clone(),
        })
    }

    fn hidden(&self, batch: &[&Encoded]) -> Result<(Tensor, Tensor)> {
        let len = batch.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(1);
        let rows = batch.len();
        let mut ids = vec![0u32; rows * len];
        let mut types = vec![0u32; rows * len];
        let mut mask = vec![0u32; rows * len];
        // Padded positions are masked out; RoBERTa gives them padding_idx, as transformers.
        let first = self.first_position.unwrap_or(0);
        let mut positions = vec![first.saturating_sub(1); rows * len];
        for (r, e) in batch.iter().enumerate() {
            let at = r * len;
            ids[at..at + e.ids.len()].copy_from_slice(&e.ids);
            if self.type_vocab > 1 {
                types[at..at + e.type_ids.len()].copy_from_slice(&e.type_ids);
            }
            mask[at..at + e.ids.len()].fill(1);
            for (i, p) in positions[at..at + e.ids.len()].iter_mut().enumerate() {
                *p = first + i as u32;
            }
        }
        let ids = Tensor::from_vec(ids, (rows, len), &self.device)?;
        let types = Tensor::from_vec(types, (rows, len), &self.device)?;
        let positions = Tensor::from_vec(positions, (rows, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, len), &self.device)?;
        let hidden = self.model.forward(&ids, &types, &positions, &mask)?;
        Ok((hidden, mask))
    }
}

impl Backend for Bert {
    fn run(&mut self, task: Task, batch: &[&Encoded]) -> Result<Vec<Vec<f32>>> {
        let (hidden, mask) = self.hidden(batch)?;
        let out = match task {
            Task::Embed => {
                let lengths: Vec<usize> = batch.iter().map(|e| e.ids.len()).collect();
                pool(&hidden, &mask, &lengths, self.pooling, self.normalize)?
            }
            Task::Score => {
                let cls = hidden.i((.., 0))?;
                match &self.head {
                    Some(Head::Pooler(pooler, classifier)) => {
                        classifier.forward(&pooler.forward(&cls)?.tanh()?)?
                    }
                    Some(Head::Roberta(dense, out)) => {
                        out.forward(&dense.forward(&cls)?.tanh()?)?
                    }
                    None => candle_core::bail!(
                        "this encoder has no classification head (architectures in config.json)"
                    ),
                }
            }
        };
        out.to_dtype(DType::F32)?.to_vec2()
    }
}

/// sentence-transformers pooling of padded hidden states (rows, length, hidden) with their 0/1
/// mask and real lengths, then the Normalize module where the model has one.
pub fn pool(
    hidden: &Tensor,
    mask: &Tensor,
    lengths: &[usize],
    pooling: Pooling,
    normalize: bool,
) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let pooled = match pooling {
        Pooling::Cls => hidden.i((.., 0))?,
        Pooling::Mean | Pooling::MeanSqrtLen => {
            let sum = hidden.broadcast_mul(&mask)?.sum(1)?;
            let count = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
            let count = if pooling == Pooling::MeanSqrtLen {
                count.sqrt()?
            } else {
                count
            };
            sum.broadcast_div(&count)?
        }
        Pooling::Max => {
            // Padded positions must never win the max.
            let neg = ((mask.ones_like()? - &mask)? * -1e9)?;
            hidden.broadcast_add(&neg)?.max(1)?
        }
        Pooling::LastToken => {
            let rows = lengths
                .iter()
                .enumerate()
                .map(|(r, &n)| hidden.i((r, n.max(1) - 1)))
                .collect::<Result<Vec<_>>>()?;
            Tensor::stack(&rows, 0)?
        }
    };
    if !normalize {
        return Ok(pooled);
    }
    let norm = pooled
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    pooled.broadcast_div(&norm)
}
