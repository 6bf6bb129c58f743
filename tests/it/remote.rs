//! Remote (OpenAI-compatible) models against a test server on 127.0.0.1 that answers
//! deterministically and injects 429 (with Retry-After), 500, timeouts, dropped connections
//! and malformed JSON: every row is answered exactly once, none lost or duplicated, and the
//! retries show in EXPLAIN ANALYZE. Also: bad answers, unreachable servers, on_error 'null',
//! and the API key never showing in errors, plans, logs or dataset cards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prefflow::Engine;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "sk-test-5ecret-never-print-me";

/// What the server saw.
#[derive(Debug, Default)]
struct Log {
    /// Attempts per request key.
    attempts: HashMap<String, u32>,
    /// Good answers per request key.
    answered: HashMap<String, u32>,
    /// Faults injected.
    faults: u32,
    /// Requests that carried the expected bearer token.
    authorized: u32,
    /// Seeds received.
    seeds: Vec<u64>,
}

/// The fault a request gets: keys are hashed, and each key fails on at most its first two
/// attempts, each time in a different way.
fn fault(key: &str, attempt: u32) -> Option<u32> {
    if key.contains("always fails") {
        return Some(1);
    }
    if attempt >= 2 {
        return None;
    }
    let h = key
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    let f = (h + attempt * 3) % 7;
    (f < 5).then_some(f)
}

async fn serve(listener: TcpListener, log: Arc<Mutex<Log>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(handle(stream, Arc::clone(&log)));
    }
}

async fn handle(mut stream: TcpStream, log: Arc<Mutex<Log>>) {
    let Some(request) = super::support::read_request(&mut stream).await else {
        return;
    };
    let path = request.path;
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let key = match path.as_str() {
        "/v1/chat/completions" => body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_string(),
        "/v1/completions" => body["prompt"].as_str().unwrap_or("").to_string(),
        "/v1/embeddings" => body["input"].to_string(),
        _ => String::new(),
    };
    let seed = body["seed"].as_u64();
    let attempt = {
        let mut log = log.lock().unwrap();
        if request
            .headers
            .get("authorization")
            .is_some_and(|a| a.eq_ignore_ascii_case(&format!("Bearer {SECRET}")))
        {
            log.authorized += 1;
        }
        let a = log.attempts.entry(format!("{path} {key}")).or_insert(0);
        *a += 1;
        *a - 1
    };
    let fault = fault(&key, attempt);
    if fault.is_some() {
        log.lock().unwrap().faults += 1;
    }
    let respond = |status: &str, extra: &str, body: String| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    let reply = match fault {
        Some(0) => respond(
            "429 Too Many Requests",
            "retry-after: 0.05\r\n",
            "{}".into(),
        ),
        Some(1) => respond(
            "500 Internal Server Error",
            "",
            "{\"error\": \"boom\"}".into(),
        ),
        Some(2) => {
            // Longer than the client's timeout; then hang up without answering.
            tokio::time::sleep(Duration::from_secs(2)).await;
            return;
        }
        Some(3) => return, // dropped connection
        Some(_) => respond("200 OK", "", "{\"choices\": [".into()), // malformed JSON
        None if key.contains("no choices") => respond("200 OK", "", "{\"object\": \"x\"}".into()),
        None => {
            let answer = match path.as_str() {
                "/v1/chat/completions" => json!({
                    "choices": [{"message": {"role": "assistant", "content": format!("echo: {key}")}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2}
                }),
                "/v1/completions" => json!({"choices": [{"text": format!("completed: {key}")}]}),
                _ => {
                    let inputs = body["input"].as_array().cloned().unwrap_or_default();
                    json!({"data": inputs.iter().enumerate().map(|(i, t)| {
                        let t = t.as_str().unwrap_or("");
                        let embedding = match t {
                            "null element" => json!([null, 1.0, -1.0]),
                            "text element" => json!([1.0, "0.5", -1.0]),
                            _ => json!([t.len() as f64, 1.0, -1.0]),
                        };
                        json!({"index": i, "embedding": embedding})
                    }).collect::<Vec<_>>()})
                }
            };
            let mut log = log.lock().unwrap();
            *log.answered.entry(format!("{path} {key}")).or_insert(0) += 1;
            if let Some(s) = seed {
                log.seeds.push(s);
            }
            respond("200 OK", "", answer.to_string())
        }
    };
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A running test server: its address and log.
async fn server() -> (String, Arc<Mutex<Log>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Log::default()));
    tokio::spawn(serve(listener, Arc::clone(&log)));
    (addr, log)
}

// Every row goes to the server: the support session has no result cache.
use super::support::engine;

async fn declare(e: &Engine, name: &str, addr: &str, extra: &str) {
    // SAFETY: set once with the same value by every test; read by the client per request.
    unsafe { std::env::set_var("PREFFLOW_TEST_REMOTE_KEY", SECRET) };
    e.sql(&format!(
        "CREATE MODEL {name} FROM 'openai://{addr}/v1/test-model'
         OPTIONS (api_key_env 'PREFFLOW_TEST_REMOTE_KEY', timeout '0.3', backoff '0.01',
                  max_retries '4', concurrency '4'{extra})"
    ))
    .await
    .unwrap();
}

use super::support::text;

const ROWS: usize = 40;

fn prompts() -> String {
    (0..ROWS)
        .map(|i| format!("('prompt number {i}')"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_is_answered_exactly_once_through_injected_faults() {
    let (addr, log) = server().await;
    let e = engine();
    declare(&e, "remote", &addr, "").await;
    let query = format!(
        "SELECT p, ai_generate('remote', p, named_struct('max_tokens', 8, 'seed', 3)) AS a
         FROM (VALUES {}) t(p) ORDER BY p",
        prompts()
    );
    let out = e.query(&query).await.unwrap();
    let table = super::support::table(&out);
    for i in 0..ROWS {
        assert!(
            table.contains(&format!("| prompt number {i} "))
                && table.contains(&format!("echo: prompt number {i} ")),
            "row {i} missing:\n{table}"
        );
    }
    assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), ROWS);
    let faults = {
        let log = log.lock().unwrap();
        assert_eq!(log.answered.len(), ROWS, "one key per row");
        assert!(
            log.answered.values().all(|&n| n == 1),
            "answered exactly once: {:?}",
            log.answered
        );
        assert!(log.faults >= 20, "faults injected: {}", log.faults);
        assert!(
            log.authorized as usize >= ROWS,
            "the key is sent as a bearer token"
        );
        // Per-row seeds are passed through, one per row, all different.
        let mut seeds = log.seeds.clone();
        seeds.sort();
        seeds.dedup();
        assert_eq!(seeds.len(), ROWS);
        log.faults
    };

    // EXPLAIN ANALYZE counts the retries: one per injected fault.
    let analyze = text(&e, &format!("EXPLAIN ANALYZE {query}")).await;
    let retries: u32 = analyze
        .split("retries=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retries in:\n{analyze}"));
    let second_faults = log.lock().unwrap().faults - faults;
    eprintln!(
        "{ROWS} rows: {faults} faults injected and survived in the first run; EXPLAIN ANALYZE run: {second_faults} faults, retries={retries}"
    );
    assert_eq!(retries, second_faults, "{analyze}");
    assert!(!analyze.contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_n_judge_translate_and_embed_run_remotely() {
    let (addr, _log) = server().await;
    let e = engine();
    declare(&e, "remote", &addr, ", dimensions '3'").await;
    let t = text(
        &e,
        "SELECT ai_generate_n('remote', 'hi there', 2) AS n,
                ai_generate('remote', 'raw text', named_struct('chat', false)) AS raw,
                ai_translate('remote', 'bonjour', 'English') IS NOT NULL AS translated,
                translate_json('remote', '{\"q\": \"salut monde\", \"n\": 1}', 'English') LIKE '{\"q\":\"echo: %\",\"n\":1}' AS json_kept,
                ai_judge('remote', 'q', 'a', 'b')['judgement_ab'] LIKE 'echo: %' AS judged,
                ai_embed('remote', 'abcd') AS e",
    )
    .await;
    assert!(t.contains("[echo: hi there, echo: hi there]"), "{t}");
    assert!(t.contains("completed: raw text"), "{t}");
    assert!(
        t.contains("| true       | true      | true   | [4.0, 1.0, -1.0] |"),
        "{t}"
    );

    // Functions that need weights say so.
    let err = e
        .query("SELECT ai_logprob('remote', 'a', 'b')")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("remote (OpenAI-compatible) model"), "{err}");
    // ai_embed needs the width up front.
    declare(&e, "nowidth", &addr, "").await;
    let err = e
        .query("SELECT ai_embed('nowidth', 'x')")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("OPTIONS (dimensions 'N')"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_with_nulls_or_text_are_refused_not_read_as_nan() {
    let (addr, _log) = server().await;
    let e = engine();
    declare(&e, "strict", &addr, ", dimensions '3'").await;
    declare(&e, "lenient", &addr, ", dimensions '3', on_error 'null'").await;
    for (input, shown) in [("null element", "null"), ("text element", "\"0.5\"")] {
        let err = e
            .query(&format!("SELECT ai_embed('strict', '{input}')"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "the embedding of row text '{input}' has {shown} at position"
            )) && err.contains("not a number"),
            "{err}"
        );
        let t = text(
            &e,
            &format!("SELECT ai_embed('lenient', '{input}') IS NULL AS refused"),
        )
        .await;
        assert!(t.contains("| true "), "{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_the_row_or_give_null() {
    let (addr, _log) = server().await;
    let e = engine();
    declare(&e, "strict", &addr, "").await;
    declare(&e, "lenient", &addr, ", on_error 'null'").await;
    let rows = "(VALUES ('fine'), ('no choices here'), ('this always fails')) t(p)";
    let err = e
        .query(&format!(
            "SELECT ai_generate('strict', p) FROM {rows} WHERE p <> 'this always fails'"
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ai_generate: model 'strict' at http://"),
        "{err}"
    );
    // Named by its prompt, which the user can find (not a batch-local index).
    assert!(
        err.contains("the row \"no choices here\": the answer has no choices"),
        "{err}"
    );
    let err = e
        .query(&format!(
            "SELECT ai_generate('strict', p) FROM {rows} WHERE p = 'this always fails'"
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no answer after 5 attempts (last: HTTP 500)"),
        "{err}"
    );
    // on_error 'null': NULL, never an empty string.
    let t = text(
        &e,
        &format!("SELECT p, ai_generate('lenient', p) IS NULL AS missing FROM {rows} ORDER BY p"),
    )
    .await;
    assert!(t.contains("| fine              | false   |"), "{t}");
    assert!(t.contains("| no choices here   | true    |"), "{t}");
    assert!(t.contains("| this always fails | true    |"), "{t}");

    // An unreachable server: the model and address are named after the retry budget.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap().to_string();
    drop(closed);
    declare(&e, "gone", &dead, "").await;
    let err = e
        .query("SELECT ai_generate('gone', 'x')")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "model 'gone' at http://{dead}/v1/test-model: the row \"x\": no answer after 5 attempts"
        )),
        "{err}"
    );
    assert!(!err.contains(SECRET));
}

#[test]
fn the_key_never_shows_in_logs_errors_plans_or_cards() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (addr, _log) = runtime.block_on(server());
    let dir = tempfile::tempdir().unwrap();
    let declare = format!(
        "CREATE MODEL remote FROM 'openai://{addr}/v1/test-model'
           OPTIONS (api_key_env 'PREFFLOW_TEST_REMOTE_KEY', timeout '0.3', backoff '0.01', max_retries '3');"
    );
    let run = |statements: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_prefflow"))
            .args([
                "sql",
                &format!("{declare} {statements}"),
                "--cache-dir",
                "cache",
            ])
            .current_dir(dir.path())
            .env("PREFFLOW_TEST_REMOTE_KEY", SECRET)
            .env("PREFFLOW_PROGRESS_SECONDS", "0.01")
            .output()
            .unwrap()
    };
    let mut seen = String::new();
    for (statements, ok) in [
        ("EXPLAIN SELECT ai_generate('remote', 'x')", true),
        ("EXPLAIN ANALYZE SELECT ai_generate('remote', 'x')", true),
        (
            "COPY (SELECT 'q' AS prompt, ai_generate('remote', 'chosen') AS chosen, 'r' AS rejected)
               TO 'pairs' STORED AS dpo",
            true,
        ),
        ("SELECT ai_generate('remote', 'this always fails')", false),
    ] {
        let out = run(statements);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{statements}: {stderr}");
        seen.push_str(&stderr);
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    assert!(
        seen.contains("ModelCallsExec: ai_generate(remote) [model=openai://"),
        "{seen}"
    );
    assert!(seen.contains("no answer after 4 attempts"), "{seen}");
    for entry in walk(dir.path()) {
        seen.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    assert!(dir.path().join("pairs/README.md").exists());
    assert!(!seen.contains(SECRET), "the key leaked");
    assert!(!seen.contains("5ecret"), "part of the key leaked");
    runtime.shutdown_background();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A server with `slots` request slots: beyond them it answers 429 (Retry-After 0.05 s) at
/// once; within them it answers after `delay`. It logs the most requests it held at once, the
/// refusals and the answers per prompt.
#[derive(Debug, Default)]
struct Capacity {
    open: usize,
    most_open: usize,
    refused: usize,
    answered: HashMap<String, u32>,
}

async fn capped_server(slots: usize, delay: Duration) -> (String, Arc<Mutex<Capacity>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Capacity::default()));
    let state = Arc::clone(&log);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let log = Arc::clone(&state);
            tokio::spawn(async move {
                let Some(request) = super::support::read_request(&mut stream).await else {
                    return;
                };
                let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
                let key = body["messages"][0]["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let admitted = {
                    let mut l = log.lock().unwrap();
                    if l.open >= slots {
                        l.refused += 1;
                        false
                    } else {
                        l.open += 1;
                        l.most_open = l.most_open.max(l.open);
                        true
                    }
                };
                let reply = if admitted {
                    tokio::time::sleep(delay).await;
                    let mut l = log.lock().unwrap();
                    l.open -= 1;
                    *l.answered.entry(key.clone()).or_insert(0) += 1;
                    let answer = json!({"choices": [{"message": {"role": "assistant", "content": format!("echo: {key}")}}]}).to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    )
                } else {
                    "HTTP/1.1 429 Too Many Requests\r\nretry-after: 0.05\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_string()
                };
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, log)
}

/// Against a server with 12 slots and a cap of 128: the in-flight target adapts down to what
/// the server takes, so few requests are refused (a fixed 128 in flight would have most of
/// them refused), every row is answered exactly once, and EXPLAIN ANALYZE shows the target,
/// the push-backs and the time spent waiting for admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_target_adapts_to_the_servers_capacity() {
    const N: usize = 300;
    let (addr, log) = capped_server(12, Duration::from_millis(30)).await;
    let e = engine();
    e.sql(&format!(
        "CREATE MODEL small FROM 'openai://{addr}/v1/m'
         OPTIONS (concurrency '128', backoff '0.01', max_retries '50', timeout '5')"
    ))
    .await
    .unwrap();
    let rows = (0..N)
        .map(|i| format!("('row {i}')"))
        .collect::<Vec<_>>()
        .join(", ");
    let query = format!(
        "SELECT p, ai_generate('small', p, named_struct('max_tokens', 4)) AS a FROM (VALUES {rows}) t(p)"
    );
    let out = e.query(&query).await.unwrap();
    assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), N);
    let (refused, most_open) = {
        let l = log.lock().unwrap();
        assert_eq!(l.answered.len(), N, "one answer per row");
        assert!(l.answered.values().all(|&n| n == 1), "exactly once");
        (l.refused, l.most_open)
    };
    eprintln!("{N} rows against 12 slots: {refused} refused, at most {most_open} held at once");
    assert!(most_open <= 12);
    // The start ramp's first round overshoots once (64 in flight against 12 slots); after
    // that the target stays near the capacity.
    assert!(refused < N / 2, "{refused} of {N} requests refused");
    let analyze = text(&e, &format!("EXPLAIN ANALYZE {query}")).await;
    let field = |name: &str| -> f64 {
        analyze
            .split(&format!("{name}="))
            .nth(1)
            .and_then(|r| r.split(|c: char| !(c.is_ascii_digit() || c == '.')).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{analyze}"))
    };
    let target = field("in_flight_target");
    assert!(
        (1.0..=40.0).contains(&target),
        "target {target}:\n{analyze}"
    );
    assert!(field("pushbacks") >= 1.0, "{analyze}");
    field("admission_wait");
}
