//! A model's identity for the result cache: a hash of the files that decide its outputs, its
//! CREATE MODEL options and the device (remote models: their address and options). File hashes
//! are remembered by (path, size, mtime) in memory and in the store, so re-runs do not re-read
//! gigabytes of weights.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use datafusion::common::{DataFusionError, Result};

use super::types::{ModelSpec, is_remote};
use crate::result_key::{FORMAT, Key, ResultStore, field};

/// File identities already hashed in this process: (path, length, modified) → BLAKE3.
pub type FileMemo = Mutex<HashMap<(PathBuf, u64, u128), Key>>;

/// A model's identity: the hash of the files that decide its outputs (weights, tokenizer,
/// configs, chat templates; not alternative exports such as ONNX), its CREATE MODEL options
/// and the device. Files are hashed once per (path, length, mtime) per process, and the hash
/// is remembered in the store so later runs skip reading gigabytes.
pub fn model_identity(
    spec: &ModelSpec,
    device: &str,
    store: Option<&dyn ResultStore>,
    writable: bool,
    memo: &FileMemo,
) -> Result<Key> {
    if is_remote(&spec.uri) {
        // The server's weights cannot be hashed: the address and options (a `revision`
        // option the user bumps when the server's model changes) stand for them.
        let mut h = blake3::Hasher::new();
        field(&mut h, FORMAT.as_bytes());
        field(&mut h, spec.uri.as_bytes());
        // How requests are sent (key variable, limits, retries) does not change answers.
        for (k, v) in spec
            .options
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "revision" | "dimensions"))
        {
            field(&mut h, k.as_bytes());
            field(&mut h, v.as_bytes());
        }
        return Ok(*h.finalize().as_bytes());
    }
    let mut files = Vec::new();
    if spec.path.is_file() {
        files.push(spec.path.clone());
    } else {
        collect_files(&spec.path, &mut files).map_err(|e| io_err(&spec.name, &spec.path, e))?;
    }
    files.sort();
    let mut h = blake3::Hasher::new();
    field(&mut h, FORMAT.as_bytes());
    for file in &files {
        let rel = file.strip_prefix(&spec.path).unwrap_or(file.as_path());
        field(&mut h, rel.to_string_lossy().as_bytes());
        field(&mut h, &file_hash(&spec.name, file, store, writable, memo)?);
    }
    for (k, v) in &spec.options {
        // The revision is already in the file hashes; it stays in the key all the same.
        field(&mut h, k.as_bytes());
        field(&mut h, v.as_bytes());
    }
    field(&mut h, device.as_bytes());
    Ok(*h.finalize().as_bytes())
}

fn io_err(model: &str, path: &Path, e: std::io::Error) -> DataFusionError {
    DataFusionError::Execution(format!(
        "model '{model}': cannot read {}: {e}",
        path.display()
    ))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            if !matches!(name, "onnx" | "openvino") {
                collect_files(&path, out)?;
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("safetensors" | "gguf" | "json" | "txt" | "model" | "jinja")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

fn file_hash(
    model: &str,
    path: &Path,
    store: Option<&dyn ResultStore>,
    writable: bool,
    memo: &FileMemo,
) -> Result<Key> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(model, path, e))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let id = (path.to_path_buf(), meta.len(), modified);
    if let Some(k) = memo.lock().expect("memo lock").get(&id) {
        return Ok(*k);
    }
    // The store remembers file hashes under a key of their own kind.
    let mut mk = blake3::Hasher::new();
    field(&mut mk, b"file-hash");
    field(&mut mk, path.to_string_lossy().as_bytes());
    field(&mut mk, &id.1.to_le_bytes());
    field(&mut mk, &id.2.to_le_bytes());
    let memo_key = *mk.finalize().as_bytes();
    let remembered = store
        .and_then(|s| s.get_many(&[memo_key], writable).ok())
        .and_then(|mut v| v.pop().flatten())
        .and_then(|v| <Key>::try_from(v.as_slice()).ok());
    let key = match remembered {
        Some(k) => k,
        None => {
            let mut h = blake3::Hasher::new();
            let mut f = std::fs::File::open(path).map_err(|e| io_err(model, path, e))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(|e| io_err(model, path, e))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            let k = *h.finalize().as_bytes();
            if let Some(s) = store.filter(|_| writable) {
                // Only a shortcut: a failure to remember it costs a rehash next run.
                let _ = s.put_many(&[(memo_key, k.to_vec())]);
            }
            k
        }
    };
    memo.lock().expect("memo lock").insert(id, key);
    Ok(key)
}
