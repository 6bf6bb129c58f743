//! Marian encoder-decoder translation models (Helsinki-NLP/opus-mt-*) from safetensors
//! folders, with candle-transformers' Marian code: greedy decoding with a KV cache, `<pad>`
//! banned as the models' generation configs do, stopping at `</s>` or the token budget.
//!
//! The folder needs config.json (model_type "marian"), *.safetensors and a tokenizer.json
//! (candle's convert_slow_tokenizer.py makes one from source.spm / target.spm and vocab.json).
//! Multilingual models pick their target with a `>>lang<<` token: when the vocabulary has
//! `>>{target_lang}<<`, it is put before the text.
//!
//! The model lives on its own thread (see [`super::thread`]); requests from every partition
//! queue there and decode together: a padded encoder batch, then greedy steps over all rows
//! still running (see [`super::marian_net`]). Batched output equals one-by-one output.

use std::path::Path;
use std::sync::{Arc, mpsc};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::marian::Config;
use tokenizers::Tokenizer;
use tokio::sync::oneshot;

use super::error::{ModelError, ModelResult};
use super::marian_net::MarianNet;
use super::source::{read_json, safetensors_files};

/// Most sentences decoded together: beyond this, the per-step matmuls are already large and a
/// longer batch only delays its first answers.
const MAX_ROWS: usize = 64;

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
    tokenizer: Arc<Tokenizer>,
}

/// Greedy output ids (without `</s>`) and each chosen token's logit.
pub type Greedy = (Vec<u32>, Vec<f32>);

/// One sentence to translate: input ids, token budget, and where the answer goes.
struct Job {
    ids: Vec<u32>,
    max_new: usize,
    reply: oneshot::Sender<ModelResult<Greedy>>,
}

/// What the worker thread owns.
struct MarianLoop {
    name: String,
    net: MarianNet,
    config: Config,
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
                let net =
                    MarianNet::load(&config, vb).map_err(|e| ModelError::candle(&name, &e))?;
                Ok(MarianLoop { name, net, config })
            }
        };
        let jobs =
            super::thread::spawn(name, threads, load, |worker, inbox: mpsc::Receiver<Job>| {
                while let Ok(first) = inbox.recv() {
                    let mut pending = vec![first];
                    while let Ok(more) = inbox.try_recv() {
                        pending.push(more);
                    }
                    worker.serve(pending);
                }
            })?;
        Ok(Self {
            name: name.to_string(),
            jobs,
            tokenizer: Arc::new(tokenizer),
        })
    }

    /// Queues input ids; the answer comes when the batch it joins is done.
    fn submit(
        &self,
        ids: Vec<u32>,
        max_new: usize,
    ) -> ModelResult<oneshot::Receiver<ModelResult<Greedy>>> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                ids,
                max_new,
                reply,
            })
            .map_err(|_| ModelError::WorkerGone(self.name.clone()))?;
        Ok(answer)
    }

    /// Greedy output for input ids, blocking until the model's thread has run them (for
    /// callers off the async runtime, such as tests).
    pub fn generate_ids(&self, input: &[u32], max_new: usize) -> ModelResult<Greedy> {
        self.submit(input.to_vec(), max_new)?
            .blocking_recv()
            .map_err(|_| ModelError::WorkerGone(self.name.clone()))?
    }

    /// Greedy output for many inputs queued together, so they decode as one batch.
    pub async fn generate_many(
        &self,
        inputs: Vec<Vec<u32>>,
        max_new: usize,
    ) -> ModelResult<Vec<Greedy>> {
        let answers = inputs
            .into_iter()
            .map(|ids| self.submit(ids, max_new))
            .collect::<ModelResult<Vec<_>>>()?;
        let mut out = Vec::with_capacity(answers.len());
        for a in answers {
            out.push(
                a.await
                    .map_err(|_| ModelError::WorkerGone(self.name.clone()))??,
            );
        }
        Ok(out)
    }

    /// Translates texts (None stays None) into `target` (one per text), all in one batch;
    /// `target` picks the language of a multilingual model by its `>>lang<<` token.
    pub async fn translate(
        &self,
        texts: Vec<Option<(String, String)>>,
        max_new: usize,
    ) -> ModelResult<Vec<Option<String>>> {
        let tokenizer = Arc::clone(&self.tokenizer);
        let name = self.name.clone();
        // Tokenizing is CPU work: off the async runtime.
        let ids = tokio::task::spawn_blocking(move || {
            texts
                .into_iter()
                .map(|t| {
                    t.map(|(text, target)| encode(&name, &tokenizer, &text, &target))
                        .transpose()
                })
                .collect::<ModelResult<Vec<_>>>()
        })
        .await
        .map_err(|_| ModelError::WorkerGone(self.name.clone()))??;
        let present: Vec<Vec<u32>> = ids.iter().flatten().cloned().collect();
        let mut outputs = self.generate_many(present, max_new).await?.into_iter();
        let tokenizer = Arc::clone(&self.tokenizer);
        let name = self.name.clone();
        let outputs: Vec<Option<Greedy>> = ids
            .iter()
            .map(|i| i.as_ref().and_then(|_| outputs.next()))
            .collect();
        tokio::task::spawn_blocking(move || {
            outputs
                .into_iter()
                .map(|o| {
                    o.map(|(ids, _)| {
                        tokenizer
                            .decode(&ids, true)
                            .map_err(|e| tokenizer_error(&name, e))
                    })
                    .transpose()
                })
                .collect()
        })
        .await
        .map_err(|_| ModelError::WorkerGone(self.name.clone()))?
    }
}

fn tokenizer_error(model: &str, e: tokenizers::Error) -> ModelError {
    ModelError::Unsupported {
        model: model.to_string(),
        problem: format!("tokenizer: {e}"),
    }
}

/// Input ids for a text, with the `>>lang<<` prefix when the vocabulary has one for `target`.
fn encode(model: &str, tokenizer: &Tokenizer, text: &str, target: &str) -> ModelResult<Vec<u32>> {
    let prefix = format!(">>{target}<<");
    let text = if tokenizer.token_to_id(&prefix).is_some() && !text.starts_with(">>") {
        format!("{prefix} {text}")
    } else {
        text.to_string()
    };
    Ok(tokenizer
        .encode(text, true)
        .map_err(|e| tokenizer_error(model, e))?
        .get_ids()
        .to_vec())
}

impl MarianLoop {
    /// Runs every waiting job, longest inputs first in batches of at most [`MAX_ROWS`].
    fn serve(&self, pending: Vec<Job>) {
        // Jobs whose query was cancelled (nobody waits for the answer) are skipped; inputs the
        // position table cannot hold are answered at once.
        let positions = self.config.max_position_embeddings;
        let mut jobs: Vec<Job> = Vec::with_capacity(pending.len());
        for job in pending {
            if job.reply.is_closed() {
                continue;
            }
            if job.ids.is_empty() || job.ids.len() > positions {
                let _ = job.reply.send(Err(ModelError::Unsupported {
                    model: self.name.clone(),
                    problem: format!(
                        "the text is {} tokens; the model reads 1 to {positions}",
                        job.ids.len()
                    ),
                }));
                continue;
            }
            jobs.push(job);
        }
        jobs.sort_by_key(|j| std::cmp::Reverse(j.ids.len()));
        while !jobs.is_empty() {
            let rest = jobs.split_off(jobs.len().min(MAX_ROWS));
            let batch = std::mem::replace(&mut jobs, rest);
            let inputs: Vec<(&[u32], usize)> =
                batch.iter().map(|j| (&j.ids[..], j.max_new)).collect();
            match self.greedy(&inputs) {
                Ok(outs) => {
                    for (job, out) in batch.into_iter().zip(outs) {
                        let _ = job.reply.send(Ok(out));
                    }
                }
                Err(e) => {
                    let e = ModelError::candle(&self.name, &e);
                    for job in batch {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Greedy decoding of every input together; rows leave the batch as they finish.
    fn greedy(&self, inputs: &[(&[u32], usize)]) -> candle_core::Result<Vec<Greedy>> {
        let pad = self.config.pad_token_id;
        let eos = self.config.eos_token_id;
        // Positions beyond the table do not exist: keep the output inside it.
        let limit = self.config.max_position_embeddings.saturating_sub(1);
        let sentences: Vec<&[u32]> = inputs.iter().map(|i| i.0).collect();
        let mut state = self.net.encode(&sentences, pad)?;
        let mut out: Vec<Greedy> = vec![(Vec::new(), Vec::new()); inputs.len()];
        // Rows still decoding (indices into `inputs`) and their latest token.
        let mut live: Vec<usize> = (0..inputs.len())
            .filter(|&r| inputs[r].1.min(limit) > 0)
            .collect();
        if !live.is_empty() && live.len() < inputs.len() {
            state.retain(&live)?;
        }
        let mut last = vec![self.config.decoder_start_token_id; live.len()];
        let mut step = 0;
        while !live.is_empty() {
            let logits = self.net.step(&mut state, &last)?.to_vec2::<f32>()?;
            step += 1;
            let mut keep = Vec::with_capacity(live.len());
            for (slot, row) in logits.iter().enumerate() {
                let r = live[slot];
                // Marian never emits <pad> (bad_words_ids [[pad]] in its generation configs).
                let (next, logit) = row
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != pad as usize)
                    .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                        if v > best.1 { (i, v) } else { best }
                    });
                if next as u32 == eos {
                    continue;
                }
                out[r].0.push(next as u32);
                out[r].1.push(logit);
                last[slot] = next as u32;
                if step < inputs[r].1.min(limit) {
                    keep.push(slot);
                }
            }
            if keep.len() < live.len() {
                if !keep.is_empty() {
                    state.retain(&keep)?;
                }
                live = keep.iter().map(|&s| live[s]).collect();
                last = keep.iter().map(|&s| last[s]).collect();
            }
        }
        Ok(out)
    }
}
