//! The decoder runtime: one worker thread per loaded decoder, continuous batching.
//!
//! Every partition's calls send jobs to the worker. The worker keeps a set of running
//! sequences (up to `prefflow.decode_batch`); each step samples one token for every running
//! sequence and runs them through the model together, so the weights are read once per step for
//! the whole batch. A waiting job joins as soon as a slot frees: its prompt is prefilled and its
//! samples enter the next step. The n samples of one prompt share that prefill (their caches are
//! forked from it). Output does not depend on the batch: each sample has its own seeded sampler
//! and its own cache, and attention runs per sequence.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, mpsc};

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use tokenizers::Tokenizer;
use tokio::sync::oneshot;

use super::error::{ModelError, ModelResult};
use super::source::{read_json, safetensors_files};
use super::transformer::{Cache, Config, Matrices, Step, Transformer, Weights, read_safetensors};
pub use super::types::DecoderInfo;

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
    /// Stop strings and the call's token counter, watched while decoding.
    pub watch: Watch,
}

/// What a sample watches while it decodes: its stop strings (decoding stops as soon as one
/// appears, not at max_tokens) and the call's counters (tokens counted as they are produced,
/// so progress moves during a long decode).
#[derive(Clone, Default)]
pub struct Watch {
    /// Stop strings (none empty).
    pub stop: Vec<String>,
    /// Decodes the tail of a sample to look for a stop string.
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// The call whose output_tokens grow with each new token.
    pub counter: Option<Arc<crate::call_stats::CallStats>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("stop", &self.stop).finish()
    }
}

impl PartialEq for Watch {
    fn eq(&self, other: &Self) -> bool {
        self.stop == other.stop
    }
}

impl Watch {
    /// Whether `out`'s text now holds a stop string; only its last tokens are decoded (enough
    /// for the longest stop string), so a check costs the same at any length.
    fn stopped(&self, out: &[u32]) -> bool {
        let (Some(tokenizer), false) = (&self.tokenizer, self.stop.is_empty()) else {
            return false;
        };
        let longest = self.stop.iter().map(|s| s.len()).max().unwrap_or(0);
        let tail = &out[out.len().saturating_sub(longest + 8)..];
        tokenizer
            .decode(tail, true)
            .is_ok_and(|text| self.stop.iter().any(|s| text.contains(s.as_str())))
    }
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

/// Most prompt tokens prefilled in one forward pass.
const PREFILL_TOKENS: usize = 4096;

/// A loaded decoder: tokenizer and metadata here, weights on a worker thread.
#[derive(Debug)]
pub struct Decoder {
    /// The model's name.
    pub name: String,
    /// Metadata.
    pub info: DecoderInfo,
    /// The tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    tx: mpsc::Sender<Job>,
}

/// How to load a decoder's weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// What GGUF matrices become.
    pub matrices: Matrices,
    /// Threads for the model's math (0: one per core).
    pub threads: usize,
    /// Most sequences decoded together.
    pub batch: usize,
}

/// Reads a safetensors decoder folder's metadata: config.json, tokenizer.json, the chat template
/// and special tokens (tokenizer_config.json), stop tokens (generation_config.json).
pub fn read_folder_metadata(model: &str, dir: &Path) -> ModelResult<(Tokenizer, DecoderInfo)> {
    let config = read_json(model, &dir.join("config.json"))?;
    let file = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&file).map_err(|e| ModelError::File {
        model: model.into(),
        path: file.display().to_string(),
        problem: e.to_string(),
    })?;
    let optional = |name: &str| -> ModelResult<serde_json::Value> {
        let p = dir.join(name);
        if p.exists() {
            read_json(model, &p)
        } else {
            Ok(serde_json::Value::Null)
        }
    };
    let tok_config = optional("tokenizer_config.json")?;
    let generation = optional("generation_config.json")?;
    // Special tokens are strings or {"content": ...} objects.
    let token_str = |v: &serde_json::Value| {
        v.as_str()
            .or_else(|| v["content"].as_str())
            .map(str::to_string)
    };
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        match v {
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect(),
            other => other.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        }
    };
    let eos_token = token_str(&tok_config["eos_token"]).unwrap_or_default();
    let bos_token = token_str(&tok_config["bos_token"]).unwrap_or_default();
    let mut eos_ids = ids(&generation["eos_token_id"]);
    for id in ids(&config["eos_token_id"])
        .into_iter()
        .chain(tokenizer.token_to_id(&eos_token))
    {
        if !eos_ids.contains(&id) {
            eos_ids.push(id);
        }
    }
    let chat_template = super::source::chat_template(dir, &tok_config);
    let add_bos = if tok_config["add_bos_token"].as_bool() == Some(true) {
        tokenizer.token_to_id(&bos_token)
    } else {
        None
    };
    let info = DecoderInfo {
        architecture: config["model_type"].as_str().unwrap_or("").to_string(),
        eos_ids,
        bos_token,
        eos_token,
        chat_template,
        add_bos,
        // The model's reach, RoPE scaling included (dynamic NTK extends max_position_embeddings).
        context: Config::from_json(&config).map_or_else(
            |_| config["max_position_embeddings"].as_u64().unwrap_or(4096) as usize,
            |c| c.context,
        ),
    };
    Ok((tokenizer, info))
}

impl Decoder {
    /// Reads the model's files (`gguf`, or the safetensors folder `path` where there is none),
    /// builds the tokenizer and starts the worker thread with the weights.
    pub fn load(
        model: &str,
        path: &Path,
        gguf: Option<&Path>,
        device: Device,
        options: LoadOptions,
    ) -> ModelResult<Self> {
        let (tokenizer, info, source) = match gguf {
            Some(file) => {
                let m = super::gguf::read_metadata(model, file)?;
                (m.tokenizer, m.info, Source::Gguf(m.content, m.reader))
            }
            None => {
                let (tokenizer, info) = read_folder_metadata(model, path)?;
                let config = read_json(model, &path.join("config.json"))?;
                let files = safetensors_files(model, path)?;
                (tokenizer, info, Source::Folder(config, files))
            }
        };
        let name = model.to_string();
        let stop_ids = info.eos_ids.clone();
        let batch = options.batch.max(1);
        let load = {
            let name = name.clone();
            move || {
                source
                    .load(&device, options.matrices)
                    .map_err(|e| ModelError::candle(&name, &e))
            }
        };
        let tx = super::thread::spawn(model, options.threads, load, move |weights, rx| {
            let mut worker = DecodeLoop {
                model: weights,
                name,
                stop_ids,
                batch,
                running: Vec::new(),
                groups: Vec::new(),
            };
            worker.run(rx);
        })?;
        Ok(Self {
            name: model.to_string(),
            info,
            tokenizer: Arc::new(tokenizer),
            tx,
        })
    }

    /// New token ids after `prompt` (ids), one sequence per sampler; the samples share one
    /// prefill. Each stops at an end-of-turn token or its `max_tokens`. The job reaches the
    /// worker when this is called, not when the future is first polled, so a caller can queue
    /// many rows before awaiting any.
    pub fn generate(
        &self,
        prompt: Vec<u32>,
        samplers: Vec<Sampler>,
    ) -> impl Future<Output = ModelResult<Vec<Vec<u32>>>> + use<> {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .tx
            .send(Job::Generate {
                prompt,
                samplers,
                reply,
            })
            .map_err(|_| ModelError::WorkerGone(self.name.clone()));
        let name = self.name.clone();
        async move {
            sent?;
            rx.await.map_err(|_| ModelError::WorkerGone(name))?
        }
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

enum Source {
    Gguf(candle_core::quantized::gguf_file::Content, std::fs::File),
    Folder(serde_json::Value, Vec<std::path::PathBuf>),
}

impl Source {
    fn load(self, device: &Device, matrices: Matrices) -> candle_core::Result<Transformer> {
        match self {
            Source::Gguf(content, mut reader) => {
                let config = Config::from_gguf(&content)?;
                let weights = Weights::Gguf {
                    content: &content,
                    reader: &mut reader,
                    matrices,
                };
                Transformer::load(config, weights, device)
            }
            Source::Folder(json, files) => {
                let config = Config::from_json(&json)?;
                let weights: Weights<'_, std::fs::File> =
                    Weights::Safetensors(read_safetensors(&files, device)?);
                Transformer::load(config, weights, device)
            }
        }
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

/// The samples of one job, filled as its sequences finish.
struct Group {
    reply: Option<oneshot::Sender<ModelResult<Vec<Vec<u32>>>>>,
    samples: Vec<Vec<u32>>,
    left: usize,
}

/// One running sample.
struct Sequence {
    group: usize,
    index: usize,
    cache: Cache,
    sampler: LogitsProcessor,
    logits: candle_core::Tensor,
    out: Vec<u32>,
    max_tokens: usize,
    watch: Watch,
    /// The prompt, kept where the model re-encodes a sequence that outgrows its original
    /// context (see [`Transformer::reencodes_at`]).
    prompt: Option<Arc<Vec<u32>>>,
}

struct DecodeLoop {
    model: Transformer,
    name: String,
    stop_ids: Vec<u32>,
    batch: usize,
    running: Vec<Sequence>,
    groups: Vec<Option<Group>>,
}

impl DecodeLoop {
    fn run(&mut self, rx: mpsc::Receiver<Job>) {
        let mut waiting: VecDeque<Job> = VecDeque::new();
        loop {
            if self.running.is_empty() && waiting.is_empty() {
                match rx.recv() {
                    Ok(job) => waiting.push_back(job),
                    Err(_) => return, // every Decoder handle is gone
                }
            }
            waiting.extend(rx.try_iter());
            // Admit while slots are free; the new prompts are prefilled in one forward pass
            // (up to PREFILL_TOKENS tokens), so their matrix products share one read of the
            // weights.
            let mut admitted = Vec::new();
            let (mut slots, mut tokens) = (self.running.len(), 0);
            while slots < self.batch
                && let Some(job) = waiting.pop_front()
            {
                match job {
                    Job::Generate {
                        ref prompt,
                        ref samplers,
                        ..
                    } => {
                        if !admitted.is_empty() && tokens + prompt.len() > PREFILL_TOKENS {
                            waiting.push_front(job);
                            break;
                        }
                        slots += samplers.len();
                        tokens += prompt.len();
                        admitted.push(job);
                    }
                    logprob => self.admit(logprob, None),
                }
            }
            let prefilled = self.prefill_many(&admitted);
            for (job, p) in admitted.into_iter().zip(prefilled) {
                self.admit(job, p);
            }
            self.step();
        }
    }

    fn fail(&self, e: &candle_core::Error) -> ModelError {
        ModelError::candle(&self.name, e)
    }

    /// Prefills the prompts of generation jobs together; None for all if that failed (each
    /// job is then prefilled alone, so an error is answered to its own row).
    fn prefill_many(&self, jobs: &[Job]) -> Vec<Option<(Cache, candle_core::Tensor)>> {
        let prompts: Vec<&[u32]> = jobs
            .iter()
            .map(|j| match j {
                Job::Generate { prompt, .. } => prompt.as_slice(),
                Job::Logprob { prompt, .. } => prompt.as_slice(),
            })
            .collect();
        match self.prefill(&prompts) {
            Ok(v) => v.into_iter().map(Some).collect(),
            _ => prompts.iter().map(|_| None).collect(),
        }
    }

    /// One forward pass over `prompts`: each prompt's cache and the logits of its first new
    /// token.
    fn prefill(
        &self,
        prompts: &[&[u32]],
    ) -> candle_core::Result<Vec<(Cache, candle_core::Tensor)>> {
        if prompts.iter().any(|p| p.is_empty()) {
            candle_core::bail!("the prompt has no tokens");
        }
        let mut caches: Vec<Cache> = prompts.iter().map(|_| Cache::default()).collect();
        let mut steps: Vec<Step<'_>> = prompts
            .iter()
            .zip(caches.iter_mut())
            .map(|(p, cache)| Step { ids: p, cache })
            .collect();
        let hidden = self.model.forward(&mut steps)?;
        // The last row of each prompt predicts its first new token.
        let mut end = 0u32;
        let last: Vec<u32> = prompts
            .iter()
            .map(|p| {
                end += p.len() as u32;
                end - 1
            })
            .collect();
        let rows = Tensor::new(last.as_slice(), hidden.device())?;
        let logits = self.model.logits(&hidden.index_select(&rows, 0)?)?;
        caches
            .into_iter()
            .enumerate()
            .map(|(i, c)| Ok((c, logits.get(i)?)))
            .collect()
    }

    /// Starts a job: a log-probability is answered at once; a generation is prefilled (unless
    /// `prefilled` already holds its cache and first logits) and its samples join the running
    /// set.
    fn admit(&mut self, job: Job, prefilled: Option<(Cache, candle_core::Tensor)>) {
        match job {
            Job::Logprob {
                prompt,
                response,
                reply,
            } => {
                // A receiver that gave up (cancelled query) is not an error here.
                let out = self.logprob(&prompt, &response).map_err(|e| self.fail(&e));
                let _ = reply.send(out);
            }
            Job::Generate {
                prompt,
                samplers,
                reply,
            } => {
                let (cache, logits) = match prefilled
                    .map_or_else(|| self.prefill(&[&prompt]).map(|mut v| v.remove(0)), Ok)
                {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = reply.send(Err(self.fail(&e)));
                        return;
                    }
                };
                let room = self.model.config().context.saturating_sub(prompt.len());
                let group = self
                    .groups
                    .iter()
                    .position(Option::is_none)
                    .unwrap_or_else(|| {
                        self.groups.push(None);
                        self.groups.len() - 1
                    });
                self.groups[group] = Some(Group {
                    reply: Some(reply),
                    samples: vec![Vec::new(); samplers.len()],
                    left: samplers.len(),
                });
                let last = samplers.len().saturating_sub(1);
                let kept = self.model.reencodes_at().map(|_| Arc::new(prompt.clone()));
                let mut cache = Some(cache);
                for (index, s) in samplers.into_iter().enumerate() {
                    let own = if index == last {
                        cache.take().expect("the last sample takes the prefill")
                    } else {
                        match cache
                            .as_ref()
                            .expect("prefill kept until the last sample")
                            .fork()
                        {
                            Ok(c) => c,
                            Err(e) => {
                                self.abort(group, &e);
                                return;
                            }
                        }
                    };
                    self.running.push(Sequence {
                        group,
                        index,
                        cache: own,
                        sampler: LogitsProcessor::from_sampling(s.seed, sampling(&s)),
                        logits: logits.clone(),
                        out: Vec::new(),
                        max_tokens: s.max_tokens.min(room),
                        watch: s.watch.clone(),
                        prompt: kept.clone(),
                    });
                }
                self.finish_empty(group);
            }
        }
    }

    /// A group with no samples (n = 0 never reaches here, but be safe) is answered now.
    fn finish_empty(&mut self, group: usize) {
        if let Some(g) = &mut self.groups[group]
            && g.left == 0
        {
            if let Some(r) = g.reply.take() {
                let _ = r.send(Ok(Vec::new()));
            }
            self.groups[group] = None;
        }
    }

    fn logprob(&self, prompt: &[u32], response: &[u32]) -> candle_core::Result<f64> {
        if prompt.is_empty() {
            candle_core::bail!("the prompt has no tokens");
        }
        if response.is_empty() {
            return Ok(0.0);
        }
        let ids: Vec<u32> = prompt.iter().chain(response).copied().collect();
        let mut cache = Cache::default();
        let hidden = self.model.forward(&mut [Step {
            ids: &ids,
            cache: &mut cache,
        }])?;
        // Row p-1+i predicts response token i.
        let rows = hidden.narrow(0, prompt.len() - 1, response.len())?;
        let logits = self.model.logits(&rows)?;
        let lp = super::transformer::token_logprobs(&logits, response)?;
        Ok(lp.iter().map(|&x| x as f64).sum())
    }

    /// Drops every running sample of `group` and answers it with `e`.
    fn abort(&mut self, group: usize, e: &candle_core::Error) {
        self.running.retain(|s| s.group != group);
        if let Some(mut g) = self.groups[group].take()
            && let Some(r) = g.reply.take()
        {
            let _ = r.send(Err(ModelError::candle(&self.name, e)));
        }
    }

    /// Files a finished sample with its group, answering the group when it is complete.
    fn file(&mut self, s: Sequence) {
        if let Some(g) = &mut self.groups[s.group] {
            g.samples[s.index] = s.out;
            g.left -= 1;
            if g.left == 0 {
                if let Some(r) = g.reply.take() {
                    let _ = r.send(Ok(std::mem::take(&mut g.samples)));
                }
                self.groups[s.group] = None;
            }
        }
    }

    /// One token for every running sample, then one batched forward pass for those that go on.
    fn step(&mut self) {
        // Samples whose query was cancelled stop here.
        let cancelled: Vec<usize> = self
            .running
            .iter()
            .map(|s| s.group)
            .filter(|&g| {
                self.groups[g]
                    .as_ref()
                    .and_then(|g| g.reply.as_ref())
                    .is_none_or(|r| r.is_closed())
            })
            .collect();
        for g in cancelled {
            self.running.retain(|s| s.group != g);
            self.groups[g] = None;
        }
        // Sample every running sequence; a sampler error fails its whole group.
        let mut decisions = Vec::with_capacity(self.running.len());
        let mut failed = Vec::new();
        for s in &mut self.running {
            if s.out.len() >= s.max_tokens {
                decisions.push(None);
                continue;
            }
            match s.sampler.sample(&s.logits) {
                Ok(t) if self.stop_ids.contains(&t) => decisions.push(None),
                Ok(t) => {
                    s.out.push(t);
                    if let Some(c) = &s.watch.counter {
                        c.output_tokens
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    let more = s.out.len() < s.max_tokens && !s.watch.stopped(&s.out);
                    decisions.push(more.then_some(t));
                }
                Err(e) => {
                    decisions.push(None);
                    failed.push((s.group, e));
                }
            }
        }
        let running = std::mem::take(&mut self.running);
        let mut tokens = Vec::with_capacity(running.len());
        for (s, decision) in running.into_iter().zip(decisions) {
            if failed.iter().any(|(g, _)| *g == s.group) {
                continue;
            }
            match decision {
                Some(t) => {
                    tokens.push(t);
                    self.running.push(s);
                }
                None => self.file(s),
            }
        }
        for (g, e) in failed {
            self.abort(g, &e);
        }
        if self.running.is_empty() {
            return;
        }
        // A sequence reaching the length from which the model rotates differently (Phi-3's
        // LongRoPE) is encoded again whole, as transformers' Phi-3 generate does.
        let reencode = self.model.reencodes_at();
        let mut whole: Vec<Option<Vec<u32>>> = Vec::with_capacity(self.running.len());
        for s in &mut self.running {
            match (&s.prompt, reencode) {
                (Some(prompt), Some(at)) if s.cache.len() == at => {
                    s.cache = Cache::default();
                    whole.push(Some(prompt.iter().chain(&s.out).copied().collect()));
                }
                _ => whole.push(None),
            }
        }
        let result = {
            let mut steps: Vec<Step<'_>> = self
                .running
                .iter_mut()
                .zip(&tokens)
                .zip(&whole)
                .map(|((s, t), w)| Step {
                    ids: w.as_deref().unwrap_or(std::slice::from_ref(t)),
                    cache: &mut s.cache,
                })
                .collect();
            let lengths: Vec<usize> = steps.iter().map(|s| s.ids.len()).collect();
            self.model.forward(&mut steps).and_then(|h| {
                if lengths.iter().all(|&n| n == 1) {
                    return self.model.logits(&h);
                }
                // Each step's last row predicts its next token.
                let mut end = 0u32;
                let last: Vec<u32> = lengths
                    .iter()
                    .map(|&n| {
                        end += n as u32;
                        end - 1
                    })
                    .collect();
                let rows = Tensor::new(last.as_slice(), h.device())?;
                self.model.logits(&h.index_select(&rows, 0)?)
            })
        };
        match result {
            Ok(logits) => {
                for (r, s) in self.running.iter_mut().enumerate() {
                    match logits.get(r) {
                        Ok(l) => s.logits = l,
                        Err(e) => {
                            let g = s.group;
                            let e = e.to_string();
                            let err = candle_core::Error::Msg(e);
                            self.abort(g, &err);
                            return;
                        }
                    }
                }
            }
            Err(e) => {
                let groups: Vec<usize> = self.running.iter().map(|s| s.group).collect();
                for g in groups {
                    if self.groups[g].is_some() {
                        self.abort(g, &e);
                    }
                }
            }
        }
    }
}
