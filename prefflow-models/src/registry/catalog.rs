//! The catalog of declared models (CREATE / DROP MODEL) and of models named by a path. What a
//! model is — its kind and its GGUF file — is decided here, once, from its address and files,
//! so no later call probes the files again.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::error::{ModelError, ModelResult};
use crate::remote::{REMOTE_OPTIONS, RemoteModel, is_remote, redact_uri};
use crate::source::{check_weights, read_json, resolve, validate};
use crate::types::{ModelKind, ModelSpec};

/// Option keys CREATE MODEL accepts; anything else is a typo worth an error.
pub const MODEL_OPTIONS: [&str; 4] = ["dtype", "label", "chat_template", "revision"];

/// The models a session can name.
#[derive(Debug, Default)]
pub struct Catalog {
    declared: RwLock<BTreeMap<String, ModelSpec>>,
    /// Local folders and .gguf files used by their path without a declaration, classified at
    /// their first use.
    addressed: RwLock<HashMap<String, ModelSpec>>,
}

impl Catalog {
    /// CREATE [OR REPLACE] MODEL name FROM 'uri' OPTIONS (...): fetches hf:// models, checks
    /// the files are there and the architecture runs, and decides the model's kind. None when
    /// IF NOT EXISTS found the model declared already.
    pub async fn declare(
        &self,
        name: &str,
        uri: &str,
        options: BTreeMap<String, String>,
        replace: bool,
        if_not_exists: bool,
    ) -> ModelResult<Option<ModelSpec>> {
        let exists = self
            .declared
            .read()
            .expect("catalog lock")
            .contains_key(name);
        if exists && if_not_exists {
            return Ok(None);
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
        let spec = if remote {
            let spec = ModelSpec {
                name: name.to_string(),
                uri: uri.to_string(),
                path: PathBuf::new(),
                options,
                kind: ModelKind::Remote,
                gguf: None,
            };
            // Address and options are checked now; the server is first contacted by a query.
            RemoteModel::new(&spec)?;
            spec
        } else {
            let path = resolve(name, uri).await?;
            validate(name, &path)?;
            let (kind, gguf) = classify(name, &path)?;
            let (model, p) = (name.to_string(), path.clone());
            tokio::task::spawn_blocking(move || check_weights(&model, &p))
                .await
                .map_err(|_| ModelError::WorkerGone(name.to_string()))??;
            check_options(name, gguf.is_some(), &options)?;
            if gguf.is_none() && kind != ModelKind::Marian {
                check_architecture(name, &path)?;
            }
            ModelSpec {
                name: name.to_string(),
                uri: uri.to_string(),
                path,
                options,
                kind,
                gguf,
            }
        };
        self.declared
            .write()
            .expect("catalog lock")
            .insert(name.to_string(), spec.clone());
        Ok(Some(spec))
    }

    /// Takes declarations made elsewhere (a cluster client's), already resolved and checked:
    /// a model declared the same way stays as it is (and loaded), a changed one is replaced.
    pub fn adopt(&self, specs: Vec<ModelSpec>) {
        let mut declared = self.declared.write().expect("catalog lock");
        for spec in specs {
            if declared.get(&spec.name) != Some(&spec) {
                declared.insert(spec.name.clone(), spec);
            }
        }
    }

    /// DROP MODEL [IF EXISTS] name.
    pub fn drop_model(&self, name: &str, if_exists: bool) -> ModelResult<()> {
        let removed = self.declared.write().expect("catalog lock").remove(name);
        match removed {
            None if !if_exists => Err(ModelError::Unknown(name.to_string())),
            _ => Ok(()),
        }
    }

    /// Every declared model, by name.
    pub fn list(&self) -> Vec<ModelSpec> {
        self.declared
            .read()
            .expect("catalog lock")
            .values()
            .cloned()
            .collect()
    }

    /// A declared model by name, or a local folder / .gguf file taken as an address.
    pub fn spec(&self, name_or_uri: &str) -> ModelResult<ModelSpec> {
        if let Some(spec) = self.declared.read().expect("catalog lock").get(name_or_uri) {
            return Ok(spec.clone());
        }
        if let Some(spec) = self
            .addressed
            .read()
            .expect("catalog lock")
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
                redact_uri(name_or_uri)
            )));
        }
        if !looks_like_path || !path.exists() {
            return Err(ModelError::Unknown(name_or_uri.to_string()));
        }
        validate(name_or_uri, &path)?;
        let (kind, gguf) = classify(name_or_uri, &path)?;
        let spec = ModelSpec {
            name: name_or_uri.to_string(),
            uri: name_or_uri.to_string(),
            path,
            options: BTreeMap::new(),
            kind,
            gguf,
        };
        self.addressed
            .write()
            .expect("catalog lock")
            .insert(name_or_uri.to_string(), spec.clone());
        Ok(spec)
    }
}

/// What a local model is, from its files (no weights read): a Marian translation model, a
/// decoder LLM (a GGUF file, a `*ForCausalLM` folder) or an encoder / classifier; and the GGUF
/// file where it is one.
fn classify(name: &str, path: &Path) -> ModelResult<(ModelKind, Option<PathBuf>)> {
    if crate::marian::is_marian(path) {
        return Ok((ModelKind::Marian, None));
    }
    if let Some(file) = crate::gguf::find(name, path)? {
        return Ok((ModelKind::Decoder, Some(file)));
    }
    let config = read_json(name, &path.join("config.json"))?;
    // A sentence-transformers folder embeds, whatever head its config names (Qwen3-Embedding
    // says Qwen3ForCausalLM).
    let causal = config["architectures"][0]
        .as_str()
        .is_some_and(|a| a.ends_with("ForCausalLM"))
        && !path.join("modules.json").exists();
    Ok((
        if causal {
            ModelKind::Decoder
        } else {
            ModelKind::Encoder
        },
        None,
    ))
}

/// The options CREATE MODEL can check without loading weights: dtype, and a chat template's
/// syntax.
fn check_options(name: &str, gguf: bool, options: &BTreeMap<String, String>) -> ModelResult<()> {
    if let Some(dtype) = options.get("dtype") {
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
        let text = crate::chat::hf_tags(template);
        let env = minijinja::Environment::new();
        env.template_from_str(&text).map_err(|e| {
            ModelError::Declaration(format!(
                "CREATE MODEL {name}: option chat_template is not a valid Jinja template: {e}"
            ))
        })?;
    }
    Ok(())
}

/// What CREATE MODEL promises: prefflow can run the folder's architecture, so an unsupported
/// family fails here, naming what is supported, not at its first use (config.json says enough;
/// a GGUF file's architecture is checked with its header by `source::check_weights`).
fn check_architecture(name: &str, path: &Path) -> ModelResult<()> {
    let unsupported = |problem: String| ModelError::Unsupported {
        model: name.to_string(),
        problem,
    };
    let config = read_json(name, &path.join("config.json"))?;
    let architecture = config["architectures"][0].as_str().unwrap_or("");
    let model_type = config["model_type"].as_str().unwrap_or("");
    const CLASSIFIERS: &str = "BERT, RoBERTa, XLM-RoBERTa, DeBERTa-v2/v3 and ModernBERT (*ForSequenceClassification) and *ForSequenceClassification of every decoder family";
    let decoder_family = crate::transformer::Family::from_name(model_type).is_some();
    // A decoder body under another head: a classifier, or an embedder (sentence-transformers
    // files beside a *Model or *ForCausalLM folder).
    let embedder = path.join("modules.json").exists();
    if architecture.ends_with("ForCausalLM")
        || (decoder_family
            && (architecture.ends_with("ForSequenceClassification")
                || architecture.ends_with("Model")
                || embedder))
    {
        return crate::transformer::Config::from_json(&config)
            .map(|_| ())
            .map_err(|e| unsupported(format!("{architecture}: {e}")));
    }
    let supported = matches!(
        model_type,
        "bert" | "roberta" | "xlm-roberta" | "deberta-v2" | "modernbert"
    );
    // deberta-v2-xlarge's convolution after the first layer is not implemented.
    if model_type == "deberta-v2" && config["conv_kernel_size"].as_u64().unwrap_or(0) > 0 {
        return Err(unsupported(format!(
            "{architecture}: DeBERTa's convolution layer (conv_kernel_size {}) is not supported; DeBERTa-v3 models have none",
            config["conv_kernel_size"]
        )));
    }
    if !supported {
        let shown = if architecture.is_empty() {
            "no architectures in config.json".to_string()
        } else {
            architecture.to_string()
        };
        return Err(unsupported(format!(
            "{shown} (model_type '{model_type}') is not supported: prefflow runs decoders ({}: *ForCausalLM folders or GGUF files), reward models {CLASSIFIERS}, encoders (BERT, RoBERTa, XLM-RoBERTa, DeBERTa-v2/v3, ModernBERT; decoder embedders) and Marian translation models",
            crate::transformer::FAMILIES
        )));
    }
    Ok(())
}
