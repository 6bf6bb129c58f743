//! Llama-architecture decoders (SmolLM2 and friends) from GGUF files, written over candle's
//! `QMatMul` so one implementation runs the quantized weights (default) or the same weights
//! dequantized to f32 (`OPTIONS (dtype 'f32')`, the parity path against transformers).
//! Unlike candle-transformers' quantized_llama it returns logits for every position, which
//! ai_logprob needs, and keeps the KV cache outside the model so many sequences can share it.
//!
//! GGUF stores q/k weights permuted for interleaved rotary embeddings (llama.cpp's layout),
//! hence `rope_i`.

use std::io::{Read, Seek};

use candle_core::quantized::{QMatMul, gguf_file};
use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, RmsNorm};

struct Block {
    attn_norm: RmsNorm,
    q: QMatMul,
    k: QMatMul,
    v: QMatMul,
    o: QMatMul,
    ffn_norm: RmsNorm,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
}

/// The keys and values of one sequence, per layer.
#[derive(Default, Clone)]
pub struct Cache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

/// A loaded Llama model.
pub struct Llama {
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    output: QMatMul,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl Llama {
    /// Reads the weights of a llama GGUF file; `dequantize` turns every matrix into f32.
    pub fn load<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        dequantize: bool,
    ) -> Result<Self> {
        let meta = |k: &str| {
            ct.metadata
                .get(k)
                .ok_or_else(|| candle_core::Error::Msg(format!("GGUF metadata has no {k}")))
        };
        let heads = meta("llama.attention.head_count")?.to_u32()? as usize;
        let kv_heads = meta("llama.attention.head_count_kv")?.to_u32()? as usize;
        let hidden = meta("llama.embedding_length")?.to_u32()? as usize;
        let layers = meta("llama.block_count")?.to_u32()? as usize;
        let eps = meta("llama.attention.layer_norm_rms_epsilon")?.to_f32()? as f64;
        let base = ct
            .metadata
            .get("llama.rope.freq_base")
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(10000.0);
        let context = ct
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .unwrap_or(4096) as usize;
        let head_dim = hidden / heads;

        let mut tensor = |name: &str| ct.tensor(reader, name, device);
        let matmul = |q: candle_core::quantized::QTensor| -> Result<QMatMul> {
            if dequantize {
                Ok(QMatMul::Tensor(q.dequantize(device)?))
            } else {
                QMatMul::from_qtensor(q)
            }
        };
        let embed_q = tensor("token_embd.weight")?;
        let embed = embed_q.dequantize(device)?;
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let p = format!("blk.{i}");
            let norm = |t: candle_core::quantized::QTensor| -> Result<RmsNorm> {
                Ok(RmsNorm::new(t.dequantize(device)?, eps))
            };
            blocks.push(Block {
                attn_norm: norm(tensor(&format!("{p}.attn_norm.weight"))?)?,
                q: matmul(tensor(&format!("{p}.attn_q.weight"))?)?,
                k: matmul(tensor(&format!("{p}.attn_k.weight"))?)?,
                v: matmul(tensor(&format!("{p}.attn_v.weight"))?)?,
                o: matmul(tensor(&format!("{p}.attn_output.weight"))?)?,
                ffn_norm: norm(tensor(&format!("{p}.ffn_norm.weight"))?)?,
                gate: matmul(tensor(&format!("{p}.ffn_gate.weight"))?)?,
                up: matmul(tensor(&format!("{p}.ffn_up.weight"))?)?,
                down: matmul(tensor(&format!("{p}.ffn_down.weight"))?)?,
            });
        }
        let norm = RmsNorm::new(tensor("output_norm.weight")?.dequantize(device)?, eps);
        // Tied embeddings: no output.weight, the embedding matrix is the head.
        let output = match tensor("output.weight") {
            Ok(t) => matmul(t)?,
            Err(_) => matmul(embed_q)?,
        };
        let theta: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1f32 / base.powf(i as f32 / head_dim as f32))
            .collect();
        let theta = Tensor::new(theta.as_slice(), device)?;
        let angles = Tensor::arange(0u32, context as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((context, 1))?
            .matmul(&theta.reshape((1, head_dim / 2))?)?;
        Ok(Self {
            embed: Embedding::new(embed, hidden),
            blocks,
            norm,
            output,
            heads,
            kv_heads,
            head_dim,
            cos: angles.cos()?,
            sin: angles.sin()?,
            device: device.clone(),
        })
    }

    /// Logits (tokens, vocab) for `ids` placed at positions `pos..`, extending `cache`.
    pub fn forward(&self, ids: &[u32], pos: usize, cache: &mut Cache) -> Result<Tensor> {
        let t = ids.len();
        if cache.layers.len() != self.blocks.len() {
            cache.layers = (0..self.blocks.len()).map(|_| None).collect();
        }
        let mut x = self.embed.forward(&Tensor::new(ids, &self.device)?)?; // (t, hidden)
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let total = pos + t;
        // Causal mask over (new tokens x all tokens so far).
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, total), &self.device)?;
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        for (block, slot) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let a = block.attn_norm.forward(&x)?;
            let q = block
                .q
                .forward(&a)?
                .reshape((1, t, h, d))?
                .transpose(1, 2)?
                .contiguous()?;
            let k = block
                .k
                .forward(&a)?
                .reshape((1, t, kvh, d))?
                .transpose(1, 2)?
                .contiguous()?;
            let v = block
                .v
                .forward(&a)?
                .reshape((1, t, kvh, d))?
                .transpose(1, 2)?
                .contiguous()?;
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?;
            let (k, v) = match slot.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            *slot = Some((k.clone(), v.clone()));
            // Grouped-query attention: each kv head serves heads / kv_heads query heads.
            let groups = h / kvh;
            let k = k
                .unsqueeze(2)?
                .expand((1, kvh, groups, total, d))?
                .reshape((1, h, total, d))?;
            let v = v
                .unsqueeze(2)?
                .expand((1, kvh, groups, total, d))?
                .reshape((1, h, total, d))?;
            let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?.broadcast_add(&mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let attn = probs.matmul(&v)?.transpose(1, 2)?.reshape((t, h * d))?;
            x = (x + block.o.forward(&attn)?)?;
            let f = block.ffn_norm.forward(&x)?;
            let gated =
                (candle_nn::ops::silu(&block.gate.forward(&f)?)? * block.up.forward(&f)?)?;
            x = (x + block.down.forward(&gated)?)?;
        }
        self.output.forward(&self.norm.forward(&x)?)
    }
}

/// Log-probabilities of each next token: row i scores `ids[i + 1]` given `ids[..=i]`.
pub fn token_logprobs(logits: &Tensor, next: &[u32]) -> Result<Vec<f32>> {
    let lp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let idx = Tensor::new(next, logits.device())?.unsqueeze(1)?;
    lp.narrow(0, 0, next.len())?
        .gather(&idx, 1)?
        .squeeze(1)?
        .to_vec1()
}
