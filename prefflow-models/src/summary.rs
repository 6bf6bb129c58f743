//! What `SHOW MODELS` says of a model: its architecture, parameter count, stored dtype and
//! context length, read from the files' headers (config.json, safetensors headers, the GGUF
//! header) without loading weights.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{ModelError, ModelResult};
use crate::source::read_json;
use crate::types::{ModelKind, ModelSpec};

/// A model's description.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// config.json's `architectures[0]`, or the GGUF `general.architecture`.
    pub architecture: String,
    /// Weights in the files, if known.
    pub parameters: Option<u64>,
    /// The dtype most weights are stored in (f32, bf16, q4_1, ...).
    pub dtype: String,
    /// The longest sequence the model takes (RoPE scaling included), if known.
    pub context: Option<usize>,
}

impl Summary {
    /// Reads `spec`'s headers.
    pub fn read(spec: &ModelSpec) -> ModelResult<Self> {
        match (spec.kind, &spec.gguf) {
            (ModelKind::Remote, _) => Ok(Self {
                architecture: "remote (OpenAI-compatible)".into(),
                ..Self::default()
            }),
            (_, Some(file)) => gguf(&spec.name, file),
            _ => folder(&spec.name, &spec.path),
        }
    }
}

fn gguf(model: &str, file: &Path) -> ModelResult<Summary> {
    let bad = |problem: String| ModelError::File {
        model: model.into(),
        path: file.display().to_string(),
        problem,
    };
    let mut reader = std::fs::File::open(file).map_err(|e| bad(e.to_string()))?;
    let ct = candle_core::quantized::gguf_file::Content::read(&mut reader)
        .map_err(|e| bad(e.to_string()))?;
    let architecture = ct
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let mut by_dtype: HashMap<String, u64> = HashMap::new();
    let mut parameters = 0u64;
    for info in ct.tensor_infos.values() {
        let n = info.shape.elem_count() as u64;
        parameters += n;
        *by_dtype
            .entry(format!("{:?}", info.ggml_dtype).to_lowercase())
            .or_default() += n;
    }
    let context = crate::transformer::Config::from_gguf(&ct)
        .map(|c| c.context)
        .ok();
    Ok(Summary {
        architecture,
        parameters: Some(parameters),
        dtype: most(by_dtype),
        context,
    })
}

fn folder(model: &str, dir: &Path) -> ModelResult<Summary> {
    let config = read_json(model, &dir.join("config.json"))?;
    let architecture = config["architectures"][0]
        .as_str()
        .or_else(|| config["model_type"].as_str())
        .unwrap_or_default()
        .to_string();
    let mut by_dtype: HashMap<String, u64> = HashMap::new();
    let mut parameters = 0u64;
    let files = crate::source::safetensors_files(model, dir).unwrap_or_default();
    for f in &files {
        // Only the header is read: its length, then the JSON table of names, dtypes, shapes.
        let header = safetensors_header(f).map_err(|problem| ModelError::File {
            model: model.into(),
            path: f.display().to_string(),
            problem,
        })?;
        for (name, t) in header.as_object().into_iter().flatten() {
            if name == "__metadata__" {
                continue;
            }
            let n: u64 = t["shape"]
                .as_array()
                .map(|s| s.iter().filter_map(|d| d.as_u64()).product())
                .unwrap_or(0);
            parameters += n;
            let dtype = t["dtype"].as_str().unwrap_or("?").to_lowercase();
            *by_dtype.entry(dtype).or_default() += n;
        }
    }
    let num = |k: &str| config[k].as_u64().map(|v| v as usize);
    let context = crate::transformer::Config::from_json(&config)
        .map(|c| c.context)
        .ok()
        .or_else(|| {
            read_json(model, &dir.join("sentence_bert_config.json"))
                .ok()
                .and_then(|s| s["max_seq_length"].as_u64().map(|v| v as usize))
        })
        .or_else(|| num("max_position_embeddings"));
    Ok(Summary {
        architecture,
        parameters: (!files.is_empty()).then_some(parameters),
        dtype: most(by_dtype),
        context,
    })
}

/// The dtype holding the most weights.
fn most(by_dtype: HashMap<String, u64>) -> String {
    let mut v: Vec<(String, u64)> = by_dtype.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.into_iter().next().map(|(d, _)| d).unwrap_or_default()
}

/// The JSON header of a safetensors file (8 bytes of length, then the table).
fn safetensors_header(path: &Path) -> Result<serde_json::Value, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u64::from_le_bytes(len);
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    if len > size.saturating_sub(8) || len > 100 << 20 {
        return Err(format!(
            "safetensors header of {len} bytes in a file of {size}"
        ));
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).map_err(|e| e.to_string())?;
    serde_json::from_slice(&buf).map_err(|e| format!("safetensors header: {e}"))
}

/// Parameters as people write them: 135M, 1.5B.
pub fn human(parameters: u64) -> String {
    let p = parameters as f64;
    if p >= 1e9 {
        format!("{:.1}B", p / 1e9)
    } else if p >= 1e6 {
        format!("{:.0}M", p / 1e6)
    } else if p >= 1e3 {
        format!("{:.0}K", p / 1e3)
    } else {
        parameters.to_string()
    }
}
