//! The client half of a Ballista cluster (`prefflow run --cluster df://HOST:PORT`): the
//! scheduler's address, and the model declarations that travel with each task. The session
//! uses it to connect; [`crate::cluster_server`] (scheduler and executors) decodes what it
//! sends. See the server half for how a statement runs on a cluster.

use std::net::SocketAddr;

use prefflow_udfs::models::model::ModelKind;
use prefflow_udfs::models::{ModelRegistry, ModelSpec};

use crate::error::{PrefflowError, Result};

/// The `df://HOST:PORT` of a scheduler, as `(host, port)`.
pub fn parse_address(url: &str) -> Result<(String, u16)> {
    let bad = || {
        PrefflowError::Usage(format!(
            "--cluster expects df://HOST:PORT (a Ballista scheduler), got '{url}'"
        ))
    };
    let rest = url.strip_prefix("df://").ok_or_else(bad)?;
    let (host, port) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// Fails at once, naming the scheduler, when nothing listens at its address (instead of a
/// transport error at the first query).
pub fn check_reachable(host: &str, port: u16) -> Result<()> {
    use std::net::ToSocketAddrs;
    let unreachable = |why: String| {
        PrefflowError::Target(format!(
            "cannot reach the Ballista scheduler at df://{host}:{port}: {why} (start one with `prefflow scheduler --bind HOST:PORT`)"
        ))
    };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| unreachable(e.to_string()))?
        .collect();
    let mut last = String::from("no address");
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(unreachable(last))
}

/// The client's model declarations as the `prefflow.models` setting: name, address, resolved
/// path, options, kind and GGUF file of each (executors take what the client decided).
pub fn encode_models(models: &ModelRegistry) -> String {
    let specs: Vec<serde_json::Value> = models
        .list()
        .into_iter()
        .map(|s| {
            // Executors run in their own working folders: a relative model path is sent whole.
            let whole = |p: std::path::PathBuf| {
                if p.is_relative() && !p.as_os_str().is_empty() {
                    std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
                } else {
                    p
                }
            };
            serde_json::json!({
                "name": s.name,
                "uri": s.uri,
                "path": whole(s.path),
                "options": s.options,
                "kind": s.kind.as_str(),
                "gguf": s.gguf.map(whole),
            })
        })
        .collect();
    serde_json::Value::Array(specs).to_string()
}

/// The models of a `prefflow.models` setting (what [`encode_models`] wrote).
pub fn decode_models(text: &str) -> std::result::Result<Vec<ModelSpec>, String> {
    let values: Vec<serde_json::Value> = serde_json::from_str(text)
        .map_err(|e| format!("prefflow.models is not a model list: {e}"))?;
    values
        .into_iter()
        .map(|v| {
            let field = |k: &str| {
                v[k].as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("prefflow.models: a model lacks '{k}'"))
            };
            Ok(ModelSpec {
                name: field("name")?,
                uri: field("uri")?,
                path: field("path")?.into(),
                options: serde_json::from_value(v["options"].clone())
                    .map_err(|e| format!("prefflow.models: bad options: {e}"))?,
                kind: ModelKind::parse(&field("kind")?)
                    .ok_or_else(|| format!("prefflow.models: unknown kind {}", v["kind"]))?,
                gguf: v["gguf"].as_str().map(Into::into),
            })
        })
        .collect()
}
