//! `hf://datasets/...` against a loopback server that speaks the Hub's URL layout
//! (resolve/ for files with Range requests, api/datasets/…/revision/… for listings).
//! One test function: HF_* variables are process-wide.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use prefflow::Engine;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// HF_* variables are process-wide: the tests that set them take turns.
pub(crate) static HUB_ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One repository: private flag and files per branch.
#[derive(Default, Clone)]
pub(crate) struct Repo {
    pub private: bool,
    pub branches: HashMap<String, BTreeMap<String, Vec<u8>>>,
}

/// What the stand-in does with the next commit request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    /// Answer with this status.
    Status(u16),
    /// Close the connection without an answer.
    Drop,
    /// Never answer (the client times out, or the test kills it).
    Hang,
    /// Answer with this status and an error message that echoes the request's headers, as
    /// some proxies do.
    EchoHeaders(u16),
}

/// A commit as the stand-in applied it.
#[derive(Debug, Clone)]
pub(crate) struct Commit {
    pub repo: String,
    pub branch: String,
    pub summary: String,
    pub paths: Vec<String>,
}

#[derive(Default)]
pub(crate) struct Hub {
    /// "datasets/org/demo" or "org/tiny-rm" (models).
    pub repos: Mutex<HashMap<String, Repo>>,
    /// Authorization headers seen, to check the token is sent as a Bearer header only.
    pub auth: Mutex<Vec<String>>,
    pub requests: Mutex<usize>,
    /// Every request as text (request line, headers but Authorization, body), to check for
    /// the token.
    pub log: Mutex<Vec<String>>,
    /// Bodies of repo-create requests.
    pub created: Mutex<Vec<serde_json::Value>>,
    pub commits: Mutex<Vec<Commit>>,
    /// Commit requests received (applied or not).
    pub commit_requests: Mutex<usize>,
    /// Commits per "repo@branch": the branch's head is COMMIT before any, a new sha after each.
    pub heads: Mutex<HashMap<String, u64>>,
    /// Faults for the next commit requests, in order.
    pub faults: Mutex<VecDeque<Fault>>,
    /// Told when a commit request hangs.
    pub hung: tokio::sync::Notify,
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

fn json(status: &str, value: serde_json::Value) -> Vec<u8> {
    respond(
        status,
        &[("Content-Type".into(), "application/json".into())],
        value.to_string().as_bytes(),
    )
}

fn b64(text: &str) -> Vec<u8> {
    let table = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            _ => 63,
        }
    };
    let clean: Vec<u8> = text.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= table(*c) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    out
}

/// The head commit of a branch: COMMIT until something is committed to it.
fn head(hub: &Hub, repo: &str, branch: &str) -> String {
    let n = hub
        .heads
        .lock()
        .unwrap()
        .get(&format!("{repo}@{branch}"))
        .copied()
        .unwrap_or(0);
    if n == 0 {
        return COMMIT.to_string();
    }
    let h = format!("{repo}@{branch}")
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    format!("{h:016x}{n:024x}")
}

/// The branch a revision names: a branch, COMMIT (main), or a branch's head.
fn branch_of(hub: &Hub, repo: &Repo, repo_id: &str, rev: &str) -> Option<String> {
    if repo.branches.contains_key(rev) {
        return Some(rev.to_string());
    }
    if rev == COMMIT {
        return Some("main".to_string());
    }
    repo.branches
        .keys()
        .find(|b| head(hub, repo_id, b) == rev)
        .cloned()
}

/// The reply to one request; None: say nothing and close (a dropped connection), or hang.
fn handle(
    hub: &Hub,
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> Option<Vec<u8>> {
    *hub.requests.lock().unwrap() += 1;
    let path = path.split('?').next().unwrap_or("").to_string();
    let token = headers
        .get("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_string);
    if path == "/api/whoami-v2" {
        return Some(match token.as_deref() {
            None => json("401 Unauthorized", serde_json::json!({"error": "no token"})),
            Some(t) => {
                let role = if t.contains("read_only") {
                    "read"
                } else {
                    "write"
                };
                json(
                    "200 OK",
                    serde_json::json!({"type": "user", "name": "tester",
                        "auth": {"type": "access_token", "accessToken": {"displayName": "t", "role": role}}}),
                )
            }
        });
    }
    if method == "POST" && path == "/api/repos/create" {
        let req: serde_json::Value = serde_json::from_slice(body).unwrap();
        hub.created.lock().unwrap().push(req.clone());
        let key = format!(
            "datasets/{}/{}",
            req["organization"].as_str().unwrap(),
            req["name"].as_str().unwrap()
        );
        let mut repos = hub.repos.lock().unwrap();
        if repos.contains_key(&key) {
            return Some(json(
                "409 Conflict",
                serde_json::json!({"error": "You already created this dataset repo"}),
            ));
        }
        let main = BTreeMap::from([(
            ".gitattributes".to_string(),
            b"*.parquet filter=lfs\n".to_vec(),
        )]);
        repos.insert(
            key.clone(),
            Repo {
                private: req["private"].as_bool().unwrap_or(false),
                branches: HashMap::from([("main".to_string(), main)]),
            },
        );
        return Some(json(
            "200 OK",
            serde_json::json!({"url": format!("http://hub/{key}")}),
        ));
    }
    if let Some(api) = path.strip_prefix("/api/") {
        // datasets/ORG/NAME/{preupload,commit,branch}/BRANCH
        let parts: Vec<&str> = api.splitn(5, '/').collect();
        if method == "POST" && parts.len() == 5 && parts[0] == "datasets" {
            let key = format!("datasets/{}/{}", parts[1], parts[2]);
            let branch = parts[4].replace("%2F", "/");
            match parts[3] {
                "preupload" => {
                    let req: serde_json::Value = serde_json::from_slice(body).unwrap();
                    let files: Vec<_> = req["files"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|f| serde_json::json!({"path": f["path"], "uploadMode": "regular", "shouldIgnore": false}))
                        .collect();
                    return Some(json("200 OK", serde_json::json!({"files": files})));
                }
                "branch" => {
                    let mut repos = hub.repos.lock().unwrap();
                    let repo = repos.get_mut(&key)?;
                    let main = repo.branches.get("main").cloned().unwrap_or_default();
                    repo.branches.insert(branch, main);
                    return Some(json("200 OK", serde_json::json!({})));
                }
                "commit" => {
                    *hub.commit_requests.lock().unwrap() += 1;
                    let fault = hub.faults.lock().unwrap().pop_front();
                    match fault {
                        Some(Fault::Status(code)) => {
                            return Some(json(
                                &format!("{code} Fault"),
                                serde_json::json!({"error": "stand-in fault"}),
                            ));
                        }
                        Some(Fault::Drop) => return None,
                        Some(Fault::Hang) => {
                            hub.hung.notify_one();
                            return Some(Vec::new());
                        }
                        Some(Fault::EchoHeaders(code)) => {
                            let echoed: Vec<String> =
                                headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                            return Some(json(
                                &format!("{code} Fault"),
                                serde_json::json!({"error": format!("bad request with headers {}", echoed.join("; "))}),
                            ));
                        }
                        None => {}
                    }
                    let text = String::from_utf8_lossy(body).to_string();
                    // A commit naming a parent that is not the branch's head is refused, as
                    // the Hub does (412), so a concurrent push is detected.
                    let parent = text.lines().find_map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).ok()?;
                        (v["key"] == "header")
                            .then(|| v["value"]["parentCommit"].as_str().map(str::to_string))
                            .flatten()
                    });
                    if let Some(parent) = parent
                        && parent != head(hub, &key, &branch)
                    {
                        return Some(json(
                            "412 Precondition Failed",
                            serde_json::json!({"error": "A commit has happened since. Please refresh and try again."}),
                        ));
                    }
                    let mut summary = String::new();
                    let mut paths = Vec::new();
                    let mut repos = hub.repos.lock().unwrap();
                    let Some(files) = repos
                        .get_mut(&key)
                        .and_then(|r| r.branches.get_mut(&branch))
                    else {
                        return Some(json(
                            "404 Not Found",
                            serde_json::json!({"error": "no such branch"}),
                        ));
                    };
                    for line in text.lines().filter(|l| !l.is_empty()) {
                        let v: serde_json::Value = serde_json::from_str(line).unwrap();
                        match v["key"].as_str().unwrap() {
                            "header" => {
                                summary = v["value"]["summary"].as_str().unwrap().to_string()
                            }
                            "file" => {
                                let p = v["value"]["path"].as_str().unwrap().to_string();
                                files.insert(
                                    p.clone(),
                                    b64(v["value"]["content"].as_str().unwrap()),
                                );
                                paths.push(p);
                            }
                            "deletedFile" => {
                                let p = v["value"]["path"].as_str().unwrap().to_string();
                                files.remove(&p);
                                paths.push(format!("-{p}"));
                            }
                            other => panic!("unexpected commit entry {other}"),
                        }
                    }
                    drop(repos);
                    *hub.heads
                        .lock()
                        .unwrap()
                        .entry(format!("{key}@{branch}"))
                        .or_insert(0) += 1;
                    let oid = head(hub, &key, &branch);
                    hub.commits.lock().unwrap().push(Commit {
                        repo: key,
                        branch,
                        summary,
                        paths,
                    });
                    return Some(json(
                        "200 OK",
                        serde_json::json!({"commitOid": oid, "commitUrl": "http://hub/commit"}),
                    ));
                }
                _ => {}
            }
        }
        // Repository info: api/[datasets/]ORG/NAME[/revision/REV]
        let (repo, revision) = match api.split_once("/revision/") {
            Some((r, rev)) => (r, rev.replace("%2F", "/")),
            None => (api, "main".to_string()),
        };
        let repo = repo.strip_prefix("models/").unwrap_or(repo);
        let repos = hub.repos.lock().unwrap();
        let Some(r) = repos.get(repo) else {
            return Some(respond(
                "404 Not Found",
                &[("X-Error-Code".into(), "RepoNotFound".into())],
                b"no such repo",
            ));
        };
        let branch = branch_of(hub, r, repo, &revision);
        let Some(files) = branch.as_ref().and_then(|b| r.branches.get(b)) else {
            return Some(respond(
                "404 Not Found",
                &[("X-Error-Code".into(), "RevisionNotFound".into())],
                b"no such revision",
            ));
        };
        let siblings: Vec<_> = files
            .keys()
            .map(|f| serde_json::json!({"rfilename": f}))
            .collect();
        return Some(json(
            "200 OK",
            serde_json::json!({"id": repo, "sha": head(hub, repo, branch.as_deref().unwrap_or("main")), "private": r.private, "siblings": siblings}),
        ));
    }
    let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return Some(respond("404 Not Found", &[], b"not found"));
    };
    let (rev, file) = rest.split_once('/').unwrap_or(("", ""));
    let repos = hub.repos.lock().unwrap();
    let branch = repos
        .get(repo)
        .and_then(|r| branch_of(hub, r, repo, rev))
        .unwrap_or_else(|| "main".to_string());
    // The commit the file is served from: the branch's head, as the Hub says.
    let commit = head(hub, repo, &branch);
    let data = repos
        .get(repo)
        .and_then(|r| r.branches.get(&branch))
        .and_then(|files| files.get(file));
    let Some(data) = data else {
        return Some(respond(
            "404 Not Found",
            &[("X-Error-Code".into(), "EntryNotFound".into())],
            b"",
        ));
    };
    let etag = format!(
        "\"etag-{}-{}-{}\"",
        repo.replace('/', "-"),
        file.replace('/', "-"),
        data.len()
    );
    if data.is_empty() {
        return Some(respond(
            "200 OK",
            &[
                ("ETag".into(), etag),
                ("X-Repo-Commit".into(), commit.clone()),
            ],
            b"",
        ));
    }
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
    let mut reply = respond(
        "206 Partial Content",
        &[
            ("ETag".into(), etag),
            ("X-Repo-Commit".into(), commit.clone()),
            (
                "Content-Range".into(),
                format!("bytes {start}-{end}/{}", data.len()),
            ),
        ],
        &data[start..=end],
    );
    if method == "HEAD" {
        let head_end = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        reply.truncate(head_end);
    }
    Some(reply)
}

pub(crate) async fn serve(listener: TcpListener, hub: Arc<Hub>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let hub = Arc::clone(&hub);
        tokio::spawn(async move {
            let Some(super::support::Request {
                method,
                path,
                headers,
                body,
            }) = super::support::read_request(&mut socket).await
            else {
                return;
            };
            if let Some(a) = headers.get("authorization") {
                hub.auth.lock().unwrap().push(a.clone());
            }
            let shown: Vec<String> = headers
                .iter()
                .filter(|(k, _)| *k != "authorization")
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            hub.log.lock().unwrap().push(format!(
                "{method} {path}\n{}\n{}",
                shown.join("\n"),
                String::from_utf8_lossy(&body)
            ));
            match handle(&hub, &method, &path, &headers, &body) {
                Some(reply) if reply.is_empty() => {
                    // Hang: hold the connection open until the client gives up.
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                }
                Some(reply) => {
                    let _ = socket.write_all(&reply).await;
                    let _ = socket.shutdown().await;
                }
                None => {}
            }
        });
    }
}

/// Starts the stand-in on a free loopback port.
pub(crate) async fn start(hub: Arc<Hub>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (format!("http://{addr}"), tokio::spawn(serve(listener, hub)))
}

pub(crate) async fn count(engine: &Engine, sql: &str) -> i64 {
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
    let repo = |files: HashMap<String, Vec<u8>>| Repo {
        private: false,
        branches: HashMap::from([("main".to_string(), files.into_iter().collect())]),
    };
    let hub = Arc::new(Hub::default());
    hub.repos.lock().unwrap().extend([
        ("datasets/org/demo".to_string(), repo(dataset)),
        ("org/tiny-rm".to_string(), repo(model)),
    ]);
    let _env = HUB_ENV.lock().await;
    let (endpoint, server) = start(Arc::clone(&hub)).await;
    let home = tempfile::tempdir().unwrap();
    // SAFETY: the tests that set HF_* take turns (HUB_ENV), and no other test reads them.
    unsafe {
        std::env::set_var("HF_ENDPOINT", &endpoint);
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
