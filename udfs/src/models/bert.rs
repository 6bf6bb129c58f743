//! BERT-family encoders: sentence embeddings (sentence-transformers pooling and
//! normalisation) and `BertForSequenceClassification` heads (pooler + classifier).

use candle_core::{D, DType, Device, IndexOp, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder, linear};
use candle_transformers::models::bert::{BertModel, Config};

use super::registry::{ModelInfo, ModelSpec, Pooling};
use super::source::{model_config, safetensors_files};
use super::worker::{Backend, Encoded, Task};

/// A loaded BERT model.
pub struct Bert {
    model: BertModel,
    /// pooler.dense and classifier, for sequence classification.
    head: Option<(Linear, Linear)>,
    pooling: Pooling,
    normalize: bool,
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
        let model = BertModel::load(vb.clone(), &config)?;
        let head = if info.architecture.ends_with("ForSequenceClassification") {
            let prefix = if vb.contains_tensor("bert.pooler.dense.weight") {
                "bert.pooler.dense"
            } else {
                "pooler.dense"
            };
            let pooler = linear(config.hidden_size, config.hidden_size, vb.pp(prefix))?;
            let classifier = linear(
                config.hidden_size,
                info.labels.len().max(1),
                vb.pp("classifier"),
            )?;
            Some((pooler, classifier))
        } else {
            None
        };
        Ok(Self {
            model,
            head,
            pooling: info.pooling,
            normalize: info.normalize,
            device: device.clone(),
        })
    }

    fn hidden(&self, batch: &[&Encoded]) -> Result<(Tensor, Tensor)> {
        let len = batch.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(1);
        let rows = batch.len();
        let mut ids = vec![0u32; rows * len];
        let mut types = vec![0u32; rows * len];
        let mut mask = vec![0u32; rows * len];
        for (r, e) in batch.iter().enumerate() {
            let at = r * len;
            ids[at..at + e.ids.len()].copy_from_slice(&e.ids);
            types[at..at + e.type_ids.len()].copy_from_slice(&e.type_ids);
            mask[at..at + e.ids.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (rows, len), &self.device)?;
        let types = Tensor::from_vec(types, (rows, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, len), &self.device)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        Ok((hidden, mask))
    }
}

impl Backend for Bert {
    fn run(&mut self, task: Task, batch: &[&Encoded]) -> Result<Vec<Vec<f32>>> {
        let (hidden, mask) = self.hidden(batch)?;
        let out = match task {
            Task::Embed => {
                let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let pooled = match self.pooling {
                    Pooling::Cls => hidden.i((.., 0))?,
                    Pooling::Mean => {
                        let sum = hidden.broadcast_mul(&mask)?.sum(1)?;
                        let count = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
                        sum.broadcast_div(&count)?
                    }
                    Pooling::Max => {
                        // Padded positions must never win the max.
                        let neg = ((mask.ones_like()? - &mask)? * -1e9)?;
                        hidden.broadcast_add(&neg)?.max(1)?
                    }
                };
                if self.normalize {
                    let norm = pooled
                        .sqr()?
                        .sum_keepdim(D::Minus1)?
                        .sqrt()?
                        .clamp(1e-12, f64::MAX)?;
                    pooled.broadcast_div(&norm)?
                } else {
                    pooled
                }
            }
            Task::Score => {
                let Some((pooler, classifier)) = &self.head else {
                    candle_core::bail!(
                        "this BERT model has no classification head (architectures in config.json)"
                    );
                };
                let cls = hidden.i((.., 0))?;
                classifier.forward(&pooler.forward(&cls)?.tanh()?)?
            }
        };
        out.to_dtype(DType::F32)?.to_vec2()
    }
}
