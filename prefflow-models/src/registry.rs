//! Declared models (CREATE MODEL) and loaded ones. A session has one registry; every SQL
//! function and query shares the models it has loaded.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use candle_core::Device;
use tokenizers::Tokenizer;

use super::bert::Bert;
use super::decode::{Decoder, DecoderInfo, LoadOptions};
use super::encode::{Backend, EncoderWorker};
use super::error::{ModelError, ModelResult};
use super::identity::{FileMemo, model_identity};
pub use super::model::{Capability, LoadedModel, Model, ModelKind};
use super::qwen2::Qwen2Classifier;
use super::remote::{REMOTE_OPTIONS, RemoteModel, is_remote};
use super::settings::PrefflowOptions;
use super::source::{check_weights, read_json, resolve, validate};
use super::transformer::Matrices;
pub use super::types::{ModelInfo, ModelSpec, Pooling};
use crate::call_stats::Activity;
use crate::result_key::{Key, ResultStore};

impl ModelInfo {
    /// Reads config.json and the sentence-transformers files of a model folder.
    pub fn read(model: &str, dir: &Path) -> ModelResult<Self> {
        let gguf_only = dir.is_file() || !dir.join("config.json").exists();
        if gguf_only {
            return Err(ModelError::Unsupported {
                model: model.to_string(),
                problem: "GGUF models are decoders; this function needs an encoder or a classifier folder".to_string(),
            });
        }
        let config = read_json(model, &dir.join("config.json"))?;
        let architecture = config["architectures"][0]
            .as_str()
            .unwrap_or("")
            .to_string();
        let model_type = config["model_type"].as_str().unwrap_or("").to_string();
        let hidden_size = config["hidden_size"]
            .as_u64()
            .or_else(|| config["d_model"].as_u64())
            .ok_or_else(|| ModelError::File {
                model: model.to_string(),
                path: dir.join("config.json").display().to_string(),
                problem: "no hidden_size".to_string(),
            })? as usize;
        let mut labels: Vec<(usize, String)> = config["id2label"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        labels.sort();
        let mut labels: Vec<String> = labels.into_iter().map(|(_, v)| v).collect();
        if let Some(n) = config["num_labels"].as_u64()
            && labels.len() != n as usize
        {
            labels = (0..n).map(|i| format!("LABEL_{i}")).collect();
        }
        let st_config = dir.join("sentence_bert_config.json");
        let max_seq_length = if st_config.exists() {
            read_json(model, &st_config)?["max_seq_length"].as_u64()
        } else {
            None
        }
        .or_else(|| config["max_position_embeddings"].as_u64())
        .unwrap_or(512) as usize;
        let pooling_file = dir.join("1_Pooling/config.json");
        let pooling = if pooling_file.exists() {
            let p = read_json(model, &pooling_file)?;
            if p["pooling_mode_cls_token"].as_bool() == Some(true) {
                Pooling::Cls
            } else if p["pooling_mode_max_tokens"].as_bool() == Some(true) {
                Pooling::Max
            } else {
                Pooling::Mean
            }
        } else {
            Pooling::Cls
        };
        let modules = dir.join("modules.json");
        let normalize = modules.exists()
            && read_json(model, &modules)?.as_array().is_some_and(|m| {
                m.iter()
                    .any(|x| x["type"].as_str().is_some_and(|t| t.ends_with("Normalize")))
            });
        let tok_config = dir.join("tokenizer_config.json");
        let tok_config = if tok_config.exists() {
            read_json(model, &tok_config)?
        } else {
            serde_json::Value::Null
        };
        let chat_template = super::source::chat_template(dir, &tok_config);
        let special = |key: &str| {
            let v = &tok_config[key];
            v.as_str()
                .or_else(|| v["content"].as_str())
                .unwrap_or_default()
                .to_string()
        };
        Ok(Self {
            bos_token: special("bos_token"),
            eos_token: special("eos_token"),
            architecture,
            model_type,
            hidden_size,
            labels,
            max_seq_length,
            pooling,
            normalize,
            chat_template,
            pad_token_id: config["pad_token_id"].as_u64().map(|v| v as u32),
        })
    }

    /// True for decoder classifiers, whose inputs are chat-templated conversations.
    pub fn is_decoder(&self) -> bool {
        !matches!(
            self.model_type.as_str(),
            "bert" | "roberta" | "xlm-roberta" | "distilbert" | ""
        ) && !self.architecture.starts_with("Bert")
    }
}

/// A loaded local model, of whichever runtime runs it.
#[derive(Debug, Clone)]
enum Loaded {
    Encoder(Arc<LoadedModel>),
    Decoder(Arc<Decoder>),
    Marian(Arc<super::marian::Marian>),
}

/// The once-only load of one model (see [`ModelRegistry::slot`]).
type LoadSlot = Arc<tokio::sync::OnceCell<Loaded>>;

/// The models of one session.
#[derive(Debug, Default)]
pub struct ModelRegistry {
    declared: RwLock<BTreeMap<String, ModelSpec>>,
    /// Every runtime's loads, one slot per runtime, file, options, device and threads.
    slots: Mutex<HashMap<String, LoadSlot>>,
    tokenizers: Mutex<HashMap<(PathBuf, Option<usize>), Arc<Tokenizer>>>,
    infos: Mutex<HashMap<PathBuf, ModelInfo>>,
    decoder_infos: Mutex<HashMap<PathBuf, DecoderInfo>>,
    remotes: Mutex<HashMap<String, Arc<RemoteModel>>>,
    result_store: RwLock<Option<Arc<dyn ResultStore>>>,
    file_hashes: FileMemo,
    activity: Arc<Activity>,
}

/// Option keys CREATE MODEL accepts; anything else is a typo worth an error.
pub const MODEL_OPTIONS: [&str; 4] = ["dtype", "label", "chat_template", "revision"];

impl ModelRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// CREATE [OR REPLACE] MODEL name FROM 'uri' OPTIONS (...): fetches hf:// models and
    /// checks the files are there, so a bad model fails here rather than mid-query.
    pub async fn declare(
        &self,
        name: &str,
        uri: &str,
        options: BTreeMap<String, String>,
        replace: bool,
        if_not_exists: bool,
    ) -> ModelResult<()> {
        let exists = self
            .declared
            .read()
            .expect("registry lock")
            .contains_key(name);
        if exists && if_not_exists {
            return Ok(());
        }
        if exists && !replace {
            return Err(ModelError::Declaration(format!(
                "model '{name}' already exists: use CREATE OR REPLACE MODEL"
            )));
        }
        let remote = is_remote(uri);
        let known: Vec<&str> = if remote {
            // Remote models: the server has the weights; revision busts the result cache.
            let mut k = vec!["revision"];
            k.extend(REMOTE_OPTIONS);
            k
        } else {
            MODEL_OPTIONS.to_vec()
        };
        if let Some(bad) = options.keys().find(|k| !known.contains(&k.as_str())) {
            let hint = if REMOTE_OPTIONS.contains(&bad.as_str()) {
                " (it applies to remote openai:// models)"
            } else {
                ""
            };
            return Err(ModelError::Declaration(format!(
                "CREATE MODEL {name}: unknown option '{bad}'{hint} (known: {})",
                known.join(", ")
            )));
        }
        let path = if remote {
            PathBuf::new()
        } else {
            let path = resolve(name, uri).await?;
            validate(name, &path)?;
            one_gguf(name, &path)?;
            let (model, p) = (name.to_string(), path.clone());
            tokio::task::spawn_blocking(move || check_weights(&model, &p))
                .await
                .map_err(|_| ModelError::WorkerGone(name.to_string()))??;
            check_options(name, &path, &options)?;
            check_architecture(name, &path)?;
            path
        };
        let spec = ModelSpec {
            name: name.to_string(),
            uri: uri.to_string(),
            path,
            options,
        };
        if remote {
            // Address and options are checked now; the server is first contacted by a query.
            RemoteModel::new(&spec)?;
            self.remotes.lock().expect("registry lock").remove(name);
        }
        self.declared
            .write()
            .expect("registry lock")
            .insert(name.to_string(), spec);
        Ok(())
    }

    /// Takes declarations made elsewhere (a cluster client's), already resolved and checked:
    /// a model declared the same way stays as it is (and loaded), a changed one is replaced.
    pub fn adopt(&self, specs: Vec<ModelSpec>) {
        let mut declared = self.declared.write().expect("registry lock");
        for spec in specs {
            let same = declared.get(&spec.name).is_some_and(|d| {
                d.uri == spec.uri && d.path == spec.path && d.options == spec.options
            });
            if !same {
                declared.insert(spec.name.clone(), spec);
            }
        }
    }

    /// DROP MODEL [IF EXISTS] name.
    pub fn drop_model(&self, name: &str, if_exists: bool) -> ModelResult<()> {
        let removed = self.declared.write().expect("registry lock").remove(name);
        match removed {
            None if !if_exists => Err(ModelError::Unknown(name.to_string())),
            _ => Ok(()),
        }
    }

    /// The client of a remote (openai://) model, None for a local one.
    pub fn remote(&self, spec: &ModelSpec) -> ModelResult<Option<Arc<RemoteModel>>> {
        if !is_remote(&spec.uri) {
            return Ok(None);
        }
        let mut remotes = self.remotes.lock().expect("registry lock");
        if let Some(r) = remotes.get(&spec.name) {
            return Ok(Some(Arc::clone(r)));
        }
        let r = Arc::new(RemoteModel::new(spec)?);
        remotes.insert(spec.name.clone(), Arc::clone(&r));
        Ok(Some(r))
    }

    /// The Marian translation model of a spec whose folder holds one: loaded once per session
    /// and device (two partitions asking at once share one load), off the async runtime.
    pub async fn marian(
        &self,
        spec: &ModelSpec,
        settings: &PrefflowOptions,
    ) -> ModelResult<Option<Arc<super::marian::Marian>>> {
        if is_remote(&spec.uri) || !super::marian::is_marian(&spec.path) {
            return Ok(None);
        }
        let slot = self.slot("marian", spec, settings);
        let loaded = slot
            .get_or_try_init(|| async {
                let device = device(&spec.name, &settings.device)?;
                let (name, path) = (spec.name.clone(), spec.path.clone());
                let threads = settings.threads;
                tokio::task::spawn_blocking(move || {
                    super::marian::Marian::load(&name, &path, device, threads)
                })
                .await
                .map_err(|_| ModelError::WorkerGone(spec.name.clone()))?
                .map(|m| Loaded::Marian(Arc::new(m)))
            })
            .await?;
        match loaded {
            Loaded::Marian(m) => Ok(Some(Arc::clone(m))),
            other => Err(mixed(spec, other)),
        }
    }

    /// What kind of model `spec` is, from its address and files (no weights read): a remote
    /// server, a Marian translation model, a decoder LLM (GGUF files, `*ForCausalLM` folders)
    /// or an encoder / classifier.
    pub fn kind(&self, spec: &ModelSpec) -> ModelResult<ModelKind> {
        Ok(if is_remote(&spec.uri) {
            ModelKind::Remote
        } else if super::marian::is_marian(&spec.path) {
            ModelKind::Marian
        } else if super::gguf::gguf_file(&spec.name, &spec.path).is_ok()
            || self.info(spec)?.architecture.ends_with("ForCausalLM")
        {
            ModelKind::Decoder
        } else {
            ModelKind::Encoder
        })
    }

    /// The model of `spec` resolved, for `what`, to what runs it (loaded once per session). A
    /// model that cannot do `what` is refused before any weights are read, with one error
    /// naming the model, what it is and what it cannot do.
    pub async fn resolve(
        &self,
        spec: &ModelSpec,
        settings: &PrefflowOptions,
        what: Capability,
    ) -> ModelResult<Model> {
        let kind = self.kind(spec)?;
        if !kind.can(what) {
            return Err(kind.cannot(&spec.name, what));
        }
        Ok(match kind {
            ModelKind::Remote => Model::Remote(self.remote(spec)?.expect("a remote address")),
            ModelKind::Marian => {
                Model::Marian(self.marian(spec, settings).await?.expect("a Marian folder"))
            }
            ModelKind::Decoder => Model::Decoder(self.decoder(spec, settings).await?),
            ModelKind::Encoder => Model::Encoder(self.load(spec, settings).await?),
        })
    }

    /// Keeps model results in `store` (the engine's result cache).
    pub fn set_result_store(&self, store: Option<Arc<dyn ResultStore>>) {
        *self.result_store.write().expect("registry lock") = store;
    }

    /// The result cache, if the session has one.
    pub fn result_store(&self) -> Option<Arc<dyn ResultStore>> {
        self.result_store.read().expect("registry lock").clone()
    }

    /// The identity of a model's outputs for the result cache: its files' hashes, options and
    /// the device. Reads the files the first time (blocking: call it off the runtime).
    /// Unless `writable`, the cache is only read (`prefflow.cache = 'read'`).
    pub fn identity(
        &self,
        spec: &ModelSpec,
        device: &str,
        writable: bool,
    ) -> datafusion::common::Result<Key> {
        let store = self.result_store();
        model_identity(spec, device, store.as_deref(), writable, &self.file_hashes)
    }

    /// What the session's model functions are doing, for progress display.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Every declared model, by name.
    pub fn list(&self) -> Vec<ModelSpec> {
        self.declared
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect()
    }

    /// A declared model by name, or a local folder / .gguf file taken as an address.
    pub fn spec(&self, name_or_uri: &str) -> ModelResult<ModelSpec> {
        if let Some(spec) = self
            .declared
            .read()
            .expect("registry lock")
            .get(name_or_uri)
        {
            return Ok(spec.clone());
        }
        if name_or_uri.starts_with("hf://") {
            return Err(ModelError::Declaration(format!(
                "declare Hub models first: CREATE MODEL m FROM '{name_or_uri}'"
            )));
        }
        let path = PathBuf::from(name_or_uri);
        let looks_like_path = name_or_uri.contains('/') || name_or_uri.ends_with(".gguf");
        if is_remote(name_or_uri) {
            // Never echoed: an inline address may carry a password.
            return Err(ModelError::Declaration(format!(
                "a remote model is declared before use: CREATE MODEL m FROM '{}', then call it by its name",
                super::remote::redact_uri(name_or_uri)
            )));
        }
        if !looks_like_path || !path.exists() {
            return Err(ModelError::Unknown(name_or_uri.to_string()));
        }
        validate(name_or_uri, &path)?;
        Ok(ModelSpec {
            name: name_or_uri.to_string(),
            uri: name_or_uri.to_string(),
            path,
            options: BTreeMap::new(),
        })
    }

    /// What a model is, from its JSON files (cached; no weights are read).
    pub fn info(&self, spec: &ModelSpec) -> ModelResult<ModelInfo> {
        local_only(spec)?;
        if let Some(i) = self.infos.lock().expect("registry lock").get(&spec.path) {
            return Ok(i.clone());
        }
        let info = ModelInfo::read(&spec.name, &spec.path)?;
        self.infos
            .lock()
            .expect("registry lock")
            .insert(spec.path.clone(), info.clone());
        Ok(info)
    }

    /// The model's tokenizer as the model sees text: no fixed padding, truncation at the
    /// model's maximum length (sentence-transformers' max_seq_length where it has one).
    pub fn tokenizer(&self, spec: &ModelSpec) -> ModelResult<Arc<Tokenizer>> {
        let max = self.info(spec)?.max_seq_length;
        self.cached_tokenizer(spec, Some(max))
    }

    /// The tokenizer without truncation, for counting a text's tokens.
    pub fn counting_tokenizer(&self, spec: &ModelSpec) -> ModelResult<Arc<Tokenizer>> {
        local_only(spec)?;
        self.cached_tokenizer(spec, None)
    }

    fn cached_tokenizer(
        &self,
        spec: &ModelSpec,
        truncate: Option<usize>,
    ) -> ModelResult<Arc<Tokenizer>> {
        let key = (spec.path.clone(), truncate);
        if let Some(t) = self.tokenizers.lock().expect("registry lock").get(&key) {
            return Ok(Arc::clone(t));
        }
        // A folder holds tokenizer.json; a .gguf file may have one beside it.
        let dir = if spec.path.is_file() {
            spec.path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        } else {
            spec.path.clone()
        };
        let file = dir.join("tokenizer.json");
        let bad = |problem: String| ModelError::File {
            model: spec.name.clone(),
            path: file.display().to_string(),
            problem,
        };
        // GGUF models without a tokenizer.json carry their tokenizer in the file's metadata.
        let mut tokenizer =
            if !file.exists() && super::gguf::gguf_file(&spec.name, &spec.path).is_ok() {
                super::gguf::read_metadata(&spec.name, &spec.path)?.2
            } else {
                Tokenizer::from_file(&file).map_err(|e| bad(e.to_string()))?
            };
        tokenizer.with_padding(None);
        let truncation = truncate.map(|max_length| tokenizers::TruncationParams {
            max_length,
            ..Default::default()
        });
        tokenizer
            .with_truncation(truncation)
            .map_err(|e| bad(e.to_string()))?;
        let tokenizer = Arc::new(tokenizer);
        self.tokenizers
            .lock()
            .expect("registry lock")
            .insert(key, Arc::clone(&tokenizer));
        Ok(tokenizer)
    }

    /// The loaded model, loading it (once, on its own thread) if needed.
    pub async fn load(
        &self,
        spec: &ModelSpec,
        settings: &PrefflowOptions,
    ) -> ModelResult<Arc<LoadedModel>> {
        local_only(spec)?;
        let slot = self.slot("encoder", spec, settings);
        let loaded = slot
            .get_or_try_init(|| async {
                let info = self.info(spec)?;
                let tokenizer = self.tokenizer(spec)?;
                let device = device(&spec.name, &settings.device)?;
                let (s, i) = (spec.clone(), info.clone());
                let worker = tokio::task::spawn_blocking({
                    let threads = settings.threads;
                    move || {
                        EncoderWorker::spawn(&s.name.clone(), threads, move || {
                            load_backend(&s, &i, &device)
                        })
                    }
                })
                .await
                .map_err(|_| ModelError::WorkerGone(spec.name.clone()))??;
                Ok::<_, ModelError>(Loaded::Encoder(Arc::new(LoadedModel {
                    spec: spec.clone(),
                    info,
                    tokenizer,
                    worker,
                })))
            })
            .await?;
        match loaded {
            Loaded::Encoder(m) => Ok(Arc::clone(m)),
            other => Err(mixed(spec, other)),
        }
    }
}

impl ModelRegistry {
    /// What a decoder's files say about its text (chat template, special tokens), without
    /// loading weights; cached per model path.
    pub fn decoder_info(&self, spec: &ModelSpec) -> ModelResult<DecoderInfo> {
        local_only(spec)?;
        if let Some(i) = self
            .decoder_infos
            .lock()
            .expect("registry lock")
            .get(&spec.path)
        {
            return Ok(i.clone());
        }
        let info = if super::gguf::gguf_file(&spec.name, &spec.path).is_ok() {
            super::gguf::read_metadata(&spec.name, &spec.path)?.3
        } else {
            super::decode::read_folder_metadata(&spec.name, &spec.path)?.1
        };
        self.decoder_infos
            .lock()
            .expect("registry lock")
            .insert(spec.path.clone(), info.clone());
        Ok(info)
    }

    /// The loaded decoder (GGUF file or safetensors folder), loading it (once, on its own thread) if needed.
    pub async fn decoder(
        &self,
        spec: &ModelSpec,
        settings: &PrefflowOptions,
    ) -> ModelResult<Arc<Decoder>> {
        local_only(spec)?;
        let slot = self.slot("decoder", spec, settings);
        let loaded = slot
            .get_or_try_init(|| async {
                let device = device(&spec.name, &settings.device)?;
                let (name, path) = (spec.name.clone(), spec.path.clone());
                let gguf = super::gguf::gguf_file(&name, &path).is_ok();
                // GGUF matrices stay as stored unless dtype 'f32' or 'q8_0'; safetensors
                // weights (f32, bf16 or f16 files) are computed in f32.
                let matrices = match spec.options.get("dtype").map(String::as_str) {
                    None | Some("q") | Some("quantized") if gguf => Matrices::Keep,
                    Some("q8_0") if gguf => Matrices::Q8_0,
                    Some("f32") => Matrices::F32,
                    None | Some("bf16") | Some("f16") if !gguf => Matrices::F32,
                    Some(other) => {
                        return Err(ModelError::Declaration(format!(
                            "model '{name}': dtype '{other}' is not supported here (GGUF: 'f32', 'q8_0' or leave it out; safetensors: 'f32', 'bf16', 'f16')"
                        )));
                    }
                    None => Matrices::F32,
                };
                let options = LoadOptions {
                    matrices,
                    threads: settings.threads,
                    batch: settings.decode_batch,
                };
                tokio::task::spawn_blocking(move || Decoder::load(&name, &path, device, options))
                    .await
                    .map_err(|_| ModelError::WorkerGone(spec.name.clone()))?
                    .map(|d| Loaded::Decoder(Arc::new(d)))
            })
            .await?;
        match loaded {
            Loaded::Decoder(d) => Ok(Arc::clone(d)),
            other => Err(mixed(spec, other)),
        }
    }

    /// The once-only load slot of a model in `runtime`: one per file, options, device and
    /// thread count, so every query of the session shares one loaded copy.
    fn slot(&self, runtime: &str, spec: &ModelSpec, settings: &PrefflowOptions) -> LoadSlot {
        let key = format!(
            "{runtime}|{}|{:?}|{}|{}|{}",
            spec.path.display(),
            spec.options,
            settings.device,
            settings.threads,
            settings.decode_batch
        );
        Arc::clone(
            self.slots
                .lock()
                .expect("registry lock")
                .entry(key)
                .or_default(),
        )
    }
}

/// A slot holding another runtime's model than asked for: the runtime is part of the key, so
/// this is a bug, reported rather than a panic.
fn mixed(spec: &ModelSpec, loaded: &Loaded) -> ModelError {
    let held = match loaded {
        Loaded::Encoder(_) => "an encoder",
        Loaded::Decoder(_) => "a decoder",
        Loaded::Marian(_) => "a Marian model",
    };
    ModelError::Declaration(format!(
        "model '{}': internal error: its load slot holds {held}",
        spec.name
    ))
}

fn device(model: &str, name: &str) -> ModelResult<Device> {
    let bad = |problem: String| ModelError::Unsupported {
        model: model.to_string(),
        problem,
    };
    match name {
        "cpu" => Ok(Device::Cpu),
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => Device::new_cuda(n).map_err(|e| {
                bad(format!(
                    "prefflow.device '{other}': {e} (CUDA needs a build with --features cuda)"
                ))
            }),
            None => Err(bad(format!(
                "prefflow.device must be 'cpu' or 'cuda:N', got '{other}'"
            ))),
        },
    }
}

fn load_backend(
    spec: &ModelSpec,
    info: &ModelInfo,
    device: &Device,
) -> ModelResult<Box<dyn Backend>> {
    let candle = |e: candle_core::Error| ModelError::candle(&spec.name, &e);
    match info.model_type.as_str() {
        "bert" => Ok(Box::new(Bert::load(spec, info, device).map_err(candle)?)),
        "qwen2" | "llama" if info.architecture.ends_with("ForSequenceClassification") => Ok(
            Box::new(Qwen2Classifier::load(spec, info, device).map_err(candle)?),
        ),
        other => Err(ModelError::Unsupported {
            model: spec.name.clone(),
            problem: format!(
                "architecture {} (model_type '{other}') is not supported here yet; supported: BERT encoders and classifiers, Qwen2 and Llama classifiers",
                info.architecture
            ),
        }),
    }
}

/// The options CREATE MODEL can check without loading weights: dtype, and a chat template's
/// syntax.
fn check_options(name: &str, path: &Path, options: &BTreeMap<String, String>) -> ModelResult<()> {
    if let Some(dtype) = options.get("dtype") {
        let gguf = super::gguf::gguf_file(name, path).is_ok();
        let allowed: &[&str] = if gguf {
            &["f32", "q8_0", "q", "quantized"]
        } else {
            &["f32", "bf16", "f16"]
        };
        if !allowed.contains(&dtype.as_str()) {
            return Err(ModelError::Declaration(format!(
                "CREATE MODEL {name}: dtype '{dtype}' is not supported for this {} model (use {})",
                if gguf { "GGUF" } else { "safetensors" },
                allowed.join(", ")
            )));
        }
    }
    if let Some(template) = options.get("chat_template") {
        let env = minijinja::Environment::new();
        env.template_from_str(template).map_err(|e| {
            ModelError::Declaration(format!(
                "CREATE MODEL {name}: option chat_template is not a valid Jinja template: {e}"
            ))
        })?;
    }
    Ok(())
}

/// A folder with several GGUF files is ambiguous: refused before any is read.
fn one_gguf(name: &str, path: &Path) -> ModelResult<()> {
    if !path.is_dir() {
        return Ok(());
    }
    let mut ggufs: Vec<String> = std::fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".gguf"))
                .collect()
        })
        .unwrap_or_default();
    ggufs.sort();
    if ggufs.len() > 1 {
        return Err(ModelError::Declaration(format!(
            "CREATE MODEL {name}: {} holds {} GGUF files ({}): name one, as FROM '{}'",
            path.display(),
            ggufs.len(),
            ggufs.join(", "),
            path.join(&ggufs[0]).display()
        )));
    }
    Ok(())
}

/// What CREATE MODEL promises: prefflow can run the model's architecture, so an unsupported
/// family fails here, naming what is supported, not at its first use (the weights are not
/// read; config.json or the GGUF header says enough).
fn check_architecture(name: &str, path: &Path) -> ModelResult<()> {
    let unsupported = |problem: String| ModelError::Unsupported {
        model: name.to_string(),
        problem,
    };
    if super::marian::is_marian(path) {
        return Ok(());
    }
    // A GGUF file's architecture is checked with its header (source::check_weights).
    if super::gguf::gguf_file(name, path).is_ok() {
        return Ok(());
    }
    let config = read_json(name, &path.join("config.json"))?;
    let architecture = config["architectures"][0].as_str().unwrap_or("");
    let model_type = config["model_type"].as_str().unwrap_or("");
    const CLASSIFIERS: &str = "BERT (BertForSequenceClassification), Qwen2 and Llama (Qwen2ForSequenceClassification, LlamaForSequenceClassification)";
    if architecture.ends_with("ForCausalLM") {
        return super::transformer::Config::from_json(&config)
            .map(|_| ())
            .map_err(|e| unsupported(format!("{architecture}: {e}")));
    }
    let supported = if architecture.ends_with("ForSequenceClassification") {
        matches!(model_type, "bert" | "qwen2" | "llama")
    } else {
        model_type == "bert"
    };
    if !supported {
        let shown = if architecture.is_empty() {
            "no architectures in config.json".to_string()
        } else {
            architecture.to_string()
        };
        return Err(unsupported(format!(
            "{shown} (model_type '{model_type}') is not supported: prefflow runs decoders (Llama, Mistral without a sliding window, Qwen2, Gemma 3: *ForCausalLM folders or GGUF files), reward models {CLASSIFIERS}, BERT encoders (BertModel) and Marian translation models"
        )));
    }
    Ok(())
}

/// Functions that need the weights refuse remote models with a clear message.
fn local_only(spec: &ModelSpec) -> ModelResult<()> {
    if is_remote(&spec.uri) {
        return Err(ModelError::Unsupported {
            model: spec.name.clone(),
            problem: "it is a remote (OpenAI-compatible) model; this needs local weights (remote models serve ai_generate, ai_generate_n, ai_judge, ai_translate, translate_json and ai_embed)".to_string(),
        });
    }
    Ok(())
}
