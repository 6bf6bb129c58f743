//! What the integration tests share: sessions, the `prefflow` binary, tables as text.

use std::path::Path;
use std::process::{Command, Output};

use datafusion::arrow::record_batch::RecordBatch;
use prefflow::{CacheMode, Engine, SessionOptions};

/// The checkout: bundled models (`models/`, laid out by scripts/fetch-models), queries and
/// data are read from here.
pub(crate) const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A test session: two partitions (so a partitioned plan is exercised on any machine) and no
/// result cache (every model call really runs).
pub(crate) fn engine() -> Engine {
    engine_with(SessionOptions {
        target_partitions: Some(2),
        cache: Some(CacheMode::Off),
        ..Default::default()
    })
}

/// A session with these options.
pub(crate) fn engine_with(options: SessionOptions) -> Engine {
    Engine::with_options(&options).unwrap()
}

/// Runs from the checkout, where the bundled models are (relative model paths resolve there).
pub(crate) fn at_root() {
    std::env::set_current_dir(ROOT).unwrap();
    assert!(
        Path::new("models/all-minilm-l6-v2/model.safetensors").exists(),
        "models/ is missing: run scripts/fetch-models (scripts/test does)"
    );
}

/// Record batches as the shell prints them.
pub(crate) fn table(batches: &[RecordBatch]) -> String {
    datafusion::arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string()
}

/// Runs `sql` and gives its rows as the shell prints them.
pub(crate) async fn text(e: &Engine, sql: &str) -> String {
    table(&e.query(sql).await.unwrap())
}

/// The `prefflow` binary.
pub(crate) fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prefflow"))
}

/// Runs `prefflow args` in `dir`, with a fresh result cache per folder (models really run).
pub(crate) fn prefflow(args: &[&str], dir: &Path) -> Output {
    prefflow_env(args, dir, &[])
}

/// [`prefflow`] with more environment variables.
pub(crate) fn prefflow_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = binary();
    c.args(args)
        .current_dir(dir)
        .env("PREFFLOW_CACHE_DIR", dir.join(".prefflow-cache"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run prefflow")
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One HTTP request to a loopback stand-in (the Hub's, an OpenAI-style server's).
pub(crate) struct Request {
    pub method: String,
    pub path: String,
    /// Names in lower case.
    pub headers: std::collections::HashMap<String, String>,
    pub body: Vec<u8>,
}

/// Reads one request: method, path, headers (lower-case names) and body (Content-Length or
/// chunked).
pub(crate) async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tokio::io::AsyncReadExt::read(socket, &mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let headers: std::collections::HashMap<String, String> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    let mut body = buf[head_end..].to_vec();
    if let Some(n) = headers
        .get("content-length")
        .and_then(|n| n.parse::<usize>().ok())
    {
        while body.len() < n {
            match tokio::io::AsyncReadExt::read(socket, &mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(k) => body.extend_from_slice(&chunk[..k]),
            }
        }
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        while !body.windows(5).any(|w| w == b"0\r\n\r\n") {
            match tokio::io::AsyncReadExt::read(socket, &mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(k) => body.extend_from_slice(&chunk[..k]),
            }
        }
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let i = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..i]).unwrap().trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[i + 2..i + 2 + size]);
            rest = &rest[i + 4 + size..];
        }
        body = out;
    }
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}
