//! `Qwen2ForSequenceClassification` reward models: the Qwen2 decoder and a `score` head read
//! at the last non-padding token, as transformers does.

use candle_core::{DType, Device, IndexOp, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder, linear_no_bias};
use candle_transformers::models::qwen2::{Config, Model};

use super::registry::{ModelInfo, ModelSpec};
use super::source::{model_config, safetensors_files};
use super::worker::{Backend, Encoded, Task};

/// A loaded Qwen2 classifier.
pub struct Qwen2Classifier {
    model: Model,
    score: Linear,
    pad_token_id: Option<u32>,
    device: Device,
}

impl Qwen2Classifier {
    /// Loads config.json and the safetensors weights.
    pub fn load(spec: &ModelSpec, info: &ModelInfo, device: &Device) -> Result<Self> {
        let config: Config =
            model_config(&spec.name, &spec.path).map_err(candle_core::Error::wrap)?;
        let files = safetensors_files(&spec.name, &spec.path).map_err(candle_core::Error::wrap)?;
        // SAFETY: the weight files are not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, device)? };
        // candle's Qwen2 Model adds the "model." prefix itself.
        let model = Model::new(&config, vb.clone())?;
        let score = linear_no_bias(config.hidden_size, info.labels.len().max(1), vb.pp("score"))?;
        Ok(Self {
            model,
            score,
            pad_token_id: info.pad_token_id,
            device: device.clone(),
        })
    }
}

impl Backend for Qwen2Classifier {
    fn run(&mut self, task: Task, batch: &[&Encoded]) -> Result<Vec<Vec<f32>>> {
        if task != Task::Score {
            candle_core::bail!("a Qwen2 classifier gives scores, not embeddings");
        }
        let mut out = Vec::with_capacity(batch.len());
        for e in batch {
            let ids = Tensor::new(e.ids.as_slice(), &self.device)?.unsqueeze(0)?;
            self.model.clear_kv_cache();
            let hidden = self.model.forward(&ids, 0, None)?;
            self.model.clear_kv_cache();
            // transformers reads the last token that is not the pad token.
            let last = e
                .ids
                .iter()
                .rposition(|&t| Some(t) != self.pad_token_id)
                .unwrap_or(e.ids.len() - 1);
            let logits = self.score.forward(&hidden.i((0, last))?.unsqueeze(0)?)?;
            out.push(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?);
        }
        Ok(out)
    }

    /// Sequences run one at a time: no padding, so no attention-mask bookkeeping.
    fn max_rows(&self) -> usize {
        1
    }
}
