//! `COPY … TO 'hf://datasets/…'` against the loopback Hub stand-in (tests/it/hf.rs): checks
//! before work, the private flag, the token only as a Bearer header, checkpoint commits,
//! retries, a failed push kept in staging and pushed by a re-run, a finished job that commits
//! nothing again, a SIGKILL between checkpoints resumed to the same files, and the pushed
//! dataset read back through hf://.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use prefflow::Engine;

use crate::hf::{Fault, HUB_ENV, Hub, Repo, start};

const TOKEN: &str = "hf_push_secret_token";

/// 30 prompts with a chosen and a rejected answer each.
fn pairs(dir: &Path) -> String {
    let rows: String = (0..30)
        .map(|i| {
            format!(
                "{{\"prompt\": \"Question {i:02}: what is {i} + {i}?\", \"chosen\": \"It is {}.\", \"rejected\": \"Maybe {}.\", \"score_chosen\": {}.5, \"score_rejected\": {}.0}}\n",
                2 * i,
                2 * i + 1,
                i + 1,
                i
            )
        })
        .collect();
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, rows).unwrap();
    path.display().to_string()
}

fn query(file: &str) -> String {
    format!(
        "SELECT prompt, chosen, rejected, score_chosen, score_rejected FROM '{file}' ORDER BY prompt"
    )
}

fn engine(cache: &Path) -> Engine {
    super::support::engine_with(prefflow::SessionOptions {
        cache_dir: Some(cache.to_path_buf()),
        ..Default::default()
    })
}

fn files(hub: &Hub, repo: &str, branch: &str) -> BTreeMap<String, Vec<u8>> {
    hub.repos.lock().unwrap()[repo].branches[branch].clone()
}

fn parquet_rows(bytes: &[u8]) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(bytes))
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// Every row of a split's parts, in part order, as text.
fn split_rows(files: &BTreeMap<String, Vec<u8>>, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (name, bytes) in files.iter().filter(|(n, _)| n.starts_with(prefix)) {
        assert!(name.ends_with(".parquet"), "{name}");
        for b in parquet_rows(bytes) {
            out.extend(rows_text(&b));
        }
    }
    out
}

fn rows_text(b: &RecordBatch) -> Vec<String> {
    let options = datafusion::arrow::util::display::FormatOptions::default();
    let formatters: Vec<_> = b
        .columns()
        .iter()
        .map(|c| datafusion::arrow::util::display::ArrayFormatter::try_new(c, &options).unwrap())
        .collect();
    (0..b.num_rows())
        .map(|i| {
            formatters
                .iter()
                .map(|f| f.value(i).to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_error_that_echoes_the_token_is_masked() {
    let _env = HUB_ENV.lock().await;
    let hub = Arc::new(Hub::default());
    let (endpoint, _server) = start(Arc::clone(&hub)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = pairs(dir.path());
    // SAFETY: the tests that set HF_* take turns (HUB_ENV), and no other test reads them.
    unsafe {
        std::env::set_var("HF_ENDPOINT", &endpoint);
        std::env::set_var("HF_HOME", dir.path().join("hf-home"));
        // A trailing newline (`$(cat token.txt)`) is not part of the token.
        std::env::set_var("HF_TOKEN", format!("{TOKEN}\n"));
        std::env::set_var("PREFFLOW_HUB_RETRY_MS", "5");
    }
    hub.faults
        .lock()
        .unwrap()
        .push_back(Fault::EchoHeaders(400));
    let e = engine(&dir.path().join("cache"));
    let err = e
        .query(&format!(
            "COPY ({}) TO 'hf://datasets/org/echo' STORED AS dpo",
            query(&file)
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad request with headers"), "{err}");
    assert!(err.contains("Bearer ***"), "{err}");
    assert!(!err.contains(TOKEN), "{err}");
    assert!(
        hub.auth
            .lock()
            .unwrap()
            .iter()
            .all(|a| a == &format!("Bearer {TOKEN}")),
        "the token is sent trimmed"
    );
}

/// The stand-in set up for one push test: HF_* point at it with TOKEN.
async fn hub_for_test(dir: &Path) -> (Arc<Hub>, tokio::task::JoinHandle<()>) {
    let hub = Arc::new(Hub::default());
    let (endpoint, server) = start(Arc::clone(&hub)).await;
    // SAFETY: the tests that set HF_* take turns (HUB_ENV), and no other test reads them.
    unsafe {
        std::env::set_var("HF_ENDPOINT", &endpoint);
        std::env::set_var("HF_HOME", dir.join("hf-home"));
        std::env::set_var("HF_TOKEN", TOKEN);
        std::env::set_var("PREFFLOW_HUB_RETRY_MS", "5");
        std::env::set_var("PREFFLOW_HUB_TIMEOUT", "2");
    }
    (hub, server)
}

/// Every part the manifest names is on the branch and is a whole Parquet file; the rows.
fn published_rows(hub: &Hub, repo: &str) -> Vec<String> {
    let files = files(hub, repo, "main");
    let manifest: serde_json::Value =
        serde_json::from_slice(&files[".prefflow/push.json"]).unwrap();
    assert_eq!(manifest["finished"], true);
    let mut rows = Vec::new();
    for part in manifest["parts"].as_array().unwrap() {
        let bytes = &files[part["path"].as_str().unwrap()];
        let batches = parquet_rows(bytes);
        let n: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(n as u64, part["rows"].as_u64().unwrap());
        rows.extend(batches.iter().flat_map(rows_text));
    }
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_statements_pushing_to_one_target_at_once_never_mix() {
    let _env = HUB_ENV.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (hub, _server) = hub_for_test(dir.path()).await;
    let file = pairs(dir.path());
    // The first push's commit hangs until its client gives up (2 s) and tries again; by then
    // the second, another statement, has committed to the branch.
    hub.faults.lock().unwrap().push_back(Fault::Hang);
    let first = {
        let e = engine(&dir.path().join("cache-a"));
        let sql = format!(
            "COPY ({} LIMIT 10) TO 'hf://datasets/org/race' STORED AS parquet",
            query(&file)
        );
        tokio::spawn(async move { e.query(&sql).await.map(|_| ()).map_err(|e| e.to_string()) })
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), hub.hung.notified())
        .await
        .expect("the first push reached its commit");
    let e = engine(&dir.path().join("cache-b"));
    e.query(&format!(
        "COPY ({} LIMIT 20) TO 'hf://datasets/org/race' STORED AS parquet",
        query(&file)
    ))
    .await
    .unwrap();
    let err = first.await.unwrap().unwrap_err();
    assert!(
        err.contains("changed since this run started")
            && err.contains("nothing of this run was committed"),
        "{err}"
    );
    // The branch holds the second push whole: its 20 rows, every part complete.
    assert_eq!(published_rows(&hub, "datasets/org/race").len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_push_creates_no_repository_or_branch() {
    let _env = HUB_ENV.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (hub, _server) = hub_for_test(dir.path()).await;
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{not json\n",
    )
    .unwrap();
    let e = engine(&dir.path().join("cache"));
    for target in ["hf://datasets/org/never", "hf://datasets/org/never@dev"] {
        let err = e
            .query(&format!(
                "COPY (SELECT prompt, chosen, rejected FROM '{}') TO '{target}' STORED AS dpo",
                bad.display()
            ))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.jsonl:2"), "{err}");
    }
    assert!(
        hub.created.lock().unwrap().is_empty(),
        "no repository created"
    );
    assert!(!hub.repos.lock().unwrap().contains_key("datasets/org/never"));
    // The same push with good rows creates it (private), at its first commit.
    let file = pairs(dir.path());
    e.query(&format!(
        "COPY ({}) TO 'hf://datasets/org/never@dev' STORED AS dpo",
        query(&file)
    ))
    .await
    .unwrap();
    assert_eq!(hub.created.lock().unwrap()[0]["private"], true);
    assert_eq!(
        split_rows(&files(&hub, "datasets/org/never", "dev"), "data/train-").len(),
        30
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hf_reads_see_the_branch_as_it_is_now() {
    let _env = HUB_ENV.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (_hub, _server) = hub_for_test(dir.path()).await;
    let file = pairs(dir.path());
    let e = engine(&dir.path().join("cache"));
    let push = |limit: usize| {
        format!(
            "COPY ({} LIMIT {limit}) TO 'hf://datasets/org/fresh' STORED AS parquet",
            query(&file)
        )
    };
    let read = "SELECT count(*) FROM 'hf://datasets/org/fresh/data/*.parquet'";
    e.query(&push(30)).await.unwrap();
    assert_eq!(crate::hf::count(&e, read).await, 30);
    // Another statement replaces the dataset: the next read gets the new commit's files,
    // not the cached copy of the first.
    e.query(&push(10)).await.unwrap();
    assert_eq!(crate::hf::count(&e, read).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_push_whose_input_changed_is_refused_before_any_commit() {
    let _env = HUB_ENV.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (hub, _server) = hub_for_test(dir.path()).await;
    let file = pairs(dir.path());
    let e = engine(&dir.path().join("cache"));
    let sql = format!(
        "COPY ({}) TO 'hf://datasets/org/changed' STORED AS dpo OPTIONS (checkpoint_rows 8)",
        query(&file)
    );
    e.query(&sql).await.unwrap();
    let before = files(&hub, "datasets/org/changed", "main");
    let commits = hub.commits.lock().unwrap().len();
    // 8 answers change: the same statement now gives 8 rows the push does not hold, and
    // lacks 8 it does.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replacen("It is", "It was", 8);
    std::fs::write(&file, text).unwrap();
    let err = e.query(&sql).await.unwrap_err().to_string();
    assert!(
        err.contains("did its input change?") && err.contains("nothing was committed"),
        "{err}"
    );
    assert_eq!(hub.commits.lock().unwrap().len(), commits, "no commit");
    assert_eq!(files(&hub, "datasets/org/changed", "main"), before);
    // Rows only removed (no new ones): refused at the end, still before any commit.
    let text: String = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("It was"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, text).unwrap();
    let err = e.query(&sql).await.unwrap_err().to_string();
    assert!(err.contains("not in its result any more"), "{err}");
    assert_eq!(hub.commits.lock().unwrap().len(), commits, "no commit");
    assert_eq!(files(&hub, "datasets/org/changed", "main"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_a_loopback_hub() {
    let _env = HUB_ENV.lock().await;
    let hub = Arc::new(Hub::default());
    hub.repos.lock().unwrap().insert(
        "datasets/org/public".to_string(),
        Repo {
            private: false,
            branches: [("main".to_string(), BTreeMap::new())].into(),
        },
    );
    let (endpoint, _server) = start(Arc::clone(&hub)).await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf-home");
    let cache = dir.path().join("cache");
    let file = pairs(dir.path());
    // SAFETY: the tests that set HF_* take turns (HUB_ENV), and no other test reads them.
    unsafe {
        std::env::set_var("HF_ENDPOINT", &endpoint);
        std::env::set_var("HF_HOME", &home);
        std::env::remove_var("HF_TOKEN");
        std::env::set_var("PREFFLOW_HUB_RETRY_MS", "5");
        std::env::set_var("PREFFLOW_HUB_TIMEOUT", "2");
    }
    let e = engine(&cache);
    let copy = |target: &str, options: &str| {
        format!(
            "COPY ({}) TO '{target}' STORED AS dpo OPTIONS (validation_fraction 0.2{options})",
            query(&file)
        )
    };

    // No token: refused before anything runs or is created.
    let err = e
        .query(&copy("hf://datasets/org/pairs", ""))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no Hub token") && err.contains("HF_TOKEN"),
        "{err}"
    );
    // A read-only token: refused, nothing created.
    unsafe { std::env::set_var("HF_TOKEN", "hf_read_only_token") };
    let err = e
        .query(&copy("hf://datasets/org/pairs", ""))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("read-only"), "{err}");
    assert!(hub.created.lock().unwrap().is_empty());
    assert!(!err.contains("hf_read_only_token"), "{err}");

    unsafe { std::env::set_var("HF_TOKEN", TOKEN) };
    // A public repository while private (the default) is asked for: refused.
    let err = e
        .query(&copy("hf://datasets/org/public", ""))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("public") && err.contains("private false"),
        "{err}"
    );
    assert!(hub.commits.lock().unwrap().is_empty());

    // Checkpoints: 30 rows, one commit per 8, then the last.
    e.query(&copy("hf://datasets/org/pairs", ", checkpoint_rows 8"))
        .await
        .unwrap();
    let created = hub.created.lock().unwrap().clone();
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["private"], true);
    assert_eq!(created[0]["type"], "dataset");
    let commits = hub.commits.lock().unwrap().clone();
    assert_eq!(commits.len(), 4, "{commits:#?}");
    assert!(commits[0].summary.contains("checkpoint 1"), "{commits:#?}");
    assert!(
        commits[0]
            .paths
            .contains(&"data/train-00000.parquet".to_string()),
        "{commits:#?}"
    );
    assert!(commits[2].paths.iter().any(|p| p.contains("-00002.")));
    let pushed = files(&hub, "datasets/org/pairs", "main");
    let card = String::from_utf8(pushed["README.md"].clone()).unwrap();
    assert!(card.contains("path: data/train-*.parquet"), "{card}");
    assert!(card.contains("## Provenance"), "{card}");
    assert!(!card.contains("## Progress"), "{card}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&pushed[".prefflow/push.json"]).unwrap();
    assert_eq!(manifest["finished"], true);
    assert_eq!(manifest["checkpoints"], 4);

    // The same rows as the local sink writes, split the same way.
    let local = dir.path().join("local");
    e.query(&format!(
        "COPY ({}) TO '{}' STORED AS dpo OPTIONS (validation_fraction 0.2)",
        query(&file),
        local.display()
    ))
    .await
    .unwrap();
    for split in ["train", "validation"] {
        let want: Vec<String> =
            parquet_rows(&std::fs::read(local.join(format!("{split}.parquet"))).unwrap())
                .iter()
                .flat_map(rows_text)
                .collect();
        assert!(!want.is_empty(), "{split}");
        assert_eq!(
            split_rows(&pushed, &format!("data/{split}-")),
            want,
            "{split}"
        );
    }
    let local_card = std::fs::read_to_string(local.join("README.md")).unwrap();
    let section =
        |c: &str| c[c.find("## Splits").unwrap()..c.find("## Options").unwrap()].to_string();
    assert_eq!(section(&card), section(&local_card));

    // A finished job run again: no new commit.
    e.query(&copy("hf://datasets/org/pairs", ", checkpoint_rows 8"))
        .await
        .unwrap();
    assert_eq!(hub.commits.lock().unwrap().len(), 4);

    // Downloads through hf:// read what was pushed.
    let batches = e
        .query("SELECT count(*) FROM 'hf://datasets/org/pairs/data/*.parquet'")
        .await
        .unwrap();
    let n = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(n, 30);

    // Faults: a 503, a dropped connection and a hung answer are retried.
    hub.faults
        .lock()
        .unwrap()
        .extend([Fault::Status(503), Fault::Drop, Fault::Hang]);
    let before = *hub.commit_requests.lock().unwrap();
    e.query(&format!(
        "COPY ({}) TO 'hf://datasets/org/flaky@dev/pairs' STORED AS parquet OPTIONS (private false)",
        query(&file)
    ))
    .await
    .unwrap();
    assert_eq!(*hub.commit_requests.lock().unwrap() - before, 4);
    assert_eq!(hub.commits.lock().unwrap().last().unwrap().branch, "dev");
    let flaky = files(&hub, "datasets/org/flaky", "dev");
    assert_eq!(split_rows(&flaky, "pairs/data/train-").len(), 30);
    assert!(flaky.contains_key("pairs/README.md"));
    assert_eq!(
        hub.created.lock().unwrap().last().unwrap()["private"],
        false
    );

    // A push that keeps failing: the error says where the rows are, and a re-run pushes them.
    hub.faults
        .lock()
        .unwrap()
        .extend(std::iter::repeat_n(Fault::Status(500), 20));
    let target = "hf://datasets/org/later";
    let err = e.query(&copy(target, "")).await.unwrap_err().to_string();
    assert!(
        err.contains("pushing failed") && err.contains("run the same statement again"),
        "{err}"
    );
    hub.faults.lock().unwrap().clear();
    let staging = cache.join("push");
    assert!(err.contains(&staging.display().to_string()), "{err}");
    let staged: Vec<_> = walk(&staging);
    assert!(
        staged
            .iter()
            .any(|p| p.ends_with("data/train-00000.parquet")),
        "{staged:?}"
    );
    assert!(!files(&hub, "datasets/org/later", "main").contains_key("README.md"));
    e.query(&copy(target, "")).await.unwrap();
    let later = files(&hub, "datasets/org/later", "main");
    assert_eq!(
        split_rows(&later, "data/train-").len() + split_rows(&later, "data/validation-").len(),
        30
    );
    assert!(walk(&staging).is_empty(), "{:?}", walk(&staging));

    // The token went out only as a Bearer header, and is in no request body, file or error.
    let auth = hub.auth.lock().unwrap().clone();
    assert!(
        auth.iter()
            .filter(|a| a.contains("push"))
            .all(|a| a == &format!("Bearer {TOKEN}")),
        "{auth:?}"
    );
    for entry in hub.log.lock().unwrap().iter() {
        assert!(!entry.contains(TOKEN), "{entry}");
    }
    for repo in hub.repos.lock().unwrap().values() {
        for files in repo.branches.values() {
            for bytes in files.values() {
                assert!(!String::from_utf8_lossy(bytes).contains(TOKEN));
            }
        }
    }
    unsafe {
        std::env::remove_var("PREFFLOW_HUB_RETRY_MS");
        std::env::remove_var("PREFFLOW_HUB_TIMEOUT");
    }
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

/// A generation job pushed with checkpoints, killed (SIGKILL) while its second checkpoint is
/// in flight, and run again: the same files as an uninterrupted run, and the rows pushed
/// before the kill come from the result cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_push_resumes_to_the_same_files() {
    let hub = Arc::new(Hub::default());
    let (endpoint, _server) = start(Arc::clone(&hub)).await;
    let dir = tempfile::tempdir().unwrap();
    let prompts: String = (0..24)
        .map(|i| format!("{{\"id\": {i}, \"prompt\": \"Question {i}: what is {i} plus 2?\"}}\n"))
        .collect();
    std::fs::write(dir.path().join("prompts.jsonl"), prompts).unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoders/qwen2");
    std::fs::write(
        dir.path().join("job.sql"),
        format!(
            "SET datafusion.execution.batch_size = 4;
CREATE MODEL tiny FROM '{}';
COPY (SELECT id, prompt,
             ai_generate('tiny', prompt, named_struct('max_tokens', 24, 'temperature', 0.8, 'seed', 7)) AS answer
      FROM 'prompts.jsonl' ORDER BY id)
TO '${{target}}' STORED AS parquet OPTIONS (checkpoint_rows 8);",
            model.display()
        ),
    )
    .unwrap();
    let run = |target: &str, cache: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_prefflow"));
        c.args(["run", "job.sql", "--partitions", "1", "--param"])
            .arg(format!("target={target}"))
            .arg("--cache-dir")
            .arg(dir.path().join(cache))
            .current_dir(dir.path())
            .env("HF_ENDPOINT", &endpoint)
            .env("HF_HOME", dir.path().join("hf-home"))
            .env("HF_TOKEN", TOKEN)
            .env("PREFFLOW_HUB_RETRY_MS", "5")
            // A hung commit stays hung until the kill (not retried after a timeout).
            .env("PREFFLOW_HUB_TIMEOUT", "600")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let finish = |c: &mut std::process::Command| {
        let out = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        assert!(!stderr.contains(TOKEN), "{stderr}");
        stderr
    };

    // Uninterrupted.
    tokio::task::spawn_blocking({
        let mut c = run("hf://datasets/org/whole", "cache-whole");
        move || finish(&mut c)
    })
    .await
    .unwrap();
    let whole = files(&hub, "datasets/org/whole", "main");
    let whole_commits = hub.commits.lock().unwrap().len();
    assert_eq!(
        whole_commits, 4,
        "24 rows in 3 checkpoints and the last commit"
    );

    // Killed while the second checkpoint's commit hangs: the first goes through, then the
    // stand-in is told to hang.
    let hung = hub.hung.notified();
    let mut child = run("hf://datasets/org/killed", "cache-killed")
        .spawn()
        .unwrap();
    let armed = {
        let hub = Arc::clone(&hub);
        tokio::spawn(async move {
            loop {
                let n = hub
                    .commits
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|c| c.repo == "datasets/org/killed")
                    .count();
                if n == 1 {
                    hub.faults.lock().unwrap().push_back(Fault::Hang);
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::timeout(std::time::Duration::from_secs(300), hung)
        .await
        .expect("the second checkpoint reached the stand-in");
    armed.await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let after_kill = files(&hub, "datasets/org/killed", "main");
    assert!(after_kill.contains_key("data/train-00000.parquet"));
    assert!(!after_kill.contains_key("data/train-00001.parquet"));

    // Run again: resumes from the first checkpoint; generation comes from the cache.
    let stderr = tokio::task::spawn_blocking({
        let mut c = run("hf://datasets/org/killed", "cache-killed");
        move || finish(&mut c)
    })
    .await
    .unwrap();
    assert!(stderr.contains("from cache"), "{stderr}");
    eprintln!("resumed run:\n{stderr}");
    let resumed = files(&hub, "datasets/org/killed", "main");
    let parts = |f: &BTreeMap<String, Vec<u8>>| -> BTreeMap<String, Vec<u8>> {
        f.iter()
            .filter(|(k, _)| k.starts_with("data/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(
        parts(&resumed).keys().collect::<Vec<_>>(),
        parts(&whole).keys().collect::<Vec<_>>()
    );
    assert!(parts(&resumed) == parts(&whole), "part files differ");
    let rows: usize = parts(&resumed)
        .values()
        .flat_map(|b| parquet_rows(b))
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 24);
}

/// A plain COPY to the Hub through the DataFrame API (no prefflow::Engine::sql) is planned by
/// prefflow's format: EXPLAIN shows the push, and `write_parquet` pushes what `Engine::sql`
/// would (a finished push, every row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataframe_api_copy_pushes_to_the_hub() {
    let _env = HUB_ENV.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (hub, _server) = hub_for_test(dir.path()).await;
    let file = pairs(dir.path());
    let e = engine(&dir.path().join("cache"));
    let explained = e
        .query(&format!(
            "EXPLAIN COPY ({}) TO 'hf://datasets/org/frame' STORED AS parquet",
            query(&file)
        ))
        .await
        .unwrap();
    let text = super::support::table(&explained);
    assert!(
        text.contains("TrainingSink: format=parquet, target=hf://datasets/org/frame"),
        "{text}"
    );
    assert!(
        !hub.repos.lock().unwrap().contains_key("datasets/org/frame"),
        "EXPLAIN pushed"
    );
    e.context()
        .sql(&query(&file))
        .await
        .unwrap()
        .write_parquet(
            "hf://datasets/org/frame",
            datafusion::dataframe::DataFrameWriteOptions::new(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(published_rows(&hub, "datasets/org/frame").len(), 30);
}
