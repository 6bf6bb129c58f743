//! A Ballista cluster on one machine: a scheduler and two executors as `prefflow` processes on
//! loopback ports. The same query files give the same rows as a one-process run (generation
//! with a seeded tiny model, pairing with arg_max / arg_min, a dpo sink, a Parquet COPY); a
//! lost executor either leaves the job to the survivor or fails it clearly, never with partial
//! output.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Scheduler and executors, killed when dropped (also when a test fails).
struct Cluster {
    url: String,
    scheduler: Child,
    executors: Vec<Child>,
    _logs: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self
            .executors
            .iter_mut()
            .chain(std::iter::once(&mut self.scheduler))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

use super::support::binary as prefflow;

fn start(executors: usize) -> Cluster {
    let logs = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = |name: &str| std::fs::File::create(logs.path().join(name)).unwrap();
    let scheduler = prefflow()
        .args(["scheduler", "--bind", &format!("127.0.0.1:{port}")])
        .stdout(log("scheduler.out"))
        .stderr(log("scheduler.err"))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the scheduler did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("df://127.0.0.1:{port}");
    let executors = (0..executors)
        .map(|i| {
            prefflow()
                .args(["executor", "--scheduler", &url, "--port"])
                .arg(free_port().to_string())
                .arg("--grpc-port")
                .arg(free_port().to_string())
                .arg("--cache-dir")
                .arg(logs.path().join("cache"))
                .stdout(log(&format!("executor{i}.out")))
                .stderr(log(&format!("executor{i}.err")))
                .spawn()
                .unwrap()
        })
        .collect();
    let cluster = Cluster {
        url,
        scheduler,
        executors,
        _logs: logs,
    };
    // Ready when a query that needs an executor runs.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("one.jsonl"), "{\"x\": 1}\n").unwrap();
    loop {
        let out = prefflow()
            .args([
                "sql",
                &format!("SELECT x FROM '{}'", dir.path().join("one.jsonl").display()),
            ])
            .args(["--cluster", &cluster.url])
            .current_dir(dir.path())
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not run a query: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    cluster
}

/// A generation + pairing job: two seeded samples per prompt from the tiny qwen2 fixture,
/// paired into a dpo set, a third sample kept with CREATE TABLE … AS and written as Parquet,
/// the pairs read back.
fn job(dir: &Path, prompts: usize, max_tokens: usize) -> PathBuf {
    let rows: String = (0..prompts)
        .map(|i| format!("{{\"id\": {i}, \"prompt\": \"Question {i}: what is {i} plus 2?\"}}\n"))
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), rows).unwrap();
    // Files by path with a folder: a bare name with a dot ('prompts.jsonl') does not survive
    // Ballista's plan serialization (its qualifier is re-parsed as schema.table).
    let prompts = dir.join("prompts.jsonl").display().to_string();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoders/qwen2");
    let sample = |seed: u32| {
        format!(
            "SELECT id, prompt, {seed} AS seed, ai_generate('tiny', prompt, named_struct('max_tokens', {max_tokens}, 'seed', {seed}, 'temperature', 0.8)) AS answer FROM '{prompts}'"
        )
    };
    let sql = format!(
        "CREATE MODEL tiny FROM '{}';
COPY (
  SELECT CAST(id AS VARCHAR) AS prompt_id, first_value(prompt) AS prompt,
         arg_max(answer, length(answer) * 10 + seed) AS chosen,
         arg_min(answer, length(answer) * 10 + seed) AS rejected
  FROM ({} UNION ALL {})
  GROUP BY id ORDER BY prompt_id
) TO '${{out}}/dpo' STORED AS dpo;
CREATE TABLE samples AS {};
COPY (SELECT id, answer FROM samples ORDER BY id) TO '${{out}}/answers.parquet';
SELECT prompt_id, chosen, rejected FROM '${{out}}/dpo/train.parquet' ORDER BY prompt_id;",
        model.display(),
        sample(1),
        sample(2),
        sample(3)
    );
    let path = dir.join("job.sql");
    std::fs::write(&path, sql).unwrap();
    path
}

fn run(dir: &Path, out: &str, cluster: Option<&str>) -> std::process::Output {
    let mut c = prefflow();
    c.args(["run", "job.sql", "--cache", "off", "--partitions", "2"])
        .args(["--format", "csv", "--param"])
        .arg(format!("out={}", dir.join(out).display()))
        .arg("--cache-dir")
        .arg(dir.join(format!("{out}-cache")))
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = cluster {
        c.args(["--cluster", url]);
    }
    c.output().unwrap()
}

fn text(dir: &Path, sql: &str) -> String {
    let out = prefflow()
        .args(["sql", sql, "--format", "csv"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_cluster_gives_the_rows_of_a_local_run() {
    let cluster = start(2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    job(d, 16, 8);
    let local = run(d, "local", None);
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    let remote = run(d, "remote", Some(&cluster.url));
    assert!(
        remote.status.success(),
        "{}",
        String::from_utf8_lossy(&remote.stderr)
    );
    // The pairs, the dpo set (byte for byte: written here from the cluster's rows) and the
    // samples the executors wrote.
    assert_eq!(
        String::from_utf8_lossy(&remote.stdout),
        String::from_utf8_lossy(&local.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&local.stdout).lines().count(), 17);
    assert_eq!(
        std::fs::read(d.join("remote/dpo/train.parquet")).unwrap(),
        std::fs::read(d.join("local/dpo/train.parquet")).unwrap()
    );
    let samples = |dir: &str| {
        text(
            d,
            &format!(
                "SELECT id, answer FROM '{}' ORDER BY id",
                d.join(dir).join("answers.parquet").display()
            ),
        )
    };
    assert_eq!(samples("remote"), samples("local"));

    // EXPLAIN shows the stages the scheduler made.
    let explain = prefflow()
        .args([
            "sql",
            &format!(
                "EXPLAIN SELECT id % 2 AS k, count(*) FROM '{}' GROUP BY id % 2",
                d.join("prompts.jsonl").display()
            ),
            "--cluster",
            &cluster.url,
            "--format",
            "csv",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&explain.stdout);
    assert!(plan.contains("ShuffleWriterExec"), "{plan}");

    // A bare file name with a dot is refused with the spelling that works.
    let bare = prefflow()
        .args([
            "sql",
            "SELECT count(*) FROM 'prompts.jsonl'",
            "--cluster",
            &cluster.url,
        ])
        .current_dir(d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bare.stderr);
    assert!(err.contains("'./prompts.jsonl'"), "{err}");
    let dotted = prefflow()
        .args([
            "sql",
            "SELECT count(*) AS n FROM './prompts.jsonl'",
            "--cluster",
            &cluster.url,
        ])
        .args(["--format", "csv"])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&dotted.stdout), "n\n16\n");
}

#[test]
fn bad_cluster_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = prefflow()
        .args([
            "sql",
            "SELECT 1",
            "--cluster",
            &format!("df://127.0.0.1:{port}"),
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "cannot reach the Ballista scheduler at df://127.0.0.1:{port}"
        )),
        "{err}"
    );
    let out = prefflow()
        .args(["sql", "SELECT 1", "--cluster", "http://x"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("df://HOST:PORT"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_lost_executor_never_leaves_partial_output() {
    let mut cluster = start(2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    job(d, 600, 64);
    let mut c = prefflow();
    c.args(["run", "job.sql", "--cache", "off", "--partitions", "2"])
        .args(["--format", "csv", "--param"])
        .arg(format!("out={}", d.join("remote").display()))
        .arg("--cache-dir")
        .arg(d.join("remote-cache"))
        .args(["--cluster", &cluster.url])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    // Kill one executor while the job runs.
    std::thread::sleep(Duration::from_millis(1500));
    let mut lost = cluster.executors.remove(0);
    lost.kill().unwrap();
    lost.wait().unwrap();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "after losing an executor: {} in {:.1} s\n{}",
        out.status,
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(300),
        "the job hung after losing an executor"
    );
    if out.status.success() {
        // Finished on the survivor: the same rows as a local run.
        assert!(run(d, "local", None).status.success());
        assert_eq!(
            std::fs::read(d.join("remote/dpo/train.parquet")).unwrap(),
            std::fs::read(d.join("local/dpo/train.parquet")).unwrap()
        );
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("prefflow: error:"), "{err}");
        // It failed while running, not while planning.
        assert!(!err.contains("Could not parse plan"), "{err}");
        // No partial dataset and no staging folder left.
        assert!(!d.join("remote/dpo").exists(), "{err}");
        let leftovers: Vec<_> = std::fs::read_dir(d.join("remote"))
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "{leftovers:?}: {err}");
    }
}

/// Every queries/*.sql on the cluster and here: the same rows (the final result, as sorted
/// CSV lines; best_of_n scores with array_distance, data_selection runs embeddings, kmeans and
/// near_duplicate windows, a join and a Parquet COPY, whose file is compared too).
#[test]
fn every_query_file_matches_on_a_cluster() {
    let cluster = start(2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in &crate::queries::query_files() {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let run = |out: &str, url: Option<&str>| {
            let mut c = prefflow();
            c.arg("run")
                .arg(file)
                .args(["--format", "csv", "--partitions", "2", "--cache", "off"])
                .arg("--param")
                .arg(format!("data_dir={}", root.join("data").display()))
                .arg("--param")
                .arg(format!("models_dir={}", root.join("models").display()))
                .arg("--param")
                .arg(format!("out_dir={}", d.join(out).display()))
                .arg("--cache-dir")
                .arg(d.join(format!("{out}-cache")))
                .current_dir(d);
            if let Some(url) = url {
                c.args(["--cluster", url]);
            }
            let out = c.output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let mut lines: Vec<String> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
            lines.sort();
            lines
        };
        let local = run(&format!("{stem}-local"), None);
        assert!(!local.is_empty(), "{stem}");
        assert_eq!(
            run(&format!("{stem}-remote"), Some(&cluster.url)),
            local,
            "{stem}"
        );
    }
    let file = |out: &str| {
        d.join(out)
            .join("selection_fewshot.parquet")
            .display()
            .to_string()
    };
    let differing = text(
        d,
        &format!(
            "SELECT count(*) AS n FROM ((SELECT * FROM '{0}' EXCEPT SELECT * FROM '{1}') UNION ALL (SELECT * FROM '{1}' EXCEPT SELECT * FROM '{0}'))",
            file("data_selection-remote"),
            file("data_selection-local")
        ),
    );
    assert_eq!(differing.trim(), "n\n0");
    // Array functions run on executors; a table function runs in the client's process.
    let out = prefflow()
        .args(["sql", "SELECT array_length(make_array(1, 2, 3)) AS n, make_array(4, 5)[2] AS second, array_distance([1.0, 2.0], [1.0, 4.0]) AS dist"])
        .args(["--format", "csv", "--cluster", &cluster.url])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "n,second,dist\n3,5,2.0\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = prefflow()
        .args(["sql", "SELECT count(*) AS n FROM generate_series(1, 10)"])
        .args(["--format", "csv", "--cluster", &cluster.url])
        .current_dir(d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n10\n", "{err}");
    assert!(err.contains("runs in this process"), "{err}");
}

/// A model file the executors cannot read (here: removed after the client declared the model)
/// fails the job with the model and the file named, and leaves no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_without_the_model_file_fails_clearly() {
    let cluster = start(1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("model");
    std::fs::create_dir(&model).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoders/qwen2");
    for f in std::fs::read_dir(&fixture).unwrap().flatten() {
        std::fs::copy(f.path(), model.join(f.file_name())).unwrap();
    }
    std::fs::write(d.join("in.jsonl"), "{\"p\": \"hello\"}\n").unwrap();
    let engine = prefflow::Engine::with_options(&prefflow::SessionOptions {
        cluster: Some(cluster.url.clone()),
        cache: Some(prefflow::CacheMode::Off),
        cache_dir: Some(d.join("cache")),
        ..Default::default()
    })
    .unwrap();
    engine
        .sql(&format!("CREATE MODEL tiny FROM '{}'", model.display()))
        .await
        .unwrap();
    std::fs::remove_file(model.join("model.safetensors")).unwrap();
    let out = d.join("out.parquet");
    let err = engine
        .query(&format!(
            "COPY (SELECT ai_generate('tiny', p, named_struct('max_tokens', 4)) AS a FROM '{}') TO '{}'",
            d.join("in.jsonl").display(),
            out.display()
        ))
        .await
        .unwrap_err()
        .to_string();
    eprintln!("{err}");
    assert!(
        err.contains("on executor 127.0.0.1:") && err.contains("model 'tiny'"),
        "{err}"
    );
    assert!(err.contains("safetensors"), "{err}");
    assert!(!out.exists());

    // A client of another version: refused by the executor, naming both versions.
    engine
        .sql("SET prefflow.client_version = '0.0.1-other'")
        .await
        .unwrap();
    let err = engine
        .query(&format!("SELECT p FROM '{}'", d.join("in.jsonl").display()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("on executor 127.0.0.1:")
            && err.contains("client prefflow 0.0.1-other")
            && err.contains(env!("CARGO_PKG_VERSION")),
        "{err}"
    );
}
