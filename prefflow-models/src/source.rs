//! Where a model's files come from: a local folder (config.json, tokenizer.json,
//! *.safetensors), a local .gguf file, or `hf://ORG/NAME[@REV][/FILE.gguf]` through hf-hub.

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};

use super::error::{ModelError, ModelResult};
use super::hub;

/// Files a model folder may need; weights are added by extension.
const WANTED_JSON: [&str; 10] = [
    "config.json",
    "chat_template.jinja",
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
        revision.clone(),
    ));
    if let Some(file) = file {
        // One GGUF file is a complete model; a tokenizer.json beside it is optional.
        let cached = hub::cache()
            .repo(Repo::with_revision(
                format!("{org}/{name}"),
                RepoType::Model,
                revision.clone(),
            ))
            .get(file);
        let path = match cached {
            Some(p) => p,
            None => repo
                .download_with_progress(
                    file,
                    hub::DownloadLine::new(&format!("CREATE MODEL {model}")),
                )
                .await
                .map_err(|e| hub_err(hub::describe(&e)))?,
        };
        let _ = repo.get("tokenizer.json").await;
        return Ok(path);
    }
    let info = repo.info().await.map_err(|e| hub_err(hub::describe(&e)))?;
    let names: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    // A sharded checkpoint: its index says which weight files to fetch (not, say, a second
    // consolidated copy beside the shards).
    let index = "model.safetensors.index.json";
    let shards: Option<Vec<String>> = if names.iter().any(|n| n == index) {
        let local = repo
            .get(index)
            .await
            .map_err(|e| hub_err(hub::describe(&e)))?;
        let listed = read_json(model, &local)?;
        let mut shards: Vec<String> = listed["weight_map"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        Some(shards)
    } else {
        None
    };
    let files: Vec<String> = names
        .into_iter()
        .filter(|f| {
            WANTED_JSON.contains(&f.as_str())
                || f == index
                || match &shards {
                    Some(listed) => listed.contains(f),
                    None => f.ends_with(".safetensors") && !f.contains('/'),
                }
        })
        .collect();
    let mut root = None;
    // Cached files are used as they are; the others download with a progress line.
    let cache = hub::cache().repo(Repo::with_revision(
        format!("{org}/{name}"),
        RepoType::Model,
        revision.clone(),
    ));
    let line = hub::DownloadLine::new(&format!("CREATE MODEL {model}"));
    for f in &files {
        let local = match cache.get(f) {
            Some(p) => p,
            None => repo
                .download_with_progress(f, line.clone())
                .await
                .map_err(|e| hub_err(hub::describe(&e)))?,
        };
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
    let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
                .collect()
        })
        .unwrap_or_default();
    if !ggufs.is_empty() {
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
    // A sharded checkpoint needs every shard its index names.
    if path.join("model.safetensors.index.json").exists() {
        safetensors_files(model, path)?;
    }
    Ok(())
}

/// Reads the weight files' headers (GGUF, safetensors) and checks their data is all there, so
/// an empty or truncated download fails at CREATE MODEL. Done once per declaration.
pub fn check_weights(model: &str, path: &Path) -> ModelResult<()> {
    let files: Vec<PathBuf> = if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for file in files {
        match file.extension().and_then(|e| e.to_str()) {
            Some("gguf") => check_gguf(model, &file)?,
            Some("safetensors") => check_safetensors(model, &file)?,
            _ => {}
        }
    }
    Ok(())
}

fn damaged(model: &str, path: &Path, problem: String) -> ModelError {
    ModelError::File {
        model: model.to_string(),
        path: path.display().to_string(),
        problem,
    }
}

/// A GGUF file's header and tensor table must read, and every tensor's data must lie inside
/// the file: a 0-byte or truncated download fails at CREATE MODEL, not mid-pipeline.
fn check_gguf(model: &str, path: &Path) -> ModelResult<()> {
    let mut file = std::fs::File::open(path).map_err(|e| damaged(model, path, e.to_string()))?;
    let len = file
        .metadata()
        .map_err(|e| damaged(model, path, e.to_string()))?
        .len();
    if len == 0 {
        return Err(damaged(
            model,
            path,
            "the file is empty (0 bytes)".to_string(),
        ));
    }
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).map_err(|e| {
        damaged(
            model,
            path,
            format!("not a readable GGUF file (truncated or damaged?): {e}"),
        )
    })?;
    for (name, t) in &content.tensor_infos {
        let block = t.ggml_dtype.block_size() as u64;
        let bytes = (t.shape.elem_count() as u64).div_ceil(block) * t.ggml_dtype.type_size() as u64;
        let end = content.tensor_data_offset + t.offset + bytes;
        if end > len {
            return Err(damaged(
                model,
                path,
                format!(
                    "truncated: tensor {name} ends at byte {end} but the file has {len} bytes (an interrupted download?)"
                ),
            ));
        }
    }
    // The header read here also says whether prefflow can run the architecture.
    super::transformer::Config::from_gguf(&content).map_err(|e| ModelError::Unsupported {
        model: model.to_string(),
        problem: e.to_string(),
    })?;
    Ok(())
}

/// A safetensors file's header must parse and its tensors must fill the file exactly.
fn check_safetensors(model: &str, path: &Path) -> ModelResult<()> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| damaged(model, path, e.to_string()))?;
    let len = file
        .metadata()
        .map_err(|e| damaged(model, path, e.to_string()))?
        .len();
    let mut head = [0u8; 8];
    if len < 8 || file.read_exact(&mut head).is_err() {
        return Err(damaged(
            model,
            path,
            format!("not a safetensors file: {len} bytes (empty or truncated)"),
        ));
    }
    let n = u64::from_le_bytes(head);
    if n > len - 8 || n > 100 << 20 {
        return Err(damaged(
            model,
            path,
            format!(
                "truncated or not a safetensors file: a header of {n} bytes in a file of {len}"
            ),
        ));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|e| damaged(model, path, e.to_string()))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| damaged(model, path, format!("damaged safetensors header: {e}")))?;
    let end = header
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    if 8 + n + end > len {
        return Err(damaged(
            model,
            path,
            format!(
                "truncated: its tensors need {} bytes but the file has {len} (an interrupted download?)",
                8 + n + end
            ),
        ));
    }
    Ok(())
}

/// The safetensors weight files of a model folder, sorted.
pub fn safetensors_files(model: &str, dir: &Path) -> ModelResult<Vec<PathBuf>> {
    // A sharded checkpoint names its shards in model.safetensors.index.json: exactly those
    // are read (a repository may also hold another copy, e.g. Mistral's consolidated file).
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let listed = read_json(model, &index)?;
        let mut files: Vec<PathBuf> = listed["weight_map"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str())
                    .map(|f| dir.join(f))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.dedup();
        if files.is_empty() {
            return Err(ModelError::File {
                model: model.to_string(),
                path: index.display().to_string(),
                problem: "its weight_map names no files".to_string(),
            });
        }
        if let Some(missing) = files.iter().find(|f| !f.exists()) {
            return Err(ModelError::File {
                model: model.to_string(),
                path: missing.display().to_string(),
                problem: "missing (named by model.safetensors.index.json)".to_string(),
            });
        }
        return Ok(files);
    }
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
