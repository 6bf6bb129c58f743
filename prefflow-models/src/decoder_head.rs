//! Decoders with another head than the language model's, on the decoder body
//! ([`Transformer::load_body`]) of every family the decoder runs (Llama, Mistral, Qwen2, Qwen3,
//! Gemma 2, Gemma 3, Phi-3):
//! - reward models, `*ForSequenceClassification`: a `score` head read at the last non-padding
//!   token, as transformers picks it;
//! - embedders (Qwen3-Embedding, e5-mistral: a `*Model` or `*ForCausalLM` folder with
//!   sentence-transformers modules): the hidden states pooled (last token, mean, ...) and
//!   normalised as sentence-transformers does.
//!
//! Sequences run together without padding (each has its own cache), so a row's output does not
//! depend on the batch.

use candle_core::{DType, Device, Result, Tensor};

use super::encode::{Backend, Encoded, Task};
use super::source::{read_json, safetensors_files};
use super::transformer::{Cache, Config, Step, Transformer, Weights, read_safetensors};
use super::types::{ModelInfo, ModelSpec, Pooling};

/// Most sequences scored in one forward pass.
const MAX_ROWS: usize = 16;

/// A loaded decoder with a classification or pooling head.
pub struct DecoderHead {
    body: Transformer,
    /// (labels, hidden), for a classifier.
    score: Option<Tensor>,
    pad_token_id: Option<u32>,
    pooling: Pooling,
    normalize: bool,
}

impl DecoderHead {
    /// Loads config.json and the safetensors weights.
    pub fn load(spec: &ModelSpec, info: &ModelInfo, device: &Device) -> Result<Self> {
        let json = read_json(&spec.name, &spec.path.join("config.json"))
            .map_err(candle_core::Error::wrap)?;
        let config = Config::from_json(&json)?;
        let files = safetensors_files(&spec.name, &spec.path).map_err(candle_core::Error::wrap)?;
        let mut tensors = read_safetensors(&files, device)?;
        let score = tensors.remove("score.weight");
        let labels = info.labels.len().max(1);
        match &score {
            Some(s) if s.dims() != [labels, config.hidden] => candle_core::bail!(
                "score.weight is {:?}, expected [{labels}, {}]",
                s.dims(),
                config.hidden
            ),
            None if info.architecture.ends_with("ForSequenceClassification") => {
                candle_core::bail!("the weights have no score.weight")
            }
            _ => {}
        }
        let weights: Weights<'_, std::fs::File> = Weights::Safetensors(tensors);
        let body = Transformer::load_body(config, weights, device)?;
        Ok(Self {
            body,
            score,
            pad_token_id: info.pad_token_id,
            pooling: info.pooling,
            normalize: info.normalize,
        })
    }
}

impl Backend for DecoderHead {
    fn run(&mut self, task: Task, batch: &[&Encoded]) -> Result<Vec<Vec<f32>>> {
        if batch.iter().any(|e| e.ids.is_empty()) {
            candle_core::bail!("a row has no tokens");
        }
        let mut caches: Vec<Cache> = batch.iter().map(|_| Cache::default()).collect();
        let mut steps: Vec<Step<'_>> = batch
            .iter()
            .zip(caches.iter_mut())
            .map(|(e, cache)| Step { ids: &e.ids, cache })
            .collect();
        let hidden = self.body.forward(&mut steps)?;
        if task == Task::Embed {
            let mut start = 0;
            let mut out = Vec::with_capacity(batch.len());
            for e in batch {
                let n = e.ids.len();
                let rows = hidden.narrow(0, start, n)?.unsqueeze(0)?;
                let mask = Tensor::ones((1, n), DType::U32, hidden.device())?;
                let v = crate::bert::pool(&rows, &mask, &[n], self.pooling, self.normalize)?;
                out.push(v.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?);
                start += n;
            }
            return Ok(out);
        }
        let Some(score) = &self.score else {
            candle_core::bail!("this decoder has no score head: it embeds, it does not score")
        };
        // transformers reads the last token that is not the pad token.
        let mut start = 0;
        let mut rows = Vec::with_capacity(batch.len());
        for e in batch {
            let last = e
                .ids
                .iter()
                .rposition(|&t| Some(t) != self.pad_token_id)
                .unwrap_or(e.ids.len() - 1);
            rows.push((start + last) as u32);
            start += e.ids.len();
        }
        let rows = Tensor::new(rows.as_slice(), hidden.device())?;
        let picked = hidden.index_select(&rows, 0)?;
        let logits = picked.matmul(&score.t()?)?.to_dtype(DType::F32)?;
        logits.to_vec2()
    }

    fn max_rows(&self) -> usize {
        MAX_ROWS
    }
}
