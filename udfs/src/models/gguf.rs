//! GGUF decoders: a .gguf file alone is a complete model. Its metadata gives the architecture,
//! the tokenizer (GPT-2 style BPE: tokens and merges), BOS / EOS ids and the chat template; a
//! tokenizer.json beside the file wins over the embedded tokenizer.
//!
//! Generation here runs one sequence at a time on the model's worker thread (prefill, then a
//! decode loop with a seeded sampler). Batched decoding across sequences is the next step.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use candle_core::Device;
use candle_core::quantized::gguf_file;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};
use tokio::sync::oneshot;

use super::error::{ModelError, ModelResult};
use super::llama::{Cache, Llama};

/// What a GGUF model's metadata says about text in and out.
#[derive(Debug, Clone)]
pub struct DecoderInfo {
    /// `general.architecture`, e.g. llama.
    pub architecture: String,
    /// Token ids that end a generation.
    pub eos_ids: Vec<u32>,
    /// The BOS token's text, for chat templates.
    pub bos_token: String,
    /// The EOS token's text, for chat templates.
    pub eos_token: String,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// How to sample one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus sampling mass, if any.
    pub top_p: Option<f64>,
    /// Top-k cut-off, if any.
    pub top_k: Option<usize>,
    /// Most new tokens.
    pub max_tokens: usize,
    /// The row's seed (from prompt, sample index and run seed).
    pub seed: u64,
}

enum Job {
    Generate {
        prompt: Vec<u32>,
        samplers: Vec<Sampler>,
        reply: oneshot::Sender<ModelResult<Vec<Vec<u32>>>>,
    },
    Logprob {
        prompt: Vec<u32>,
        response: Vec<u32>,
        reply: oneshot::Sender<ModelResult<f64>>,
    },
}

/// A loaded GGUF decoder: tokenizer and metadata here, weights on a worker thread.
#[derive(Debug)]
pub struct Decoder {
    /// The model's name.
    pub name: String,
    /// Metadata.
    pub info: DecoderInfo,
    /// The tokenizer (from the GGUF file or a tokenizer.json beside it).
    pub tokenizer: Tokenizer,
    tx: mpsc::Sender<Job>,
}

/// The .gguf file of a model path (the file itself, or the one .gguf in a folder).
pub fn gguf_file(model: &str, path: &Path) -> ModelResult<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| ModelError::File {
            model: model.into(),
            path: path.display().to_string(),
            problem: e.to_string(),
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    files.sort();
    match files.len() {
        1 => Ok(files.remove(0)),
        0 => Err(ModelError::File {
            model: model.into(),
            path: path.display().to_string(),
            problem: "no .gguf file".into(),
        }),
        _ => Err(ModelError::File {
            model: model.into(),
            path: path.display().to_string(),
            problem: "several .gguf files: name one in CREATE MODEL".into(),
        }),
    }
}

fn meta_str(ct: &gguf_file::Content, key: &str) -> Option<String> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .cloned()
}

fn meta_u32(ct: &gguf_file::Content, key: &str) -> Option<u32> {
    ct.metadata.get(key).and_then(|v| v.to_u32().ok())
}

/// Builds the tokenizer a GGUF file describes (GPT-2 style byte-level BPE).
fn embedded_tokenizer(model: &str, ct: &gguf_file::Content) -> ModelResult<Tokenizer> {
    let bad = |problem: String| ModelError::Unsupported {
        model: model.into(),
        problem,
    };
    let kind = meta_str(ct, "tokenizer.ggml.model").unwrap_or_default();
    if kind != "gpt2" {
        return Err(bad(format!(
            "GGUF tokenizer '{kind}' is not supported yet (gpt2 BPE is); put a tokenizer.json beside the file"
        )));
    }
    let list = |key: &str| -> ModelResult<Vec<String>> {
        ct.metadata
            .get(key)
            .and_then(|v| v.to_vec().ok())
            .ok_or_else(|| bad(format!("GGUF metadata has no {key}")))?
            .iter()
            .map(|v| v.to_string().cloned().map_err(|e| bad(e.to_string())))
            .collect()
    };
    let tokens = list("tokenizer.ggml.tokens")?;
    let merges = list("tokenizer.ggml.merges")?;
    let types: Vec<i32> = ct
        .metadata
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.iter().map(|t| t.to_i32().unwrap_or(1)).collect())
        .unwrap_or_default();
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .filter_map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| bad(format!("GGUF tokenizer: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    // llama.cpp's "smollm" pre-tokenizer is Hugging Face's: single digits, then byte-level.
    if meta_str(ct, "tokenizer.ggml.pre").as_deref() == Some("smollm") {
        tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            byte_level.into(),
        ])));
    } else {
        tokenizer.with_pre_tokenizer(Some(byte_level));
    }
    tokenizer.with_decoder(Some(ByteLevel::default()));
    // Control tokens (type 3) such as <|im_start|> are matched whole, never split.
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter())
        .filter(|(_, t)| **t == 3)
        .map(|(tok, _)| AddedToken::from(tok.clone(), true))
        .collect();
    let _added = tokenizer.add_special_tokens(specials);
    Ok(tokenizer)
}

/// Reads a GGUF file's metadata (not its weights): the tokenizer and what generation needs.
pub fn read_metadata(
    model: &str,
    path: &Path,
) -> ModelResult<(gguf_file::Content, std::fs::File, Tokenizer, DecoderInfo)> {
    let file = gguf_file(model, path)?;
    let io = |e: std::io::Error| ModelError::File {
        model: model.into(),
        path: file.display().to_string(),
        problem: e.to_string(),
    };
    let mut reader = std::fs::File::open(&file).map_err(io)?;
    let ct = gguf_file::Content::read(&mut reader).map_err(|e| ModelError::File {
        model: model.into(),
        path: file.display().to_string(),
        problem: format!("not a readable GGUF file: {e}"),
    })?;
    let architecture = meta_str(&ct, "general.architecture").unwrap_or_default();
    if architecture != "llama" {
        return Err(ModelError::Unsupported {
            model: model.into(),
            problem: format!("GGUF architecture '{architecture}' cannot generate yet (llama can)"),
        });
    }
    let beside = file.with_file_name("tokenizer.json");
    let tokenizer = if beside.exists() {
        Tokenizer::from_file(&beside).map_err(|e| ModelError::File {
            model: model.into(),
            path: beside.display().to_string(),
            problem: e.to_string(),
        })?
    } else {
        embedded_tokenizer(model, &ct)?
    };
    let token_text = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or_default()
    };
    let eos = meta_u32(&ct, "tokenizer.ggml.eos_token_id");
    let mut eos_ids: Vec<u32> = eos.into_iter().collect();
    // Chat models end a turn with <|im_end|> / <end_of_turn> even where EOS is another token.
    for end in ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"] {
        if let Some(id) = tokenizer.token_to_id(end)
            && !eos_ids.contains(&id)
        {
            eos_ids.push(id);
        }
    }
    let info = DecoderInfo {
        architecture,
        eos_ids,
        bos_token: token_text(meta_u32(&ct, "tokenizer.ggml.bos_token_id")),
        eos_token: token_text(eos),
        chat_template: meta_str(&ct, "tokenizer.chat_template"),
    };
    Ok((ct, reader, tokenizer, info))
}

impl Decoder {
    /// Reads the GGUF file, builds the tokenizer and starts the worker thread with the weights.
    pub fn load(
        model: &str,
        path: &Path,
        device: Device,
        threads: usize,
        dequantize: bool,
    ) -> ModelResult<Self> {
        let (ct, mut reader, tokenizer, info) = read_metadata(model, path)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<ModelResult<()>>();
        let name = model.to_string();
        let stop_ids = info.eos_ids.clone();
        let mut pool = rayon::ThreadPoolBuilder::new();
        if threads > 0 {
            pool = pool.num_threads(threads);
        }
        let pool = pool.build().map_err(|e| ModelError::Unsupported {
            model: model.into(),
            problem: e.to_string(),
        })?;
        std::thread::Builder::new()
            .name(format!("prefflow-model-{model}"))
            .spawn(move || {
                let weights = pool.install(|| Llama::load(&ct, &mut reader, &device, dequantize));
                let weights = match weights {
                    Ok(w) => {
                        let _ = ready_tx.send(Ok(()));
                        w
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(ModelError::candle(&name, &e)));
                        return;
                    }
                };
                let fail = |e: candle_core::Error| ModelError::candle(&name, &e);
                while let Ok(job) = rx.recv() {
                    // A receiver that gave up (cancelled query) is not an error here.
                    match job {
                        Job::Generate {
                            prompt,
                            samplers,
                            reply,
                        } => {
                            let out =
                                pool.install(|| generate(&weights, &prompt, &samplers, &stop_ids));
                            let _ = reply.send(out.map_err(fail));
                        }
                        Job::Logprob {
                            prompt,
                            response,
                            reply,
                        } => {
                            let out = pool.install(|| logprob(&weights, &prompt, &response));
                            let _ = reply.send(out.map_err(fail));
                        }
                    }
                }
            })
            .map_err(|e| ModelError::Unsupported {
                model: model.into(),
                problem: e.to_string(),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                name: model.to_string(),
                info,
                tokenizer,
                tx,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ModelError::WorkerGone(model.to_string())),
        }
    }

    /// New token ids after `prompt` (ids), one sequence per sampler; the samples share one
    /// prefill. Each stops at an end-of-turn token or its `max_tokens`.
    pub async fn generate(
        &self,
        prompt: Vec<u32>,
        samplers: Vec<Sampler>,
    ) -> ModelResult<Vec<Vec<u32>>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Generate {
                prompt,
                samplers,
                reply,
            })
            .map_err(|_| ModelError::WorkerGone(self.name.clone()))?;
        rx.await
            .map_err(|_| ModelError::WorkerGone(self.name.clone()))?
    }

    /// The sum of the log-probabilities of `response` tokens following `prompt` tokens.
    pub async fn logprob(&self, prompt: Vec<u32>, response: Vec<u32>) -> ModelResult<f64> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Logprob {
                prompt,
                response,
                reply,
            })
            .map_err(|_| ModelError::WorkerGone(self.name.clone()))?;
        rx.await
            .map_err(|_| ModelError::WorkerGone(self.name.clone()))?
    }
}

fn sampling(s: &Sampler) -> Sampling {
    if s.temperature <= 0.0 {
        return Sampling::ArgMax;
    }
    let temperature = s.temperature;
    match (s.top_k, s.top_p) {
        (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
        (Some(k), None) => Sampling::TopK { k, temperature },
        (None, Some(p)) => Sampling::TopP { p, temperature },
        (None, None) => Sampling::All { temperature },
    }
}

fn generate(
    model: &Llama,
    prompt: &[u32],
    samplers: &[Sampler],
    stop_ids: &[u32],
) -> candle_core::Result<Vec<Vec<u32>>> {
    if prompt.is_empty() {
        candle_core::bail!("the prompt has no tokens");
    }
    // One prefill; each sample continues from a copy of its KV cache (tensors are shared,
    // not copied, until a sample appends to them).
    let mut prefilled = Cache::default();
    let first = model
        .forward(prompt, 0, &mut prefilled)?
        .get(prompt.len() - 1)?;
    let mut samples = Vec::with_capacity(samplers.len());
    for s in samplers {
        let mut sampler = LogitsProcessor::from_sampling(s.seed, sampling(s));
        let mut cache = prefilled.clone();
        let mut logits = first.clone();
        let mut out = Vec::new();
        for _ in 0..s.max_tokens {
            let next = sampler.sample(&logits)?;
            if stop_ids.contains(&next) {
                break;
            }
            out.push(next);
            logits = model
                .forward(&[next], prompt.len() + out.len() - 1, &mut cache)?
                .get(0)?;
        }
        samples.push(out);
    }
    Ok(samples)
}

fn logprob(model: &Llama, prompt: &[u32], response: &[u32]) -> candle_core::Result<f64> {
    if prompt.is_empty() {
        candle_core::bail!("the prompt has no tokens");
    }
    if response.is_empty() {
        return Ok(0.0);
    }
    let ids: Vec<u32> = prompt.iter().chain(response).copied().collect();
    let logits = model.forward(&ids, 0, &mut Cache::default())?;
    // Row p-1+i predicts response token i.
    let rows = logits.narrow(0, prompt.len() - 1, response.len())?;
    let lp = super::llama::token_logprobs(&rows, response)?;
    Ok(lp.iter().map(|&x| x as f64).sum())
}
