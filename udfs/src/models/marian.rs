//! Marian encoder-decoder translation models (Helsinki-NLP/opus-mt-*) from safetensors
//! folders, with candle-transformers' Marian code: greedy decoding with a KV cache, `<pad>`
//! banned as the models' generation configs do, stopping at `</s>` or the token budget.
//!
//! The folder needs config.json (model_type "marian"), *.safetensors and a tokenizer.json
//! (candle's convert_slow_tokenizer.py makes one from source.spm / target.spm and vocab.json).
//! Multilingual models pick their target with a `>>lang<<` token: when the vocabulary has
//! `>>{target_lang}<<`, it is put before the text.
//!
//! The model lives on its own worker thread (never on the async runtime); callers send it one
//! sequence at a time, since its KV cache lives in the model, and wait for the answer.

use std::path::Path;
use std::sync::mpsc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::marian::{Config, MTModel};
use tokenizers::Tokenizer;

use super::error::{ModelError, ModelResult};
use super::source::{read_json, safetensors_files};

/// Whether a model folder holds a Marian model.
pub fn is_marian(dir: &Path) -> bool {
    dir.is_dir()
        && read_json("", &dir.join("config.json"))
            .is_ok_and(|c| c["model_type"].as_str() == Some("marian"))
}

/// A loaded Marian model.
pub struct Marian {
    name: String,
    jobs: mpsc::Sender<Job>,
    tokenizer: Tokenizer,
}

/// Input ids, token budget, and where to send (ids, logits).
type Job = (
    Vec<u32>,
    usize,
    mpsc::Sender<ModelResult<(Vec<u32>, Vec<f32>)>>,
);

/// What the worker thread owns.
struct MarianLoop {
    name: String,
    model: MTModel,
    config: Config,
    device: Device,
}

impl std::fmt::Debug for Marian {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Marian({})", self.name)
    }
}

impl Marian {
    /// The model's name in SQL.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Loads a Marian folder.
    /// Loads a Marian folder: the weights on the model's own thread (see [`super::thread`]),
    /// its math on a pool of `threads` threads (`prefflow.threads`).
    pub fn load(name: &str, dir: &Path, device: Device, threads: usize) -> ModelResult<Self> {
        let json = read_json(name, &dir.join("config.json"))?;
        let config: Config = serde_json::from_value(json).map_err(|e| ModelError::File {
            model: name.to_string(),
            path: dir.join("config.json").display().to_string(),
            problem: format!("not a Marian config: {e}"),
        })?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| ModelError::File {
            model: name.to_string(),
            path: tokenizer_path.display().to_string(),
            problem: format!(
                "{e} (Marian folders need a tokenizer.json; convert source.spm / target.spm with candle's convert_slow_tokenizer.py)"
            ),
        })?;
        let files = safetensors_files(name, dir)?;
        let load = {
            let name = name.to_string();
            move || {
                // SAFETY: the weight files are not modified while mapped (as for every
                // safetensors model).
                let vb =
                    unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &device) }
                        .map_err(|e| ModelError::candle(&name, &e))?;
                let model = MTModel::new(&config, vb).map_err(|e| ModelError::candle(&name, &e))?;
                Ok(MarianLoop {
                    name,
                    model,
                    config,
                    device,
                })
            }
        };
        let jobs = super::thread::spawn(
            name,
            threads,
            load,
            |mut worker, inbox: mpsc::Receiver<Job>| {
                for (ids, max_new, reply) in inbox {
                    let _ = reply.send(worker.generate(&ids, max_new));
                }
            },
        )?;
        Ok(Self {
            name: name.to_string(),
            jobs,
            tokenizer,
        })
    }

    /// Greedy output ids (without `</s>`) and each chosen token's logit, for input ids; blocks
    /// until the model's thread has run them.
    pub fn generate_ids(&self, input: &[u32], max_new: usize) -> ModelResult<(Vec<u32>, Vec<f32>)> {
        let (reply, answer) = mpsc::channel();
        self.jobs
            .send((input.to_vec(), max_new, reply))
            .map_err(|_| ModelError::WorkerGone(self.name.clone()))?;
        answer
            .recv()
            .map_err(|_| ModelError::WorkerGone(self.name.clone()))?
    }

    /// Translates one text; `target` picks the language of a multilingual model.
    pub fn translate(&self, text: &str, target: &str, max_new: usize) -> ModelResult<String> {
        let tok_err = |e: tokenizers::Error| ModelError::Unsupported {
            model: self.name.clone(),
            problem: format!("tokenizer: {e}"),
        };
        let prefix = format!(">>{target}<<");
        let text = if self.tokenizer.token_to_id(&prefix).is_some() && !text.starts_with(">>") {
            format!("{prefix} {text}")
        } else {
            text.to_string()
        };
        let ids = self
            .tokenizer
            .encode(text, true)
            .map_err(tok_err)?
            .get_ids()
            .to_vec();
        let (out, _) = self.generate_ids(&ids, max_new)?;
        self.tokenizer.decode(&out, true).map_err(tok_err)
    }
}

impl MarianLoop {
    fn generate(&mut self, input: &[u32], max_new: usize) -> ModelResult<(Vec<u32>, Vec<f32>)> {
        let err = |e: candle_core::Error| ModelError::candle(&self.name, &e);
        let model = &mut self.model;
        model.reset_kv_cache();
        // Positions beyond the table do not exist: keep the output inside it.
        let max_new = max_new.min(self.config.max_position_embeddings.saturating_sub(1));
        let ids = Tensor::new(input, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(err)?;
        let encoded = model.encoder().forward(&ids, 0).map_err(err)?;
        let pad = self.config.pad_token_id as usize;
        let eos = self.config.eos_token_id;
        let mut tokens = vec![self.config.decoder_start_token_id];
        let (mut out, mut logits) = (Vec::new(), Vec::new());
        for step in 0..max_new {
            let context = if step == 0 {
                &tokens[..]
            } else {
                &tokens[tokens.len() - 1..]
            };
            let start = tokens.len() - context.len();
            let x = Tensor::new(context, &self.device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(err)?;
            let step_logits = model.decode(&x, &encoded, start).map_err(err)?;
            let last = step_logits
                .squeeze(0)
                .and_then(|l| l.get(context.len() - 1))
                .and_then(|l| l.to_dtype(DType::F32))
                .and_then(|l| l.to_vec1::<f32>())
                .map_err(err)?;
            // Marian never emits <pad> (bad_words_ids [[pad]] in its generation configs).
            let next = last.iter().enumerate().filter(|(i, _)| *i != pad).fold(
                (0usize, f32::NEG_INFINITY),
                |best, (i, &v)| {
                    if v > best.1 { (i, v) } else { best }
                },
            );
            if next.0 as u32 == eos {
                break;
            }
            tokens.push(next.0 as u32);
            out.push(next.0 as u32);
            logits.push(next.1);
        }
        Ok((out, logits))
    }
}
