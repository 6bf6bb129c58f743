//! `hf://datasets/...` against a loopback server that speaks the Hub's URL layout
//! (resolve/ for files with Range requests, api/datasets/…/revision/… for listings).
//! One test function: HF_* variables are process-wide.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prefflow::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

struct Hub {
    /// Repository ("datasets/org/demo", "org/tiny-rm") -> file -> bytes.
    repos: HashMap<String, HashMap<String, Vec<u8>>>,
    /// Authorization headers seen, to check the token is sent.
    auth: Mutex<Vec<String>>,
    requests: Mutex<usize>,
}

fn respond(status: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn handle(hub: &Hub, request: &str) -> Vec<u8> {
    *hub.requests.lock().unwrap() += 1;
    let mut lines = request.split("\r\n");
    let path = lines
        .next()
        .unwrap_or("")
        .split(' ')
        .nth(1)
        .unwrap_or("")
        .to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    if let Some(a) = headers.get("authorization") {
        hub.auth.lock().unwrap().push(a.clone());
    }
    if let Some(api) = path.strip_prefix("/api/") {
        let repo = api.split("/revision/").next().unwrap_or("");
        let repo = repo.strip_prefix("models/").unwrap_or(repo);
        let Some(files) = hub.repos.get(repo) else {
            return respond("404 Not Found", &[], b"no such repo");
        };
        let siblings: Vec<_> = files
            .keys()
            .map(|f| format!("{{\"rfilename\":\"{f}\"}}"))
            .collect();
        let body = format!(
            "{{\"sha\":\"{COMMIT}\",\"siblings\":[{}]}}",
            siblings.join(",")
        );
        return respond(
            "200 OK",
            &[("Content-Type".into(), "application/json".into())],
            body.as_bytes(),
        );
    }
    let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return respond("404 Not Found", &[], b"not found");
    };
    let file = rest.split_once('/').map(|(_rev, f)| f).unwrap_or("");
    let Some(data) = hub.repos.get(repo).and_then(|files| files.get(file)) else {
        return respond(
            "404 Not Found",
            &[("X-Error-Code".into(), "EntryNotFound".into())],
            b"",
        );
    };
    let (start, end) = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| {
            (
                a.parse::<usize>().unwrap(),
                b.parse::<usize>().unwrap().min(data.len() - 1),
            )
        })
        .unwrap_or((0, data.len() - 1));
    let etag = format!(
        "\"etag-{}-{}\"",
        repo.replace('/', "-"),
        file.replace('/', "-")
    );
    respond(
        "206 Partial Content",
        &[
            ("ETag".into(), etag),
            ("X-Repo-Commit".into(), COMMIT.into()),
            (
                "Content-Range".into(),
                format!("bytes {start}-{end}/{}", data.len()),
            ),
        ],
        &data[start..=end],
    )
}

async fn serve(listener: TcpListener, hub: Arc<Hub>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let hub = Arc::clone(&hub);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let reply = handle(&hub, &String::from_utf8_lossy(&buf));
            let _ = socket.write_all(&reply).await;
            let _ = socket.shutdown().await;
        });
    }
}

async fn count(engine: &Engine, sql: &str) -> i64 {
    let batches = engine
        .query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let col = batches[0].column(0);
    col.as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .expect("count(*) is Int64")
        .value(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hf_datasets_through_a_loopback_hub() {
    let dataset = HashMap::from([
        (
            "data/train.jsonl".to_string(),
            b"{\"q\":\"a\",\"n\":1}\n{\"q\":\"b\",\"n\":2}\n{\"q\":\"c\",\"n\":3}\n".to_vec(),
        ),
        (
            "data/test.jsonl".to_string(),
            b"{\"q\":\"d\",\"n\":4}\n".to_vec(),
        ),
        ("README.md".to_string(), b"# demo".to_vec()),
    ]);
    // A model repository: the tiny BERT reward model fixture.
    let model_dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reward/bert");
    let model: HashMap<String, Vec<u8>> = std::fs::read_dir(&model_dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    let repos = HashMap::from([
        ("datasets/org/demo".to_string(), dataset),
        ("org/tiny-rm".to_string(), model),
    ]);
    let hub = Arc::new(Hub {
        repos,
        auth: Mutex::new(Vec::new()),
        requests: Mutex::new(0),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, Arc::clone(&hub)));
    let home = tempfile::tempdir().unwrap();
    // SAFETY: this test binary has one test, and nothing else reads the environment meanwhile.
    unsafe {
        std::env::set_var("HF_ENDPOINT", format!("http://{addr}"));
        std::env::set_var("HF_HOME", home.path());
        std::env::set_var("HF_TOKEN", "hf_test_secret");
    }
    let engine = Engine::with_options(&prefflow::SessionOptions {
        cache: Some(prefflow::CacheMode::Off),
        ..Default::default()
    })
    .unwrap();

    // One file, by path in FROM.
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM 'hf://datasets/org/demo/data/train.jsonl'"
        )
        .await,
        3
    );
    // A glob and a revision.
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM 'hf://datasets/org/demo@main/data/*.jsonl'"
        )
        .await,
        4
    );
    // A folder, through CREATE EXTERNAL TABLE.
    engine
        .sql("CREATE EXTERNAL TABLE demo STORED AS JSONL LOCATION 'hf://datasets/org/demo/data'")
        .await
        .unwrap();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM demo WHERE n > 1").await,
        3
    );

    // A model from the Hub: CREATE MODEL downloads it, then it runs like a local one.
    engine
        .sql("CREATE MODEL rm FROM 'hf://org/tiny-rm@main'")
        .await
        .unwrap();
    let batches = engine
        .query("SELECT ai_reward('rm', 'Solve for x: 3x + 7 = 22.', 'x equals 5.')")
        .await
        .unwrap();
    let score = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Float64Array>()
        .unwrap()
        .value(0);
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model_dir.parent().unwrap().join("reference.json")).unwrap(),
    )
    .unwrap();
    let expected = reference["bert"]["scores"][2].as_f64().unwrap();
    assert!((score - expected).abs() < 1e-4, "{score} vs {expected}");
    assert!(
        home.path()
            .join("hub/models--org--tiny-rm/snapshots")
            .join(COMMIT)
            .join("model.safetensors")
            .exists()
    );
    let err = engine
        .sql("CREATE MODEL nope FROM 'hf://org/missing'")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model 'nope'") && err.contains("hf://org/missing"),
        "{err}"
    );
    assert!(!err.contains("hf_test_secret"), "{err}");

    // Files land in HF_HOME's Hub cache, and the token went out as a Bearer header.
    let cached = home
        .path()
        .join("hub/datasets--org--demo/snapshots")
        .join(COMMIT)
        .join("data/train.jsonl");
    assert!(cached.exists(), "{}", cached.display());
    let auth = hub.auth.lock().unwrap().clone();
    assert!(
        !auth.is_empty() && auth.iter().all(|a| a == "Bearer hf_test_secret"),
        "{auth:?}"
    );

    // A missing file: a clear error naming the address, never the token.
    let err = engine
        .query("SELECT * FROM 'hf://datasets/org/demo/data/nope.jsonl'")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hf://datasets/org/demo/data/nope.jsonl"),
        "{err}"
    );
    assert!(!err.contains("hf_test_secret"), "{err}");

    // Offline after the first fetch: with the server gone, a cached file still reads.
    server.abort();
    let before = *hub.requests.lock().unwrap();
    let engine = Engine::with_options(&prefflow::SessionOptions {
        cache: Some(prefflow::CacheMode::Off),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM 'hf://datasets/org/demo/data/train.jsonl'"
        )
        .await,
        3
    );
    assert_eq!(*hub.requests.lock().unwrap(), before);
}
