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
                "/v1/embeddings" => {
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
                _ => {
                    let _ = stream
                        .write_all(
                            respond("404 Not Found", "", "{\"error\": \"no such path\"}".into())
                                .as_bytes(),
                        )
                        .await;
                    return;
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
    // A server without /tokenize: the error names what was asked and what it answered.
    let err = e
        .query("SELECT ai_logprob('remote', 'a', 'b')")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("POST /tokenize with messages gave the server refused the request to /tokenize: HTTP 404")
            && err.contains("POST /apply-template: the server refused the request to /apply-template: HTTP 404"),
        "{err}"
    );
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
        err.contains("no answer after 5 attempts (last: HTTP 500: boom)"),
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
    /// When each request arrived.
    arrivals: Vec<std::time::Instant>,
    /// Each request's first message, in the order they arrived.
    order: Vec<String>,
    /// Dead: it answers nothing more and accepts no connection.
    dead: bool,
}

/// `die_after`: after that many answers the server stops: open requests get no answer and new
/// connections are refused.
async fn capped_server(
    slots: usize,
    delay: Duration,
    die_after: Option<usize>,
) -> (String, Arc<Mutex<Capacity>>) {
    let log = Arc::new(Mutex::new(Capacity::default()));
    let state = Arc::clone(&log);
    let alive = Arc::clone(&log);
    let addr = listen(
        move || !alive.lock().unwrap().dead,
        move |mut stream| {
            let log = Arc::clone(&state);
            async move {
                let Some(request) = super::support::read_request(&mut stream).await else {
                    return;
                };
                log.lock().unwrap().arrivals.push(std::time::Instant::now());
                let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
                let key = body["messages"][0]["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let admitted = {
                    let mut l = log.lock().unwrap();
                    l.order.push(key.clone());
                    if l.open >= slots {
                        l.refused += 1;
                        false
                    } else {
                        l.open += 1;
                        l.most_open = l.most_open.max(l.open);
                        true
                    }
                };
                let (status, extra, body) = if admitted {
                    tokio::time::sleep(delay).await;
                    let mut l = log.lock().unwrap();
                    l.open -= 1;
                    if l.dead {
                        return;
                    }
                    *l.answered.entry(key.clone()).or_insert(0) += 1;
                    if die_after.is_some_and(|n| l.answered.len() >= n) {
                        l.dead = true;
                    }
                    let answer = json!({
                        "choices": [{"message": {"role": "assistant", "content": format!("echo: {key}")}}],
                        "usage": {"total_tokens": 200}
                    });
                    ("200 OK", "", answer.to_string())
                } else {
                    ("429 Too Many Requests", "retry-after: 0.05\r\n", "{}".to_string())
                };
                let _ = stream.write_all(http(status, extra, &body).as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        },
    )
    .await;
    (addr, log)
}

/// `('row 0'), ('row 1'), ...`: a VALUES list of `n` distinct prompts.
fn numbered_rows(n: usize) -> String {
    (0..n)
        .map(|i| format!("('row {i}')"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An HTTP/1.1 answer with a JSON body (`extra`: more header lines, each ending in CRLF).
fn http(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// A loopback server handling each connection with `handle` for as long as `open()` holds
/// (then it stops listening: later connections are refused); its address.
async fn listen<F, Fut>(open: impl Fn() -> bool + Send + 'static, handle: F) -> String
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            if !open() {
                return;
            }
            tokio::spawn(handle(stream));
        }
    });
    addr
}

/// Against a server with 12 slots and a cap of 128: the in-flight target adapts down to what
/// the server takes, so few requests are refused (a fixed 128 in flight would have most of
/// them refused), every row is answered exactly once, and EXPLAIN ANALYZE shows the target,
/// the push-backs and the time spent waiting for admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_target_adapts_to_the_servers_capacity() {
    const N: usize = 300;
    let (addr, log) = capped_server(12, Duration::from_millis(30), None).await;
    let e = engine();
    e.sql(&format!(
        "CREATE MODEL small FROM 'openai://{addr}/v1/m'
         OPTIONS (concurrency '128', backoff '0.01', max_retries '50', timeout '5')"
    ))
    .await
    .unwrap();
    let rows = numbered_rows(N);
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

/// One model over two servers, one of which dies after 30 answers: its requests fail over to
/// the other (every row answered exactly once, with the same answer either would give), and
/// both served part of the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_model_over_two_endpoints_survives_one_dying() {
    const N: usize = 200;
    let (a, log_a) = capped_server(8, Duration::from_millis(20), None).await;
    let (b, log_b) = capped_server(8, Duration::from_millis(20), Some(30)).await;
    let e = engine();
    e.sql(&format!(
        "CREATE MODEL two FROM 'openai://{a}/v1/m'
         OPTIONS (endpoints 'openai://{b}/v1', concurrency '16', backoff '0.01',
                  max_retries '20', timeout '5')"
    ))
    .await
    .unwrap();
    let rows = numbered_rows(N);
    // Each row's answer is the one either server gives it.
    let check = text(
        &e,
        &format!(
            "SELECT count(*) AS answered, count(*) FILTER (WHERE a <> 'echo: ' || p) AS wrong
             FROM (SELECT p, ai_generate('two', p, named_struct('max_tokens', 4)) AS a
                   FROM (VALUES {rows}) t(p))"
        ),
    )
    .await;
    assert!(check.contains("| 200      | 0     |"), "{check}");
    let (la, lb) = (log_a.lock().unwrap(), log_b.lock().unwrap());
    assert!(lb.dead, "the second server died mid-run");
    assert_eq!(lb.answered.len(), 30);
    let mut all: HashMap<&String, u32> = HashMap::new();
    for (k, n) in la.answered.iter().chain(lb.answered.iter()) {
        *all.entry(k).or_insert(0) += n;
    }
    assert_eq!(all.len(), N, "every row answered");
    assert!(
        all.values().all(|&n| n == 1),
        "exactly once over both servers"
    );
    assert!(la.answered.len() >= N - 30);
}

/// `requests_per_minute` is kept at the server: 120 requests at 2,400 a minute (40 a second,
/// a bucket of one second's worth) arrive over at least two seconds, and no half-second or
/// one-second window holds more than the bucket and that window's refill; a rate of 0 is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_is_respected_at_the_server() {
    const N: usize = 120;
    let (addr, log) = capped_server(256, Duration::from_millis(5), None).await;
    let e = engine();
    let bad = e
        .sql(&format!(
            "CREATE MODEL limited FROM 'openai://{addr}/v1/m' OPTIONS (requests_per_minute '0')"
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        bad.contains("requests_per_minute") && bad.contains("above 0"),
        "{bad}"
    );
    e.sql(&format!(
        "CREATE MODEL limited FROM 'openai://{addr}/v1/m'
         OPTIONS (requests_per_minute '2400', concurrency '256', timeout '5')"
    ))
    .await
    .unwrap();
    let rows = numbered_rows(N);
    e.query(&format!(
        "SELECT ai_generate('limited', p, named_struct('max_tokens', 4)) FROM (VALUES {rows}) t(p)"
    ))
    .await
    .unwrap();
    let l = log.lock().unwrap();
    assert_eq!(l.answered.len(), N);
    let mut at = l.arrivals.clone();
    at.sort();
    let span = at[at.len() - 1].duration_since(at[0]);
    assert!(
        span >= Duration::from_millis(1900),
        "120 requests in {span:?}"
    );
    for (window, most) in [
        (Duration::from_millis(500), 61),
        (Duration::from_secs(1), 81),
    ] {
        let busiest = (0..at.len())
            .map(|i| {
                at[i..]
                    .iter()
                    .take_while(|t| t.duration_since(at[i]) < window)
                    .count()
            })
            .max()
            .unwrap();
        assert!(busiest <= most, "{busiest} requests within {window:?}");
    }
}

/// `on_error 'record'`: every row gives {value, error, attempts}; the failed row's error and
/// attempts are there, a NULL input stays NULL, the good rows are cached and the failed one
/// is not, so a second run sends requests only for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_record_keeps_good_rows_and_retries_only_failures() {
    let (addr, log) = server().await;
    let cache = tempfile::tempdir().unwrap();
    let e = super::support::engine_with(prefflow::SessionOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        cache: Some(prefflow::CacheMode::ReadWrite),
        ..Default::default()
    });
    declare(
        &e,
        "recorded",
        &addr,
        ", on_error 'record', max_retries '2'",
    )
    .await;
    let query =
        "SELECT p, r.value AS value, r.error AS error, r.attempts AS attempts, r IS NULL AS nothing
         FROM (SELECT p, ai_generate('recorded', p, named_struct('max_tokens', 4)) AS r
               FROM (VALUES ('fine'), ('this always fails'), (NULL)) t(p))
         ORDER BY p NULLS LAST";
    let t = text(&e, query).await;
    let lines: Vec<&str> = t.lines().filter(|l| l.starts_with("| ")).skip(1).collect();
    assert_eq!(lines.len(), 3, "{t}");
    assert!(
        lines[0].starts_with("| fine ") && lines[0].contains("echo: fine"),
        "{t}"
    );
    assert!(lines[0].contains("| false "), "{t}");
    assert!(
        lines[1].contains("no answer after 3 attempts (last: HTTP 500: boom)"),
        "{t}"
    );
    assert!(lines[1].contains("| 3        | false "), "{t}");
    assert!(
        lines[2].contains("| true "),
        "the NULL prompt gives NULL: {t}"
    );
    let attempts = |log: &Arc<Mutex<Log>>, key: &str| {
        log.lock().unwrap().attempts[&format!("/v1/chat/completions {key}")]
    };
    let (fine, failing) = (attempts(&log, "fine"), attempts(&log, "this always fails"));
    assert_eq!(failing, 3);
    // Again: the good row comes from the cache, the failed one is asked again.
    let again = text(&e, query).await;
    assert_eq!(attempts(&log, "fine"), fine, "{again}");
    assert_eq!(attempts(&log, "this always fails"), 6);
    // The typed record's fields.
    let t = text(
        &e,
        "SELECT arrow_typeof(ai_generate('recorded', 'fine')) AS t",
    )
    .await;
    assert!(
        t.contains(r#"Struct("value": Utf8, "error": Utf8, "attempts": Int32)"#),
        "{t}"
    );
}

/// A stand-in that answers like vLLM: `/tokenize` (a token per character, its code point as
/// the id; `messages` rendered as `<u>content<a>` per user turn), `/v1/completions` with
/// `echo` + `logprobs` (token i's log-probability is -(id % 7 + 1) / 10; the model named
/// `pl` answers in vLLM's `prompt_logprobs` form instead) and `/pooling` (the assistant
/// turn's length as the score).
async fn vllm_like() -> (String, Arc<Mutex<Vec<String>>>) {
    let paths = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&paths);
    let addr = listen(
        || true,
        move |mut stream| {
            let seen = Arc::clone(&seen);
            async move {
                let Some(request) = super::support::read_request(&mut stream).await else {
                    return;
                };
                seen.lock().unwrap().push(request.path.clone());
                let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
                let ids = |t: &str| t.chars().map(|c| c as u64).collect::<Vec<_>>();
                let lp = |id: u64| -((id % 7 + 1) as f64) / 10.0;
                let answer = match request.path.as_str() {
                    // llama.cpp's server reads `content` and ignores `messages`.
                    "/tokenize" if body["model"] == "llama" => {
                        json!({"tokens": ids(body["content"].as_str().unwrap_or(""))})
                    }
                    "/apply-template" => {
                        let m = body["messages"].as_array().unwrap();
                        let text: String = m
                            .iter()
                            .map(|t| format!("<u>{}", t["content"].as_str().unwrap()))
                            .collect::<String>()
                            + "<a>";
                        json!({"prompt": text})
                    }
                    "/v1/completions" if body["model"] == "llama" => {
                        let said = json!({"error": {"code": 500, "message": "Only no echo is supported"}});
                        let _ = stream
                            .write_all(http("500 Internal Server Error", "", &said.to_string()).as_bytes())
                            .await;
                        return;
                    }
                    "/tokenize" => match body["messages"].as_array() {
                        Some(m) => {
                            let text: String = m
                                .iter()
                                .map(|t| format!("<u>{}", t["content"].as_str().unwrap()))
                                .collect::<String>()
                                + "<a>";
                            json!({"tokens": ids(&text), "count": text.chars().count()})
                        }
                        None => json!({"tokens": ids(body["prompt"].as_str().unwrap())}),
                    },
                    "/v1/completions" => {
                        let sent: Vec<u64> = body["prompt"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_u64().unwrap())
                            .collect();
                        assert_eq!(body["echo"], json!(true));
                        let choice = if body["model"] == "pl" {
                            let list: Vec<Value> = sent
                                .iter()
                                .enumerate()
                                .map(|(i, &id)| {
                                    if i == 0 {
                                        Value::Null
                                    } else {
                                        json!({id.to_string(): {"logprob": lp(id), "rank": 1}})
                                    }
                                })
                                .collect();
                            json!({"text": "x", "prompt_logprobs": list})
                        } else {
                            let mut list: Vec<Value> = vec![Value::Null];
                            list.extend(sent.iter().skip(1).map(|&id| json!(lp(id))));
                            list.push(json!(-0.5)); // the generated token
                            json!({"text": "x", "logprobs": {"token_logprobs": list}})
                        };
                        json!({"choices": [choice], "usage": {"prompt_tokens": sent.len(), "completion_tokens": 1}})
                    }
                    "/pooling" => {
                        let reply = body["messages"][1]["content"].as_str().unwrap();
                        json!({"data": [{"index": 0, "data": [reply.chars().count() as f64]}]})
                    }
                    _ => Value::Null,
                };
                let (status, answer) = if answer.is_null() {
                    ("404 Not Found", "{}".to_string())
                } else {
                    ("200 OK", answer.to_string())
                };
                let _ = stream.write_all(http(status, "", &answer).as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        },
    )
    .await;
    (addr, paths)
}

/// ai_logprob, token_count and ai_reward on the server: the sums, counts and scores the
/// stand-in's tokenizer and log-probabilities give, in both of vLLM's answer forms, with the
/// prompt rendered by the server's chat template; NULL in, NULL out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprob_token_count_and_reward_are_computed_on_the_server() {
    let (addr, paths) = vllm_like().await;
    let e = engine();
    for name in ["echo", "pl"] {
        e.sql(&format!(
            "CREATE MODEL {name} FROM 'openai://{addr}/v1/{name}' OPTIONS (timeout '5')"
        ))
        .await
        .unwrap();
    }
    let lp = |t: &str| -> f64 {
        t.chars()
            .map(|c| -(((c as u64) % 7 + 1) as f64) / 10.0)
            .sum()
    };
    let expected = lp("Paris.");
    for name in ["echo", "pl"] {
        let t = text(
            &e,
            &format!(
                "SELECT ai_logprob('{name}', 'Capital of France?', 'Paris.') AS lp,
                        ai_logprob('{name}', 'q', '') AS empty,
                        ai_logprob('{name}', NULL, 'x') IS NULL AS null_in"
            ),
        )
        .await;
        let got: f64 = t
            .lines()
            .nth(3)
            .and_then(|l| l.split('|').nth(1))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{t}"));
        assert!(
            (got - expected).abs() < 1e-9,
            "{name}: {got} vs {expected}\n{t}"
        );
        assert!(t.contains("| 0.0 ") && t.contains("| true "), "{t}");
    }
    let t = text(
        &e,
        "SELECT token_count('echo', 'hello wörld') AS n, token_count('echo', NULL) IS NULL AS null_in,
                ai_reward('echo', 'q', 'four') AS score",
    )
    .await;
    assert!(t.contains("| 11 | true    | 4.0   |"), "{t}");
    let paths = paths.lock().unwrap();
    assert!(paths.iter().any(|p| p == "/tokenize"));
    assert!(paths.iter().any(|p| p == "/pooling"));
    assert!(
        !paths.iter().any(|p| p == "/apply-template"),
        "vLLM renders messages itself"
    );
}

/// Rows that share a system prompt stay on one lane (so a server's prefix cache keeps it),
/// whatever order they come in: with one request in flight, one lane, a context's rows go one
/// after another (generation::dispatch_tests checks the lanes taking turns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_sharing_a_prompt_prefix_go_out_together() {
    let (addr, log) = capped_server(1, Duration::from_millis(2), None).await;
    let e = engine();
    // One partition: one batch, whose order the client chooses.
    e.sql("SET datafusion.execution.target_partitions = 1")
        .await
        .unwrap();
    e.sql(&format!(
        "CREATE MODEL one FROM 'openai://{addr}/v1/m' OPTIONS (concurrency '1', timeout '5')"
    ))
    .await
    .unwrap();
    let rows = (0..12)
        .map(|i| format!("('system {}', 'question {i}')", ["A", "B", "C"][i % 3]))
        .collect::<Vec<_>>()
        .join(", ");
    let t = text(
        &e,
        &format!(
            "SELECT count(DISTINCT a) AS answers FROM (
               SELECT ai_generate('one', [named_struct('role', 'system', 'content', s),
                                         named_struct('role', 'user', 'content', q)]) AS a
               FROM (VALUES {rows}) t(s, q))"
        ),
    )
    .await;
    assert!(t.contains("| 3       |"), "{t}");
    let order = log.lock().unwrap().order.clone();
    assert_eq!(order.len(), 12);
    let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(switches, 2, "grouped by system prompt: {order:?}");
}

/// `tokens_per_minute`: a request takes its estimate (about 30 tokens here), the answer's
/// usage (200) settles it, and the debt that leaves is paid back before the next request goes:
/// after 20 answers at once (4,000 tokens against a bucket of 1,000 refilling 1,000 a second)
/// one more request waits about three seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_minute_counts_the_answers_usage() {
    let (addr, log) = capped_server(256, Duration::from_millis(5), None).await;
    let e = engine();
    e.sql(&format!(
        "CREATE MODEL metered FROM 'openai://{addr}/v1/m'
         OPTIONS (tokens_per_minute '60000', timeout '10')"
    ))
    .await
    .unwrap();
    let generate = |rows: String| {
        format!(
            "SELECT ai_generate('metered', p, named_struct('max_tokens', 4)) FROM (VALUES {rows}) t(p)"
        )
    };
    let t0 = std::time::Instant::now();
    e.query(&generate(numbered_rows(20))).await.unwrap();
    let first = t0.elapsed();
    let t1 = std::time::Instant::now();
    e.query(&generate("('one more')".to_string()))
        .await
        .unwrap();
    let waited = t1.elapsed();
    assert!(
        first < Duration::from_secs(2),
        "estimates fit the bucket: {first:?}"
    );
    assert!(
        waited >= Duration::from_millis(2500),
        "the usage's debt is paid back first: {waited:?}"
    );
    assert_eq!(log.lock().unwrap().answered.len(), 21);
}

/// Against a server that answers like llama.cpp's: `/tokenize` ignores `messages`, so the
/// prompt is rendered through `/apply-template`; token_count uses the `content` field; and
/// ai_logprob ends with the server's own reason (it refuses `echo`), not a bare HTTP 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_llama_cpp_like_server_renders_through_apply_template_and_refuses_echo() {
    let (addr, paths) = vllm_like().await;
    let e = engine();
    e.sql(&format!(
        "CREATE MODEL llama FROM 'openai://{addr}/v1/llama'
         OPTIONS (timeout '5', backoff '0.01', max_retries '1')"
    ))
    .await
    .unwrap();
    let t = text(&e, "SELECT token_count('llama', 'hello') AS n").await;
    assert!(t.contains("| 5 |"), "{t}");
    let err = e
        .query("SELECT ai_logprob('llama', 'q', 'r')")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no answer after 2 attempts (last: HTTP 500: Only no echo is supported)"),
        "{err}"
    );
    assert!(paths.lock().unwrap().iter().any(|p| p == "/apply-template"));
}
