//! Where a model's files come from: a local folder (config.json, tokenizer.json,
//! *.safetensors), a local .gguf file, or `hf://ORG/NAME[@REV][/FILE.gguf]` through hf-hub.

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};

use super::error::{ModelError, ModelResult};
use super::hub;

/// Files a model folder may need; weights are added by extension.
const WANTED_JSON: [&str; 9] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
];

/// Makes `uri` local: downloads hf:// models into the Hub cache, checks local paths exist.
pub async fn resolve(model: &str, uri: &str) -> ModelResult<PathBuf> {
    if let Some(rest) = uri.strip_prefix("hf://") {
        return fetch(model, uri, rest).await;
    }
    let path = PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri));
    if !path.exists() {
        return Err(ModelError::File {
            model: model.to_string(),
            path: path.display().to_string(),
            problem: "no such file or folder".to_string(),
        });
    }
    Ok(path)
}

async fn fetch(model: &str, uri: &str, rest: &str) -> ModelResult<PathBuf> {
    let hub_err = |message: String| ModelError::Hub {
        model: model.to_string(),
        message: format!("{uri}: {message}"),
    };
    let mut parts = rest.splitn(3, '/');
    let org = parts.next().unwrap_or("");
    let name_rev = parts.next().unwrap_or("");
    let file = parts.next().filter(|f| !f.is_empty());
    if org.is_empty() || name_rev.is_empty() || org == "datasets" {
        return Err(hub_err(
            "expected hf://ORG/NAME[@REVISION][/FILE.gguf]".to_string(),
        ));
    }
    let (name, revision) = match name_rev.split_once('@') {
        Some((n, r)) => (n, r.replace("%2F", "/")),
        None => (name_rev, "main".to_string()),
    };
    let api = hub::api().map_err(|e| hub_err(hub::describe(&e)))?;
    let repo = api.repo(Repo::with_revision(
        format!("{org}/{name}"),
        RepoType::Model,
        revision,
    ));
    if let Some(file) = file {
        // One GGUF file is a complete model; a tokenizer.json beside it is optional.
        let path = repo
            .get(file)
            .await
            .map_err(|e| hub_err(hub::describe(&e)))?;
        let _ = repo.get("tokenizer.json").await;
        return Ok(path);
    }
    let info = repo.info().await.map_err(|e| hub_err(hub::describe(&e)))?;
    let files: Vec<String> = info
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .filter(|f| {
            WANTED_JSON.contains(&f.as_str())
                || f.ends_with(".safetensors")
                || f == "model.safetensors.index.json"
        })
        .collect();
    let mut root = None;
    for f in &files {
        let local = repo.get(f).await.map_err(|e| hub_err(hub::describe(&e)))?;
        if root.is_none() {
            let mut r = local.clone();
            for _ in Path::new(f).components() {
                r.pop();
            }
            root = Some(r);
        }
    }
    root.ok_or_else(|| hub_err("the repository has no config.json or weights".to_string()))
}

/// Reads and parses a JSON file of a model, naming the model and file on failure.
pub fn read_json(model: &str, path: &Path) -> ModelResult<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::File {
        model: model.to_string(),
        path: path.display().to_string(),
        problem: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::File {
        model: model.to_string(),
        path: path.display().to_string(),
        problem: format!("invalid JSON: {e}"),
    })
}

/// Checks that a model's files are all there, so CREATE MODEL fails early and clearly.
pub fn validate(model: &str, path: &Path) -> ModelResult<()> {
    let missing = |p: PathBuf, what: &str| ModelError::File {
        model: model.to_string(),
        path: p.display().to_string(),
        problem: what.to_string(),
    };
    if path.is_file() {
        if path.extension().is_none_or(|e| e != "gguf") {
            return Err(missing(
                path.to_path_buf(),
                "a model file must be a .gguf file",
            ));
        }
        return Ok(());
    }
    let has_gguf = std::fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "gguf"))
        })
        .unwrap_or(false);
    if has_gguf {
        return Ok(()); // a GGUF file carries its own config and tokenizer
    }
    read_json(model, &path.join("config.json"))?;
    let tokenizer = path.join("tokenizer.json");
    if !tokenizer.exists() {
        return Err(missing(tokenizer, "missing (the model's tokenizer)"));
    }
    let has_weights = std::fs::read_dir(path)
        .map(|d| {
            d.flatten().any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.ends_with(".safetensors") || n.ends_with(".gguf")
            })
        })
        .unwrap_or(false);
    if !has_weights {
        return Err(missing(
            path.to_path_buf(),
            "no *.safetensors or *.gguf weights in this folder",
        ));
    }
    Ok(())
}

/// The safetensors weight files of a model folder, sorted.
pub fn safetensors_files(model: &str, dir: &Path) -> ModelResult<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::File {
            model: model.to_string(),
            path: dir.display().to_string(),
            problem: e.to_string(),
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::File {
            model: model.to_string(),
            path: dir.display().to_string(),
            problem: "no *.safetensors weights".to_string(),
        });
    }
    Ok(files)
}

/// config.json as candle's model configs expect it. transformers 5 nests rope settings under
/// `rope_parameters` and writes `sliding_window: null`; older files have them flat.
pub fn model_config<T: serde::de::DeserializeOwned>(model: &str, dir: &Path) -> ModelResult<T> {
    let path = dir.join("config.json");
    let mut config = read_json(model, &path)?;
    if let Some(obj) = config.as_object_mut() {
        if let Some(theta) = obj
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .cloned()
        {
            obj.entry("rope_theta").or_insert(theta);
        }
        if obj.get("sliding_window").is_none_or(|v| v.is_null()) {
            let max = obj
                .get("max_position_embeddings")
                .cloned()
                .unwrap_or(4096.into());
            obj.insert("sliding_window".to_string(), max);
        }
        obj.entry("use_sliding_window").or_insert(false.into());
        obj.entry("max_window_layers").or_insert(0.into());
        obj.entry("tie_word_embeddings").or_insert(false.into());
    }
    serde_json::from_value(config).map_err(|e| ModelError::File {
        model: model.to_string(),
        path: path.display().to_string(),
        problem: format!("unexpected config: {e}"),
    })
}

/// A model folder's chat template: chat_template.jinja (transformers 5 writes it there), else
/// the `chat_template` of tokenizer_config.json (`tok_config`, Null when the file is absent).
pub fn chat_template(dir: &Path, tok_config: &serde_json::Value) -> Option<String> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return std::fs::read_to_string(&jinja).ok();
    }
    tok_config["chat_template"].as_str().map(str::to_string)
}
