//! Hostile-but-ordinary use: outputs never destroy what prefflow did not write, inputs never
//! lose columns, nothing hangs or panics, secrets stay masked, bad models are refused at
//! CREATE MODEL, and errors say where and what. Each test runs the `prefflow` binary as a user
//! would, in a temporary folder, and checks the bytes of everything it must not touch.

use std::collections::BTreeMap;

use datafusion::arrow::array::Array;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) use super::support::{prefflow, prefflow_env, stderr, stdout};

/// Runs `sql` and expects it to fail with an error containing every one of `needles`.
pub(crate) fn fails(dir: &Path, sql: &str, needles: &[&str]) -> String {
    let o = prefflow(&["sql", sql], dir);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "expected failure of {sql}\n{err}");
    for n in needles {
        assert!(err.contains(n), "error of {sql} lacks {n:?}:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    err
}

pub(crate) fn succeeds(dir: &Path, sql: &str) -> String {
    let o = prefflow(&["sql", sql], dir);
    assert!(o.status.success(), "{sql}\n{}", stderr(&o));
    stdout(&o)
}

/// Every file under `dir` with its bytes.
pub(crate) fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == ".prefflow-cache") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

pub(crate) fn model(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/decoders")
        .join(name)
        .display()
        .to_string()
}

// ---- 1. Outputs never destroy what prefflow did not write ----

#[test]
fn copy_into_a_folder_of_inputs_keeps_every_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("data")).unwrap();
    std::fs::write(d.join("data/a.jsonl"), "{\"x\": 1}\n").unwrap();
    std::fs::write(d.join("data/b.jsonl"), "{\"x\": 2}\n").unwrap();
    std::fs::write(d.join("data/notes.txt"), "keep me").unwrap();
    let before = snapshot(d);
    // Plain formats into the inputs' folder.
    fails(
        d,
        "COPY (SELECT * FROM 'data/a.jsonl') TO 'data/' STORED AS parquet",
        &["data", "query reads"],
    );
    fails(
        d,
        "COPY (SELECT * FROM 'data/') TO 'data/out/' STORED AS parquet",
        &["inside", "query reads"],
    );
    // A folder that is not an earlier output of the same kind.
    fails(
        d,
        "COPY (SELECT 1 AS x) TO 'data/' STORED AS parquet",
        &["data", "notes.txt", "a.jsonl"],
    );
    assert_eq!(snapshot(d), before, "nothing changed");
}

#[test]
fn a_training_sink_never_replaces_a_project_folder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("project/src")).unwrap();
    std::fs::write(d.join("project/src/train.py"), "print('hi')").unwrap();
    std::fs::write(
        d.join("project/pairs.jsonl"),
        "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n",
    )
    .unwrap();
    let before = snapshot(d);
    fails(
        d,
        "COPY (SELECT * FROM 'project/pairs.jsonl') TO 'project' STORED AS dpo",
        &["project", "which the query reads"],
    );
    fails(
        d,
        "COPY (SELECT 'p' AS prompt, 'a' AS chosen, 'b' AS rejected) TO 'project' STORED AS dpo",
        &[
            "project",
            "is not a prefflow dpo dataset",
            "src/",
            "pairs.jsonl",
        ],
    );
    // A file is never replaced by a folder.
    std::fs::write(d.join("pairs_out"), "a file of mine").unwrap();
    fails(
        d,
        "COPY (SELECT 'p' AS prompt, 'a' AS chosen, 'b' AS rejected) TO 'pairs_out' STORED AS dpo",
        &["pairs_out is a file"],
    );
    // Nor the current directory, or a folder holding it.
    fails(
        d,
        "COPY (SELECT 'p' AS prompt, 'a' AS chosen, 'b' AS rejected) TO '.' STORED AS dpo",
        &["contains the current directory"],
    );
    let mut expected = before.clone();
    expected.insert(d.join("pairs_out"), b"a file of mine".to_vec());
    assert_eq!(snapshot(d), expected, "nothing changed");

    // An earlier prefflow output of the same kind is replaced; of another kind, refused.
    let pairs = "SELECT 'p' AS prompt, 'a' AS chosen, 'b' AS rejected";
    succeeds(d, &format!("COPY ({pairs}) TO 'out/pairs' STORED AS dpo"));
    succeeds(d, &format!("COPY ({pairs}) TO 'out/pairs' STORED AS dpo"));
    fails(
        d,
        "COPY (SELECT 'p' AS prompt, 'a' AS completion, true AS label) TO 'out/pairs' STORED AS kto",
        &["is not a prefflow kto dataset"],
    );
    assert!(d.join("out/pairs/train.parquet").exists());
}

#[test]
fn files_and_folders_never_replace_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("x.parquet")).unwrap();
    std::fs::write(d.join("x.parquet/mine.txt"), "mine").unwrap();
    std::fs::create_dir(d.join("notes")).unwrap();
    std::fs::write(d.join("notes/todo.md"), "- keep").unwrap();
    let before = snapshot(d);
    fails(
        d,
        "COPY (SELECT 1 AS x) TO 'x.parquet'",
        &["x.parquet is a folder"],
    );
    let o = prefflow(
        &[
            "sql",
            "SELECT 1 AS x",
            "--output",
            "notes",
            "--format",
            "csv",
        ],
        d,
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("notes is a folder"), "{}", stderr(&o));
    // Checked before any statement runs.
    let o = prefflow(
        &[
            "sql",
            "COPY (SELECT 1 AS x) TO 'ran.parquet'; SELECT 1 AS x",
            "--output",
            "notes",
            "--format",
            "csv",
        ],
        d,
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(!d.join("ran.parquet").exists(), "nothing ran");
    // A file target that is the query's own input.
    std::fs::write(d.join("in.csv"), "x\n1\n").unwrap();
    let o = prefflow(&["sql", "SELECT * FROM 'in.csv'", "--output", "in.csv"], d);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("own inputs"), "{}", stderr(&o));
    let mut expected = before;
    expected.insert(d.join("in.csv"), b"x\n1\n".to_vec());
    assert_eq!(snapshot(d), expected, "nothing changed");

    // Part files of an earlier COPY are replaced; the folder's other content is not touched.
    succeeds(d, "COPY (SELECT 1 AS x) TO 'parts/' STORED AS parquet");
    succeeds(d, "COPY (SELECT 2 AS x) TO 'parts/' STORED AS parquet");
    assert_eq!(
        succeeds(d, "SELECT sum(x) AS s FROM 'parts/'").trim(),
        "{\"s\":2}"
    );
}

#[test]
fn unwritable_targets_fail_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    fails(
        dir.path(),
        "COPY (SELECT 1 AS x) TO '/proc/x.parquet'",
        &["/proc"],
    );
    fails(
        dir.path(),
        "COPY (SELECT 1 AS x) TO '/proc/self/x/' STORED AS parquet",
        &["/proc"],
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    fails(
        dir.path(),
        "COPY (SELECT 1 AS x) TO 's3://bucket/x.parquet'",
        &["s3:// is not supported"],
    );
    fails(
        dir.path(),
        "COPY (SELECT 1 AS x) TO 'hf://datasets/me/x/x.parquet'",
        &["hf://datasets/me/x/x.parquet", "names a folder"],
    );
}

// ---- 2. No silent column loss on read; 6 and 16: damaged and unusual inputs ----

#[test]
fn json_lines_schemas_cover_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut late = String::new();
    for i in 0..1500 {
        if i == 1200 {
            late.push_str(&format!(
                "{{\"id\": {i}, \"system\": \"be brief\", \"note\": \"text\"}}\n"
            ));
        } else {
            late.push_str(&format!("{{\"id\": {i}, \"note\": null}}\n"));
        }
    }
    std::fs::write(d.join("late.jsonl"), late).unwrap();
    let out = succeeds(
        d,
        "SELECT count(system) AS s, max(note) AS n FROM 'late.jsonl'",
    );
    assert_eq!(out.trim(), "{\"s\":1,\"n\":\"text\"}");
    succeeds(d, "COPY (SELECT * FROM 'late.jsonl') TO 'copy.jsonl'");
    let copied = succeeds(d, "SELECT count(system) AS s FROM 'copy.jsonl'");
    assert_eq!(copied.trim(), "{\"s\":1}");

    let mut conflict = String::new();
    for i in 0..1500 {
        if i == 1299 {
            conflict.push_str("{\"id\": \"not a number\"}\n");
        } else {
            conflict.push_str(&format!("{{\"id\": {i}}}\n"));
        }
    }
    std::fs::write(d.join("conflict.jsonl"), conflict).unwrap();
    fails(
        d,
        "SELECT count(id) FROM 'conflict.jsonl'",
        &[
            "conflict.jsonl:1300",
            "field 'id' is text here but a number on line 1",
        ],
    );
    let mut objects = String::new();
    for i in 0..1500 {
        objects.push_str(if i == 1299 {
            "{\"m\": {\"a\": 1}}\n"
        } else {
            "{\"m\": \"text\"}\n"
        });
    }
    std::fs::write(d.join("objects.jsonl"), objects).unwrap();
    fails(
        d,
        "SELECT count(m) FROM 'objects.jsonl'",
        &[
            "objects.jsonl:1300",
            "field 'm' is an object here but text on line 1",
        ],
    );

    // A byte-order mark is read as pandas and datasets read it.
    std::fs::write(
        d.join("bom.jsonl"),
        "\u{feff}{\"q\": \"a\"}\n{\"q\": \"b\"}\n",
    )
    .unwrap();
    assert_eq!(
        succeeds(d, "SELECT count(*) AS n, max(q) AS m FROM 'bom.jsonl'").trim(),
        "{\"n\":2,\"m\":\"b\"}"
    );
}

#[test]
fn damaged_parquet_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("parts")).unwrap();
    succeeds(d, "COPY (SELECT 1 AS x) TO 'parts/a.parquet'");
    let whole = std::fs::read(d.join("parts/a.parquet")).unwrap();
    std::fs::write(d.join("empty.parquet"), b"").unwrap();
    fails(
        d,
        "SELECT * FROM 'empty.parquet'",
        &["empty.parquet", "0 bytes"],
    );
    std::fs::write(d.join("parts/b.parquet"), &whole[..whole.len() / 2]).unwrap();
    fails(
        d,
        "SELECT * FROM 'parts/*.parquet'",
        &["b.parquet", "truncated"],
    );
    fails(d, "SELECT * FROM 'parts/'", &["b.parquet", "truncated"]);
    fails(
        d,
        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 'parts/'",
        &["b.parquet"],
    );
}

// ---- 3. Sharding never multiplies work ----

#[test]
fn a_shard_key_no_table_has_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("q.jsonl"), "{\"id\": 1}\n{\"id\": 2}\n").unwrap();
    let o = prefflow(
        &[
            "sql",
            "SELECT * FROM 'q.jsonl'",
            "--shard",
            "0/2",
            "--shard-key",
            "prompt_id",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("prompt_id"), "{}", stderr(&o));
    let o = prefflow(
        &[
            "sql",
            "SELECT * FROM 'q.jsonl'",
            "--shard",
            "0/2",
            "--shard-key",
            "id",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

// ---- 4. A shared cache is never taken away ----

#[test]
fn read_mode_never_creates_or_moves_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cache = d.join("cache");
    let q = format!(
        "CREATE MODEL tiny FROM '{}'; SELECT ai_generate('tiny', 'hi', named_struct('max_tokens', 2)) AS a",
        model("qwen2")
    );
    let run = |mode: &str| {
        let cache_dir = cache.display().to_string();
        prefflow(&["sql", &q, "--cache", mode, "--cache-dir", &cache_dir], d)
    };
    let o = run("read");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !cache.join("results.redb").exists(),
        "read mode created the cache"
    );
    // Another program's file stays where it is in read mode.
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("results.redb"), b"someone else's file").unwrap();
    let o = run("read");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--cache read"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(cache.join("results.redb")).unwrap(),
        b"someone else's file"
    );
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        1,
        "nothing set aside"
    );
}

// ---- 7. No SQL input panics; NULL in gives NULL out ----

#[test]
fn null_arguments_in_every_position_never_panic() {
    let encoder = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-minilm-l6-v2");
    let reward = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reward/bert");
    let setup = format!(
        "CREATE MODEL dec FROM '{}'; CREATE MODEL enc FROM '{}'; CREATE MODEL rm FROM '{}';",
        model("qwen2"),
        encoder.display(),
        reward.display()
    );
    let opts = "named_struct('max_tokens', 2)";
    // (function, arguments, positions whose NULL must give NULL)
    let calls: Vec<(&str, Vec<String>, Vec<usize>)> = vec![
        ("strip_think", vec!["'a'".into()], vec![0]),
        (
            "extract_tag",
            vec!["'<a>x</a>'".into(), "'a'".into()],
            vec![0, 1],
        ),
        ("extract_boxed", vec!["'\\boxed{1}'".into()], vec![0]),
        (
            "render",
            vec!["'{{ x }}'".into(), "named_struct('x', 1)".into()],
            vec![0, 1],
        ),
        ("ai_embed", vec!["'enc'".into(), "'hello'".into()], vec![1]),
        (
            "ai_reward",
            vec!["'rm'".into(), "'q'".into(), "'a'".into()],
            vec![1, 2],
        ),
        (
            "ai_generate",
            vec!["'dec'".into(), "'hi'".into(), opts.into()],
            vec![1],
        ),
        (
            "ai_generate_n",
            vec!["'dec'".into(), "'hi'".into(), "2".into(), opts.into()],
            vec![1],
        ),
        (
            "ai_logprob",
            vec!["'dec'".into(), "'q'".into(), "'a'".into()],
            vec![1, 2],
        ),
        (
            "ai_judge",
            vec![
                "'dec'".into(),
                "'q'".into(),
                "'a'".into(),
                "'b'".into(),
                opts.into(),
            ],
            vec![1, 2, 3],
        ),
        (
            "ai_translate",
            vec![
                "'dec'".into(),
                "'hola'".into(),
                "'en'".into(),
                "'es'".into(),
                opts.into(),
            ],
            vec![1, 2],
        ),
        (
            "translate_json",
            vec![
                "'dec'".into(),
                "'{\"a\": \"hola amigo\"}'".into(),
                "'en'".into(),
                opts.into(),
            ],
            vec![1, 2],
        ),
        (
            "apply_chat_template",
            vec!["'dec'".into(), "'hi'".into(), "true".into()],
            vec![1, 2],
        ),
        ("token_count", vec!["'dec'".into(), "'hi'".into()], vec![1]),
    ];
    let mut statements = vec![setup];
    let mut expect_null = Vec::new();
    for (f, args, null_out) in &calls {
        for pos in 0..args.len() {
            for null in ["NULL", "CAST(NULL AS VARCHAR)", "n"] {
                let mut a = args.clone();
                a[pos] = null.to_string();
                let sql = format!(
                    "SELECT {f}({}) AS v FROM (SELECT NULL AS n UNION ALL SELECT NULL AS n)",
                    a.join(", ")
                );
                expect_null.push(null_out.contains(&pos));
                statements.push(sql);
            }
        }
    }
    // Aggregates and windows.
    for sql in [
        "SELECT arg_max(NULL, 1) AS v",
        "SELECT arg_max(1, NULL) AS v",
        "SELECT arg_min(n, n) AS v FROM (SELECT NULL AS n)",
        "SELECT kmeans(NULL, 2) OVER () AS v",
        "SELECT kmeans(make_array(1.0, 0.0), NULL) OVER () AS v",
        "SELECT near_duplicate(NULL, 0.9) OVER () AS v",
        "SELECT near_duplicate(make_array(1.0, 0.0), NULL) OVER () AS v",
    ] {
        statements.push(sql.to_string());
        expect_null.push(false);
    }
    // One session for all (models load once); each statement in a task of its own, so a
    // panic shows as a failed task instead of ending the test.
    let setup = statements.remove(0);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let engine = prefflow::Engine::with_options(&prefflow::SessionOptions {
        cache: Some(prefflow::CacheMode::Off),
        ..Default::default()
    })
    .unwrap();
    runtime.block_on(async {
        for st in setup.split(';').filter(|s| !s.trim().is_empty()) {
            engine.query(st).await.unwrap();
        }
    });
    for (sql, must_be_null) in statements.iter().zip(expect_null) {
        let (e, q) = (engine.clone(), sql.clone());
        let result =
            runtime.block_on(async move { tokio::spawn(async move { e.query(&q).await }).await });
        let result = match result {
            Ok(r) => r,
            Err(e) => panic!("{sql} panicked: {e}"),
        };
        match result {
            Ok(batches) => {
                if must_be_null {
                    for b in &batches {
                        assert_eq!(b.column(0).logical_null_count(), b.num_rows(), "{sql}");
                    }
                }
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains("panic"), "{sql}: {msg}");
            }
        }
    }
}

// ---- 8 and 14: servers that stall or echo secrets ----

/// A server answering every request with `status`, `headers` and `body` (`{auth}` is replaced
/// by the request's Authorization header); returns its address.
pub(crate) fn server(status: &'static str, headers: &'static str, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    // Its own runtime: the tests that use it are plain #[test]s.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((mut s, _)) = listener.accept().await {
                let Some(request) = super::support::read_request(&mut s).await else {
                    continue;
                };
                let auth = request
                    .headers
                    .get("authorization")
                    .map(|a| format!("authorization: {a}"))
                    .unwrap_or_default();
                let body = body.replace("{auth}", &auth);
                let reply = format!(
                    "HTTP/1.1 {status}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tokio::io::AsyncWriteExt::write_all(&mut s, reply.as_bytes()).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut s).await;
            }
        });
    });
    addr
}

#[test]
fn a_day_long_retry_after_is_capped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let addr = server("429 Too Many Requests", "Retry-After: 86400\r\n", "{}");
    let sql = format!(
        "CREATE MODEL big FROM 'openai://{addr}/v1/m' OPTIONS (max_retries '2', max_wait '0.2', backoff '0.01');
         SELECT ai_generate('big', 'hi') AS a"
    );
    let started = Instant::now();
    let err = fails(dir.path(), &sql, &["no answer after 3 attempts"]);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(err.contains("86400") && err.contains("capped"), "{err}");
}

#[test]
fn secrets_in_server_text_and_addresses_are_masked() {
    let dir = tempfile::tempdir().unwrap();
    let key = "sk-test-5ecret-value-123";
    let addr = server(
        "401 Unauthorized",
        "",
        "{\"error\": \"bad key, you sent {auth}\"}",
    );
    let env = [("MY_KEY", key)];
    let sql = format!(
        "CREATE MODEL big FROM 'openai://{addr}/v1/m' OPTIONS (api_key_env 'MY_KEY');
         SELECT ai_generate('big', 'hi') AS a"
    );
    let o = prefflow_env(&["sql", &sql], dir.path(), &env);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("HTTP 401") && err.contains("***"), "{err}");
    assert!(!err.contains(key) && !err.contains("5ecret"), "{err}");

    // Credentials in the address: never in SHOW MODELS, EXPLAIN or errors.
    let sql = format!(
        "CREATE MODEL u FROM 'openai://user:hunter2pass@{addr}/v1/m';
         SHOW MODELS"
    );
    let o = prefflow(&["sql", &sql], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("hunter2pass"), "{}", stdout(&o));
    let sql = format!(
        "CREATE MODEL u FROM 'openai://user:hunter2pass@{addr}/v1/m';
         EXPLAIN SELECT ai_generate('u', 'hi') AS a"
    );
    let o = prefflow(&["sql", &sql], dir.path());
    assert!(!stdout(&o).contains("hunter2pass") && !stderr(&o).contains("hunter2pass"));
    let sql = format!(
        "CREATE MODEL u FROM 'openai://user:hunter2pass@{addr}/v1/m';
         SELECT ai_generate('u', 'hi') AS a"
    );
    let o = prefflow(&["sql", &sql], dir.path());
    assert!(!stdout(&o).contains("hunter2pass") && !stderr(&o).contains("hunter2pass"));

    // An unset key variable is named at CREATE MODEL.
    let err = fails(
        dir.path(),
        &format!(
            "CREATE MODEL big FROM 'openai://{addr}/v1/m' OPTIONS (api_key_env 'NOT_SET_ANYWHERE_42')"
        ),
        &["NOT_SET_ANYWHERE_42", "not set"],
    );
    assert!(!err.contains(key));
}

// ---- 9, 10, 11, 13: generation and templates end ----

#[test]
fn generation_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = format!("CREATE MODEL tiny FROM '{}';", model("qwen2"));
    fails(
        d,
        &format!(
            "{m} SELECT ai_generate('tiny', 'hi', named_struct('truncate', true, 'max_tokens', 5000)) AS a"
        ),
        &["ai_generate", "max_tokens 5000", "context of 256"],
    );
    fails(
        d,
        &format!("{m} SELECT ai_generate('tiny', 'hi', named_struct('stop', '')) AS a"),
        &["ai_generate", "stop string is empty"],
    );
    // A prompt over the context names the row by its text.
    fails(
        d,
        &format!(
            "{m} SELECT ai_generate('tiny', concat('Where is the row', repeat(' word', 400)), named_struct('max_tokens', 4)) AS a"
        ),
        &["the row \"Where is the row word word"],
    );
    fails(
        d,
        &format!("{m} SELECT ai_generate('tiny', [named_struct('role', 'user')]) AS a"),
        &["message 1", "no 'content' field"],
    );
}

/// Output tokens of ai_generate(tiny) from EXPLAIN ANALYZE.
fn output_tokens(d: &Path, options: &str) -> (usize, String) {
    let sql = format!(
        "CREATE MODEL tiny FROM '{}';
         EXPLAIN ANALYZE SELECT ai_generate('tiny', 'Tell me a story', {options}) AS a",
        model("qwen2")
    );
    let o = prefflow(&["sql", &sql, "--cache", "off"], d);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    let at = out.find("output_tokens=").expect("output_tokens") + "output_tokens=".len();
    let n = out[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (n, out)
}

#[test]
fn stop_strings_stop_the_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let full = succeeds(
        d,
        &format!(
            "CREATE MODEL tiny FROM '{}'; SELECT ai_generate('tiny', 'Tell me a story', named_struct('max_tokens', 200)) AS a",
            model("qwen2")
        ),
    );
    let text: serde_json::Value = serde_json::from_str(full.trim()).unwrap();
    let text = text["a"].as_str().unwrap().to_string();
    let (all, _) = output_tokens(d, "named_struct('max_tokens', 200)");
    assert!(all > 20, "the fixture writes a long answer ({all} tokens)");
    // A stop string from early in the answer.
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 8..chars.len() / 8 + 3].iter().collect();
    let escaped = stop.replace('\'', "''");
    let (cut, plan) = output_tokens(
        d,
        &format!("named_struct('max_tokens', 200, 'stop', '{escaped}')"),
    );
    assert!(
        cut < all / 2,
        "decoding went on after the stop string {stop:?}: {cut} of {all} tokens\n{plan}"
    );
}

#[test]
fn endless_templates_stop_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let started = Instant::now();
    fails(
        d,
        "SELECT render('{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}', named_struct('a', 1)) AS r",
        &["render", "a loop that does not end"],
    );
    let looping =
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}";
    fails(
        d,
        &format!(
            "CREATE MODEL t FROM '{}' OPTIONS (chat_template '{looping}');
             SELECT apply_chat_template('t', 'hi') AS p",
            model("qwen2")
        ),
        &["apply_chat_template", "a loop that does not end"],
    );
    assert!(started.elapsed() < Duration::from_secs(120));
}

// ---- 15: CREATE MODEL checks what it promises ----

#[test]
fn bad_models_are_refused_at_create() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("empty.gguf"), b"").unwrap();
    fails(
        d,
        "CREATE MODEL m FROM 'empty.gguf'",
        &["empty.gguf", "empty"],
    );
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut head = vec![0u8; 4 << 20];
    std::fs::File::open(&gguf)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    std::fs::write(d.join("cut.gguf"), &head).unwrap();
    fails(
        d,
        "CREATE MODEL m FROM 'cut.gguf'",
        &["cut.gguf", "truncated"],
    );
    // A safetensors folder with its weights cut short.
    let folder = d.join("tiny");
    std::fs::create_dir(&folder).unwrap();
    for e in std::fs::read_dir(model("qwen2")).unwrap().flatten() {
        std::fs::copy(e.path(), folder.join(e.file_name())).unwrap();
    }
    let weights = std::fs::read(folder.join("model.safetensors")).unwrap();
    std::fs::write(
        folder.join("model.safetensors"),
        &weights[..weights.len() - 100],
    )
    .unwrap();
    fails(
        d,
        "CREATE MODEL m FROM 'tiny'",
        &["model.safetensors", "truncated"],
    );
    fails(
        d,
        &format!(
            "CREATE MODEL m FROM '{}' OPTIONS (dtype 'f64')",
            model("qwen2")
        ),
        &["dtype 'f64'"],
    );
    fails(
        d,
        &format!(
            "CREATE MODEL m FROM '{}' OPTIONS (chat_template '{{% for m in messages %}}')",
            model("qwen2")
        ),
        &["chat_template", "not a valid Jinja template"],
    );
}

// ---- 16: errors that say where ----

#[test]
fn syntax_errors_name_the_file_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("job.sql"),
        "-- a job\nSELECT 1 AS a;\n\nSELECT a,\n  b\n  FROM\n  WHERE x = 1;\n",
    )
    .unwrap();
    let o = prefflow(&["run", "job.sql"], d);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("job.sql:7:"), "{err}");
    assert!(err.contains("syntax error"), "{err}");
    assert!(!err.contains("ParserError("), "no Debug formatting: {err}");
}

#[test]
fn progress_counts_tokens_while_a_row_decodes() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let engine = prefflow::Engine::with_options(&prefflow::SessionOptions {
        cache: Some(prefflow::CacheMode::Off),
        ..Default::default()
    })
    .unwrap();
    runtime.block_on(async {
        engine
            .query(&format!("CREATE MODEL tiny FROM '{}'", model("qwen2")))
            .await
            .unwrap();
        let e = engine.clone();
        let query = tokio::spawn(async move {
            e.query("SELECT ai_generate('tiny', 'Tell me a story', named_struct('max_tokens', 240)) AS a")
                .await
        });
        // Output tokens grow while the one row is still decoding (rows still 0), so a long
        // decode never looks hung.
        let mut seen = false;
        while !query.is_finished() {
            for c in engine.models().activity().entries() {
                let s = c.snapshot();
                if s.rows == 0 && s.output_tokens > 0 {
                    seen = true;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        query.await.unwrap().unwrap();
        assert!(seen, "output tokens were counted only when the row finished");
    });
}

#[test]
fn parquet_to_a_terminal_is_refused_before_anything_runs() {
    // `script` gives the command a pseudo-terminal as standard output (util-linux, on every
    // Debian machine).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let command = format!(
        "{} sql \"COPY (SELECT 1 AS x) TO 'ran.parquet'; SELECT 1 AS x\" --format parquet; echo exit=$?",
        env!("CARGO_BIN_EXE_prefflow")
    );
    let o = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(d)
        .env("PREFFLOW_CACHE_DIR", d.join(".prefflow-cache"))
        .output()
        .expect("script (util-linux) runs the command on a pseudo-terminal");
    let out = stdout(&o);
    assert!(out.contains("Parquet is binary"), "{out}");
    assert!(out.contains("exit=2"), "{out}");
    assert!(
        !d.join("ran.parquet").exists(),
        "a statement ran before the refusal"
    );
}
