//! The Marian network (Helsinki-NLP/opus-mt-*: a post-norm BART-style encoder-decoder), written
//! for batches of sentences of different lengths.
//!
//! candle-transformers' Marian takes one sentence at a time: its encoder has no padding mask and
//! its cross-attention recomputes the encoder's keys and values at every decoding step. Here the
//! encoder masks padded source positions, the cross-attention keys and values are computed once
//! per batch, and finished sentences leave the batch, so many rows decode together. With no
//! padding (one sentence) the arithmetic is the same as candle's and transformers'.
//! Weight names are Hugging Face's (`model.shared`, `model.encoder.layers.N...`).

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, layer_norm, linear};
use candle_transformers::models::marian::Config;

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: VarBuilder, dim: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            q: linear(dim, dim, vb.pp("q_proj"))?,
            k: linear(dim, dim, vb.pp("k_proj"))?,
            v: linear(dim, dim, vb.pp("v_proj"))?,
            out: linear(dim, dim, vb.pp("out_proj"))?,
            heads,
            head_dim: dim / heads,
        })
    }

    /// (b, t, dim) -> (b, heads, t, head_dim).
    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Keys and values of `x` (b, t, dim), split into heads.
    fn keys_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.split(&self.k.forward(x)?)?,
            self.split(&self.v.forward(x)?)?,
        ))
    }

    /// Attention of queries from `x` (b, t, dim) over split keys/values, with an additive mask
    /// broadcast to (b, heads, t, s).
    fn attend(&self, x: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, t, dim) = x.dims3()?;
        let q = (self.split(&self.q.forward(x)?)? * (self.head_dim as f64).powf(-0.5))?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = probs.matmul(v)?.transpose(1, 2)?.reshape((b, t, dim))?;
        self.out.forward(&context)
    }
}

struct EncoderLayer {
    attn: Attention,
    attn_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    norm: LayerNorm,
}

struct DecoderLayer {
    attn: Attention,
    attn_norm: LayerNorm,
    cross: Attention,
    cross_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    norm: LayerNorm,
}

/// The per-batch decoding state: the self-attention cache and the encoder's keys/values for each
/// decoder layer, and the source mask, one row per sentence still decoding.
pub struct Decoding {
    past: Vec<Option<(Tensor, Tensor)>>,
    cross: Vec<(Tensor, Tensor)>,
    mask: Tensor,
    step: usize,
}

impl Decoding {
    /// Keeps only the rows at `keep` (indices into the current batch).
    pub fn retain(&mut self, keep: &[usize]) -> Result<()> {
        let device = self.mask.device().clone();
        let idx = Tensor::from_vec(
            keep.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            keep.len(),
            &device,
        )?;
        let pick = |t: &Tensor| t.index_select(&idx, 0);
        for p in self.past.iter_mut().flatten() {
            *p = (pick(&p.0)?, pick(&p.1)?);
        }
        for c in self.cross.iter_mut() {
            *c = (pick(&c.0)?, pick(&c.1)?);
        }
        self.mask = pick(&self.mask)?;
        Ok(())
    }
}

/// A loaded Marian network.
pub struct MarianNet {
    embed: Embedding,
    scale: f64,
    positions: Tensor,
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    activation: candle_nn::Activation,
    lm_head: Tensor,
    logits_bias: Tensor,
    device: Device,
}

/// HF's MarianSinusoidalPositionalEmbedding: sines in the first half, cosines in the second.
fn sinusoids(positions: usize, dim: usize, device: &Device) -> Result<Tensor> {
    let inv: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1f32 / 10000f32.powf(i as f32 / dim as f32))
        .collect();
    let n = inv.len();
    let inv = Tensor::from_vec(inv, (1, n), device)?;
    let t = Tensor::arange(0u32, positions as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?;
    let freqs = t.matmul(&inv)?;
    Tensor::cat(&[&freqs.sin()?, &freqs.cos()?], 1)?.contiguous()
}

impl MarianNet {
    /// Builds the network from `model.*` weights and `final_logits_bias`.
    pub fn load(c: &Config, vb: VarBuilder) -> Result<Self> {
        let m = vb.pp("model");
        let dim = c.d_model;
        let vocab = c.decoder_vocab_size.unwrap_or(c.vocab_size);
        let shared = m.pp("shared").get((c.vocab_size, dim), "weight")?;
        let encoder = (0..c.encoder_layers)
            .map(|i| {
                let l = m.pp(format!("encoder.layers.{i}"));
                Ok(EncoderLayer {
                    attn: Attention::load(l.pp("self_attn"), dim, c.encoder_attention_heads)?,
                    attn_norm: layer_norm(dim, 1e-5, l.pp("self_attn_layer_norm"))?,
                    fc1: linear(dim, c.encoder_ffn_dim, l.pp("fc1"))?,
                    fc2: linear(c.encoder_ffn_dim, dim, l.pp("fc2"))?,
                    norm: layer_norm(dim, 1e-5, l.pp("final_layer_norm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let decoder = (0..c.decoder_layers)
            .map(|i| {
                let l = m.pp(format!("decoder.layers.{i}"));
                Ok(DecoderLayer {
                    attn: Attention::load(l.pp("self_attn"), dim, c.decoder_attention_heads)?,
                    attn_norm: layer_norm(dim, 1e-5, l.pp("self_attn_layer_norm"))?,
                    cross: Attention::load(l.pp("encoder_attn"), dim, c.decoder_attention_heads)?,
                    cross_norm: layer_norm(dim, 1e-5, l.pp("encoder_attn_layer_norm"))?,
                    fc1: linear(dim, c.decoder_ffn_dim, l.pp("fc1"))?,
                    fc2: linear(c.decoder_ffn_dim, dim, l.pp("fc2"))?,
                    norm: layer_norm(dim, 1e-5, l.pp("final_layer_norm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let logits_bias = vb.get((1, vocab), "final_logits_bias")?;
        Ok(Self {
            embed: Embedding::new(shared.clone(), dim),
            scale: if c.scale_embedding {
                (dim as f64).sqrt()
            } else {
                1.0
            },
            positions: sinusoids(c.max_position_embeddings, dim, vb.device())?,
            encoder,
            decoder,
            activation: c.activation_function,
            lm_head: shared.narrow(0, 0, vocab)?.t()?.contiguous()?,
            logits_bias,
            device: vb.device().clone(),
        })
    }

    /// Embeddings of `ids` (b, t) at positions `start..start + t`.
    fn embed(&self, ids: &Tensor, start: usize) -> Result<Tensor> {
        let t = ids.dim(1)?;
        let pos = self.positions.narrow(0, start, t)?.unsqueeze(0)?;
        (self.embed.forward(ids)? * self.scale)?.broadcast_add(&pos)
    }

    fn feed_forward(
        &self,
        x: &Tensor,
        fc1: &Linear,
        fc2: &Linear,
        norm: &LayerNorm,
    ) -> Result<Tensor> {
        let y = fc2.forward(&fc1.forward(x)?.apply(&self.activation)?)?;
        norm.forward(&(y + x)?)
    }

    /// Encodes right-padded sentences (`lens` real tokens each) and returns the decoding state
    /// ready for the first step.
    pub fn encode(&self, sentences: &[&[u32]], pad: u32) -> Result<Decoding> {
        let b = sentences.len();
        let len = sentences.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![pad; b * len];
        // Padded keys get -inf, so softmax gives them no weight; every row has a real token.
        let mut mask = vec![f32::NEG_INFINITY; b * len];
        for (r, s) in sentences.iter().enumerate() {
            ids[r * len..r * len + s.len()].copy_from_slice(s);
            mask[r * len..r * len + s.len()].fill(0.0);
        }
        let ids = Tensor::from_vec(ids, (b, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, 1, 1, len), &self.device)?;
        let mut x = self.embed(&ids, 0)?;
        for l in &self.encoder {
            let (k, v) = l.attn.keys_values(&x)?;
            let a = l.attn.attend(&x, &k, &v, Some(&mask))?;
            let x1 = l.attn_norm.forward(&(a + &x)?)?;
            x = self.feed_forward(&x1, &l.fc1, &l.fc2, &l.norm)?;
        }
        let cross = self
            .decoder
            .iter()
            .map(|l| l.cross.keys_values(&x))
            .collect::<Result<Vec<_>>>()?;
        Ok(Decoding {
            past: vec![None; self.decoder.len()],
            cross,
            mask,
            step: 0,
        })
    }

    /// One decoding step: `last` holds each row's latest token; returns logits (rows, vocab).
    pub fn step(&self, state: &mut Decoding, last: &[u32]) -> Result<Tensor> {
        let ids = Tensor::from_vec(last.to_vec(), (last.len(), 1), &self.device)?;
        let mut x = self.embed(&ids, state.step)?;
        for (i, l) in self.decoder.iter().enumerate() {
            // One new query per row sees every earlier position: no causal mask needed.
            let (k, v) = l.attn.keys_values(&x)?;
            let (k, v) = match &state.past[i] {
                Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                None => (k, v),
            };
            let a = l.attn.attend(&x, &k, &v, None)?;
            state.past[i] = Some((k, v));
            let x1 = l.attn_norm.forward(&(a + &x)?)?;
            let (ck, cv) = &state.cross[i];
            let c = l.cross.attend(&x1, ck, cv, Some(&state.mask))?;
            let x2 = l.cross_norm.forward(&(c + &x1)?)?;
            x = self.feed_forward(&x2, &l.fc1, &l.fc2, &l.norm)?;
        }
        state.step += 1;
        x.i((.., 0))?
            .matmul(&self.lm_head)?
            .broadcast_add(&self.logits_bias)?
            .to_dtype(DType::F32)
    }
}
