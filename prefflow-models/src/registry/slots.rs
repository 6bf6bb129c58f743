//! Loaded models: one map of once-only load slots for every local runtime (encoders and
//! classifiers, decoders, Marian), keyed by runtime, file, options, device and threads, so
//! every query of a session shares one loaded copy and two partitions asking at once share one
//! load; and the clients of remote models.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::Device;

use super::metadata::{FileMetadata, local_only};
use crate::bert::Bert;
use crate::decode::{Decoder, LoadOptions};
use crate::decoder_head::DecoderHead;
use crate::encode::{Backend, EncoderWorker};
use crate::error::{ModelError, ModelResult};
use crate::marian::Marian;
use crate::model::LoadedModel;
use crate::remote::RemoteModel;
use crate::settings::PrefflowOptions;
use crate::transformer::{FAMILIES, Family, Matrices};
use crate::types::{ModelInfo, ModelKind, ModelSpec};

/// A loaded local model, of whichever runtime runs it.
#[derive(Debug, Clone)]
enum Loaded {
    Encoder(Arc<LoadedModel>),
    Decoder(Arc<Decoder>),
    Marian(Arc<Marian>),
}

/// The once-only load of one model (see [`LoadSlots::slot`]).
type LoadSlot = Arc<tokio::sync::OnceCell<Loaded>>;

/// The loaded models of one session.
#[derive(Debug, Default)]
pub struct LoadSlots {
    slots: Mutex<HashMap<String, LoadSlot>>,
    remotes: Mutex<HashMap<String, Arc<RemoteModel>>>,
}

impl LoadSlots {
    /// The client of a remote (openai://) model, None for a local one.
    pub fn remote(&self, spec: &ModelSpec) -> ModelResult<Option<Arc<RemoteModel>>> {
        if spec.kind != ModelKind::Remote {
            return Ok(None);
        }
        let mut remotes = self.remotes.lock().expect("slots lock");
        if let Some(r) = remotes.get(&spec.name) {
            return Ok(Some(Arc::clone(r)));
        }
        let r = Arc::new(RemoteModel::new(spec)?);
        remotes.insert(spec.name.clone(), Arc::clone(&r));
        Ok(Some(r))
    }

    /// Drops the client of a model declared anew (its address or options may have changed).
    pub fn forget_remote(&self, name: &str) {
        self.remotes.lock().expect("slots lock").remove(name);
    }

    /// The Marian translation model of a spec whose folder holds one, off the async runtime.
    pub async fn marian(
        &self,
        spec: &ModelSpec,
        settings: &PrefflowOptions,
    ) -> ModelResult<Option<Arc<Marian>>> {
        if spec.kind != ModelKind::Marian {
            return Ok(None);
        }
        let slot = self.slot("marian", spec, settings);
        let loaded = slot
            .get_or_try_init(|| async {
                let device = device(&spec.name, &settings.device)?;
                let (name, path) = (spec.name.clone(), spec.path.clone());
                let threads = settings.threads;
                tokio::task::spawn_blocking(move || Marian::load(&name, &path, device, threads))
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

    /// The loaded encoder or classifier, loading it (once, on its own thread) if needed.
    pub async fn encoder(
        &self,
        spec: &ModelSpec,
        settings: &PrefflowOptions,
        files: &FileMetadata,
    ) -> ModelResult<Arc<LoadedModel>> {
        local_only(spec)?;
        let slot = self.slot("encoder", spec, settings);
        let loaded = slot
            .get_or_try_init(|| async {
                let info = files.info(spec)?;
                let tokenizer = files.tokenizer(spec)?;
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

    /// The loaded decoder (GGUF file or safetensors folder), loading it (once, on its own
    /// thread) if needed.
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
                let (name, path, file) = (spec.name.clone(), spec.path.clone(), spec.gguf.clone());
                let gguf = file.is_some();
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
                tokio::task::spawn_blocking(move || {
                    Decoder::load(&name, &path, file.as_deref(), device, options)
                })
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
    /// thread count.
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
                .expect("slots lock")
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
        "bert" | "roberta" | "xlm-roberta" => {
            Ok(Box::new(Bert::load(spec, info, device).map_err(candle)?))
        }
        "modernbert" => Ok(Box::new(
            crate::modernbert::ModernBert::load(spec, info, device).map_err(candle)?,
        )),
        "deberta-v2" => Ok(Box::new(
            crate::deberta::Deberta::load(spec, info, device).map_err(candle)?,
        )),
        family if Family::from_name(family).is_some() => Ok(Box::new(
            DecoderHead::load(spec, info, device).map_err(candle)?,
        )),
        other => Err(ModelError::Unsupported {
            model: spec.name.clone(),
            problem: format!(
                "architecture {} (model_type '{other}') is not supported here yet; supported: BERT, RoBERTa, XLM-RoBERTa, DeBERTa-v2/v3 and ModernBERT encoders and classifiers, decoder classifiers and embedders ({})",
                info.architecture, FAMILIES
            ),
        }),
    }
}
