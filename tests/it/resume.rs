//! Durable runs: a generation job killed with SIGKILL mid-run and run again finishes with
//! output byte-identical to an uninterrupted run, recomputing at most the batch that was in
//! flight; a second identical run is served entirely from the result cache; runs sharing one
//! cache at the same time both succeed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Rows, rows per batch: one partition runs one batch at a time.
const ROWS: usize = 120;
const BATCH: usize = 4;

/// A folder with prompts and a generation query writing `out/answers.parquet`.
fn job() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let prompts: String = (0..ROWS)
        .map(|i| {
            format!(
                "{{\"id\": {i}, \"prompt\": \"Question {i}: what is {i} plus {}?\"}}\n",
                i * 3
            )
        })
        .collect();
    std::fs::write(dir.path().join("prompts.jsonl"), prompts).unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoders/qwen2");
    std::fs::write(
        dir.path().join("job.sql"),
        format!(
            "SET datafusion.execution.batch_size = {BATCH};
CREATE MODEL tiny FROM '{}';
COPY (SELECT id, prompt,
             ai_generate('tiny', prompt, named_struct('max_tokens', 48, 'temperature', 0.8, 'seed', 7)) AS answer
      FROM 'prompts.jsonl' ORDER BY id)
TO 'out/answers.parquet';",
            model.display()
        ),
    )
    .unwrap();
    dir
}

fn command(dir: &Path, cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prefflow"));
    c.args(["run", "job.sql", "--partitions", "1", "--cache-dir"])
        .arg(cache)
        .current_dir(dir)
        .env("PREFFLOW_PROGRESS_SECONDS", "0.05");
    c
}

/// (computed, from cache) from a run's summary line:
/// "prefflow: ai_generate(tiny): N rows (C computed, H from cache), ...".
fn summary(stderr: &str) -> (usize, usize) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("prefflow: ai_generate(tiny): ") && l.contains(" computed, "))
        .unwrap_or_else(|| panic!("no summary in:\n{stderr}"));
    let counts = &line[line.find("rows (").expect("rows (") + 6..];
    let numbers: Vec<usize> = counts
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .take(2)
        .collect();
    (numbers[0], numbers[1])
}

fn run_to_end(dir: &Path, cache: &Path) -> (usize, usize) {
    let out = command(dir, cache).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    summary(&stderr)
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(".prefflow-tmp")
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn killed_run_resumes_exactly_and_second_run_is_all_cache_hits() {
    // The uninterrupted run, with a cache of its own.
    let reference = job();
    let (computed, hits) = run_to_end(reference.path(), &reference.path().join("cache"));
    assert_eq!((computed, hits), (ROWS, 0));
    let expected = std::fs::read(reference.path().join("out/answers.parquet")).unwrap();

    // The same job, killed once a quarter of the rows are done.
    let job = job();
    let cache = job.path().join("cache");
    let mut child = command(job.path(), &cache)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut done_at_kill = None;
    let mut in_flight_at_kill = 0;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        // "prefflow: ai_generate(tiny): 32 rows, 4 in flight, 0 cached, ..."
        let numbers: Vec<usize> = line
            .strip_prefix("prefflow: ai_generate(tiny): ")
            .unwrap_or("")
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|t| t.parse().ok())
            .collect();
        if numbers.len() >= 2 && numbers[0] >= ROWS / 4 {
            // SIGKILL: no chance to clean up or flush anything.
            child.kill().unwrap();
            done_at_kill = Some(numbers[0]);
            in_flight_at_kill = numbers[1];
            break;
        }
    }
    let status = child.wait().unwrap();
    let done_at_kill = done_at_kill.expect("the run ended before it could be killed");
    assert!(!status.success(), "killed");
    assert!(done_at_kill < ROWS, "killed mid-run");
    assert!(
        !job.path().join("out/answers.parquet").exists(),
        "a killed run leaves no output"
    );

    // Run again: rows counted done before the kill are all in the cache; at most the batch in
    // flight is computed again.
    let (computed, hits) = run_to_end(job.path(), &cache);
    // Rows the killed run had started = done + in flight; those not in the cache were lost
    // with it and computed again.
    let recomputed = (done_at_kill + in_flight_at_kill).saturating_sub(hits);
    eprintln!(
        "killed after {done_at_kill} of {ROWS} rows with {in_flight_at_kill} in flight; the \
         re-run took {hits} rows from the cache and computed {computed}, of which \
         {recomputed} had been started by the killed run"
    );
    assert!(
        recomputed <= BATCH,
        "at most the batch in flight is recomputed"
    );
    assert_eq!(computed + hits, ROWS);
    assert!(hits >= done_at_kill, "{hits} cached < {done_at_kill} done");
    assert!(
        computed <= ROWS - done_at_kill + BATCH,
        "recomputed more than the batch in flight: {computed} computed, {done_at_kill} done"
    );
    let resumed = std::fs::read(job.path().join("out/answers.parquet")).unwrap();
    assert!(
        resumed == expected,
        "resumed output differs from the uninterrupted run"
    );
    assert!(
        leftovers(&job.path().join("out")).is_empty(),
        "no staging files remain"
    );

    // A second identical run: every row from the cache, same bytes.
    let (computed, hits) = run_to_end(job.path(), &cache);
    assert_eq!((computed, hits), (0, ROWS), "100% cache hits");
    assert!(std::fs::read(job.path().join("out/answers.parquet")).unwrap() == expected);
}

#[test]
fn runs_sharing_a_cache_at_once_both_succeed() {
    let a = job();
    let b = job();
    let cache = a.path().join("shared-cache");
    let first = command(a.path(), &cache)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let second = command(b.path(), &cache)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for (child, dir) in [(first, a.path()), (second, b.path())] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(dir.join("out/answers.parquet").exists());
    }
    assert!(
        std::fs::read(a.path().join("out/answers.parquet")).unwrap()
            == std::fs::read(b.path().join("out/answers.parquet")).unwrap()
    );
    // Everything both wrote is readable afterwards.
    let (computed, hits) = run_to_end(a.path(), &cache);
    assert_eq!((computed, hits), (0, ROWS));
}

#[test]
fn quiet_runs_print_nothing_and_cache_off_recomputes() {
    let job = job();
    let cache = job.path().join("cache");
    let out = command(job.path(), &cache).arg("--quiet").output().unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = command(job.path(), &cache)
        .args(["--cache", "off"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(summary(&stderr), (ROWS, 0), "{stderr}");
    let out = command(job.path(), &cache)
        .args(["--cache", "sometimes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prefflow.cache must be"));
}

/// With default settings one record batch holds every row of a typical job: a kill late in
/// the run must still lose only what was at the model, not the whole batch.
#[test]
fn a_kill_with_default_batches_loses_only_rows_in_flight() {
    // Enough rows that the run lasts several commit intervals (0.5 s) on a fast machine.
    const N: usize = 960;
    let dir = tempfile::tempdir().unwrap();
    let prompts: String = (0..N)
        .map(|i| format!("{{\"id\": {i}, \"prompt\": \"Tell me about the number {i}.\"}}\n"))
        .collect();
    std::fs::write(dir.path().join("prompts.jsonl"), prompts).unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoders/qwen2");
    std::fs::write(
        dir.path().join("job.sql"),
        format!(
            "CREATE MODEL tiny FROM '{}';
COPY (SELECT id, ai_generate('tiny', prompt, named_struct('max_tokens', 64, 'temperature', 0.7)) AS answer
      FROM 'prompts.jsonl' ORDER BY id)
TO 'out/answers.parquet';",
            model.display()
        ),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    // Default batch size and partitions: only the progress interval is short.
    let mut c = Command::new(env!("CARGO_BIN_EXE_prefflow"));
    c.args(["run", "job.sql", "--cache-dir"])
        .arg(&cache)
        .current_dir(dir.path())
        .env("PREFFLOW_PROGRESS_SECONDS", "0.05")
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut done_at_kill = None;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let numbers: Vec<usize> = line
            .strip_prefix("prefflow: ai_generate(tiny): ")
            .unwrap_or("")
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|t| t.parse().ok())
            .collect();
        if line.contains("in flight") && numbers.first().is_some_and(|&d| d >= N * 6 / 10) {
            child.kill().unwrap();
            done_at_kill = Some(numbers[0]);
            break;
        }
    }
    let _ = child.wait();
    let done = done_at_kill.expect("progress never showed 60% of the rows done before the end");
    assert!(done < N, "killed mid-run");
    let out = Command::new(env!("CARGO_BIN_EXE_prefflow"))
        .args(["run", "job.sql", "--cache-dir"])
        .arg(&cache)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let (computed, hits) = summary(&stderr);
    eprintln!("killed at {done}/{N} rows done; re-run: {hits} from cache, {computed} computed");
    assert_eq!(computed + hits, N);
    assert!(
        hits >= done,
        "rows reported done were lost: {hits} cached < {done}"
    );
}
