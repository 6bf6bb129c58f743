//! What a local model's files say, read once per model path and kept: config.json and the
//! sentence-transformers files ([`ModelInfo`]), a decoder's text settings ([`DecoderInfo`]: from
//! the GGUF header or the folder's JSON files), and its tokenizers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokenizers::Tokenizer;

use crate::error::{ModelError, ModelResult};
use crate::remote::is_remote;
use crate::source::read_json;
use crate::summary::Summary;
use crate::types::{DecoderInfo, ModelInfo, ModelSpec, Pooling};

/// The file metadata caches of one session.
#[derive(Debug, Default)]
pub struct FileMetadata {
    infos: Mutex<HashMap<PathBuf, ModelInfo>>,
    decoder_infos: Mutex<HashMap<PathBuf, DecoderInfo>>,
    tokenizers: Mutex<HashMap<(PathBuf, Option<usize>), Arc<Tokenizer>>>,
    summaries: Mutex<HashMap<String, Summary>>,
}

impl FileMetadata {
    /// What SHOW MODELS says of a model (cached per name and path).
    pub fn summary(&self, spec: &ModelSpec) -> ModelResult<Summary> {
        let key = format!("{}|{}", spec.name, spec.path.display());
        if let Some(s) = self.summaries.lock().expect("metadata lock").get(&key) {
            return Ok(s.clone());
        }
        let s = Summary::read(spec)?;
        self.summaries
            .lock()
            .expect("metadata lock")
            .insert(key, s.clone());
        Ok(s)
    }

    /// What a model is, from its JSON files (cached; no weights are read).
    pub fn info(&self, spec: &ModelSpec) -> ModelResult<ModelInfo> {
        local_only(spec)?;
        if let Some(i) = self.infos.lock().expect("metadata lock").get(&spec.path) {
            return Ok(i.clone());
        }
        let info = ModelInfo::read(&spec.name, &spec.path)?;
        self.infos
            .lock()
            .expect("metadata lock")
            .insert(spec.path.clone(), info.clone());
        Ok(info)
    }

    /// What a decoder's files say about its text (chat template, special tokens), without
    /// loading weights; cached per model path.
    pub fn decoder_info(&self, spec: &ModelSpec) -> ModelResult<DecoderInfo> {
        local_only(spec)?;
        if let Some(i) = self
            .decoder_infos
            .lock()
            .expect("metadata lock")
            .get(&spec.path)
        {
            return Ok(i.clone());
        }
        let info = match &spec.gguf {
            Some(file) => crate::gguf::read_metadata(&spec.name, file)?.info,
            None => crate::decode::read_folder_metadata(&spec.name, &spec.path)?.1,
        };
        self.decoder_infos
            .lock()
            .expect("metadata lock")
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
        if let Some(t) = self.tokenizers.lock().expect("metadata lock").get(&key) {
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
        let mut tokenizer = match &spec.gguf {
            Some(gguf) if !file.exists() => crate::gguf::read_metadata(&spec.name, gguf)?.tokenizer,
            _ => Tokenizer::from_file(&file).map_err(|e| bad(e.to_string()))?,
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
            .expect("metadata lock")
            .insert(key, Arc::clone(&tokenizer));
        Ok(tokenizer)
    }
}

/// Functions that need the weights refuse remote models with a clear message.
pub fn local_only(spec: &ModelSpec) -> ModelResult<()> {
    if is_remote(&spec.uri) {
        return Err(ModelError::Unsupported {
            model: spec.name.clone(),
            problem: "it is a remote (OpenAI-compatible) model; this needs local weights (remote models serve ai_generate, ai_generate_n, ai_judge, ai_translate, translate_json and ai_embed)".to_string(),
        });
    }
    Ok(())
}

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
        let st_prompts = dir.join("config_sentence_transformers.json");
        let st_prompts = if st_prompts.exists() {
            read_json(model, &st_prompts)?
        } else {
            serde_json::Value::Null
        };
        let prompts = st_prompts["prompts"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let default_prompt = st_prompts["default_prompt_name"]
            .as_str()
            .map(str::to_string);
        let st_config = dir.join("sentence_bert_config.json");
        let max_seq_length = if st_config.exists() {
            read_json(model, &st_config)?["max_seq_length"].as_u64()
        } else {
            None
        }
        .or_else(|| config["max_position_embeddings"].as_u64())
        .unwrap_or(512) as usize;
        let pooling_file = dir.join("1_Pooling/config.json");
        let decoder_family = crate::transformer::Family::from_name(&model_type).is_some();
        let pooling = if pooling_file.exists() {
            pooling_mode(model, &pooling_file, &read_json(model, &pooling_file)?)?
        } else if decoder_family {
            Pooling::LastToken
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
        let chat_template = crate::source::chat_template(dir, &tok_config);
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
            prompts,
            default_prompt,
        })
    }

    /// True for decoder classifiers, whose inputs are chat-templated conversations.
    pub fn is_decoder(&self) -> bool {
        !matches!(
            self.model_type.as_str(),
            "bert" | "roberta" | "xlm-roberta" | "deberta-v2" | "modernbert" | "distilbert" | ""
        ) && !self.architecture.starts_with("Bert")
    }
}

/// A sentence-transformers Pooling module's mode: the `pooling_mode` name (sentence-transformers
/// 5 and later) or the `pooling_mode_*` flags of older files. Modes prefflow cannot compute are
/// refused rather than replaced by another.
fn pooling_mode(model: &str, file: &Path, p: &serde_json::Value) -> ModelResult<Pooling> {
    let flag = |k: &str| p[k].as_bool() == Some(true);
    let name = match p["pooling_mode"].as_str() {
        Some(n) => n.to_string(),
        None if flag("pooling_mode_cls_token") => "cls".into(),
        None if flag("pooling_mode_max_tokens") => "max".into(),
        None if flag("pooling_mode_mean_sqrt_len_tokens") => "mean_sqrt_len_tokens".into(),
        None if flag("pooling_mode_lasttoken") => "lasttoken".into(),
        None if flag("pooling_mode_weightedmean_tokens") => "weightedmean".into(),
        None => "mean".into(),
    };
    let several = [
        "pooling_mode_cls_token",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_lasttoken",
        "pooling_mode_weightedmean_tokens",
    ]
    .iter()
    .filter(|k| flag(k))
    .count()
        > 1;
    let refuse = |what: String| ModelError::File {
        model: model.to_string(),
        path: file.display().to_string(),
        problem: what,
    };
    if several {
        return Err(refuse(
            "several pooling modes at once (concatenated embeddings) are not supported".into(),
        ));
    }
    if p["include_prompt"].as_bool() == Some(false) {
        return Err(refuse(
            "include_prompt false (pooling without the prompt's tokens) is not supported".into(),
        ));
    }
    match name.as_str() {
        "cls" => Ok(Pooling::Cls),
        "mean" => Ok(Pooling::Mean),
        "max" => Ok(Pooling::Max),
        "mean_sqrt_len_tokens" => Ok(Pooling::MeanSqrtLen),
        "lasttoken" => Ok(Pooling::LastToken),
        other => Err(refuse(format!(
            "pooling mode '{other}' is not supported (cls, mean, max, mean_sqrt_len_tokens and lasttoken are)"
        ))),
    }
}
