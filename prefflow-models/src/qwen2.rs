//! Decoder reward models, `Qwen2ForSequenceClassification` and `LlamaForSequenceClassification`:
//! the decoder and a `score` head read at the last non-padding token, as transformers does.
//!
//! Llama is Qwen2 without the q/k/v biases, so one implementation (candle's Qwen2) runs both:
//! a Llama checkpoint is read with zero biases where it has none.

use candle_core::{DType, Device, IndexOp, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder, linear_no_bias};
use candle_transformers::models::qwen2::{Config, Model};

use super::types::{ModelInfo, ModelSpec};
use candle_nn::var_builder::SimpleBackend;

use super::encode::{Backend, Encoded, Task};
use super::source::{model_config, read_json, safetensors_files};

/// Reads safetensors, answering missing attention-projection biases (Llama) with zeros.
struct ZeroBiases(candle_core::safetensors::MmapedSafetensors);

impl candle_nn::var_builder::SimpleBackend for ZeroBiases {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        if name.ends_with("_proj.bias") && !SimpleBackend::contains_tensor(&self.0, name) {
            return Tensor::zeros(s, dtype, dev);
        }
        SimpleBackend::get(&self.0, s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        SimpleBackend::get_unchecked(&self.0, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        name.ends_with("_proj.bias") || SimpleBackend::contains_tensor(&self.0, name)
    }
}

/// A loaded decoder classifier (Qwen2 or Llama).
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
        let raw = read_json(&spec.name, &spec.path.join("config.json"))
            .map_err(candle_core::Error::wrap)?;
        let scaling = raw["rope_scaling"]["rope_type"]
            .as_str()
            .or_else(|| raw["rope_parameters"]["rope_type"].as_str())
            .unwrap_or("default");
        if scaling != "default" {
            candle_core::bail!("rope scaling '{scaling}' is not supported for reward models yet");
        }
        let files = safetensors_files(&spec.name, &spec.path).map_err(candle_core::Error::wrap)?;
        // SAFETY: the weight files are not modified while mapped.
        let tensors = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files)? };
        let vb =
            VarBuilder::from_backend(Box::new(ZeroBiases(tensors)), DType::F32, device.clone());
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
