//! Every queries/*.sql runs, on the bundled data, and returns rows.

use std::collections::HashMap;

use prefflow::{Engine, Script, SessionOptions};

use super::trl;

/// Query-file parameters: outputs to `out`, the bundled data and models of this checkout.
fn params(out: &std::path::Path) -> HashMap<String, String> {
    let root = env!("CARGO_MANIFEST_DIR");
    HashMap::from([
        ("out_dir".to_string(), out.display().to_string()),
        ("data_dir".to_string(), format!("{root}/data")),
        ("models_dir".to_string(), format!("{root}/models")),
    ])
}

/// Every queries/*.sql of this checkout, sorted.
pub(crate) fn query_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/queries"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_file_runs() {
    let out = tempfile::tempdir().unwrap();
    let params = params(out.path());
    let files = query_files();
    assert!(!files.is_empty());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("--"),
            "{} needs a -- header",
            file.display()
        );
        let engine = Engine::with_options(&SessionOptions {
            target_partitions: Some(2),
            cache: Some(prefflow::CacheMode::Off),
            ..Default::default()
        })
        .unwrap();
        let script = Script::from_file(&file).unwrap();
        let last = engine
            .run_script(&script, &params)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .expect("a final query");
        let batches = prefflow::engine::collect(last.dataframe).await.unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert!(rows > 0, "{} returned no rows", file.display());
        eprintln!("{}: {rows} rows", file.display());
    }
    // The training sets the pipelines wrote load as TRL expects, each with its card.
    let engine = Engine::with_options(&prefflow::SessionOptions {
        cache: Some(prefflow::CacheMode::Off),
        ..Default::default()
    })
    .unwrap();
    for (dir, kind) in [
        ("best_of_n_dpo", "dpo"),
        ("judge_dpo", "dpo"),
        ("math_kto", "kto"),
        ("math_pmpo", "kto"),
        ("sft_with_thinking", "sft"),
        ("sft_without_thinking", "sft"),
        ("sft_without_thinking_sharegpt", "sharegpt"),
    ] {
        let rows = trl::check(&engine, &out.path().join(dir), kind).await;
        eprintln!("{dir}: {} rows", rows.len());
    }
    let card = std::fs::read_to_string(out.path().join("best_of_n_dpo/README.md")).unwrap();
    assert!(card.contains("## Score margins"), "{card}");
    assert!(card.contains("| validation |"), "{card}");
}

/// Runs queries/`name` and returns its final query's rows as a text table.
async fn run_file(engine: &Engine, name: &str, params: &HashMap<String, String>) -> String {
    let script =
        Script::from_file(format!("{}/queries/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let last = engine.run_script(&script, params).await.unwrap().unwrap();
    let batches = prefflow::engine::collect(last.dataframe).await.unwrap();
    super::support::table(&batches)
}

/// The pipelines' outputs hold what their headers promise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_results() {
    let out = tempfile::tempdir().unwrap();
    let params = params(out.path());
    let engine = Engine::with_options(&prefflow::SessionOptions {
        cache: Some(prefflow::CacheMode::Off),
        ..Default::default()
    })
    .unwrap();
    run_file(&engine, "math_pairs.sql", &params).await;
    let csv = |sql: String| {
        let engine = engine.clone();
        async move {
            let batches = engine.query(&sql).await.unwrap();
            super::support::table(&batches)
        }
    };
    let table = csv(format!(
        "SELECT prompt_id, chosen, rejected FROM '{}/math_dpo.parquet' ORDER BY prompt_id",
        out.path().display()
    ))
    .await;
    // m3 (all correct) makes no pair; m1's chosen is the shorter correct answer.
    assert!(!table.contains("m3"), "{table}");
    assert!(
        table.contains("| m1        | So 12 * 7 = \\boxed{84}"),
        "{table}"
    );
    assert!(table.contains("| m5        | \\boxed{1024}"), "{table}");

    let table = run_file(&engine, "conversation_pairs.sql", &params).await;
    assert!(
        table.contains("| t1-m1   | 3     | 3             |"),
        "{table}"
    );
    assert!(
        table.contains("| t2-m1   | 3     | 3             |"),
        "{table}"
    );
}

/// The data-selection pipeline drops the over-long and the near-duplicate question of each
/// domain and keeps at most `per_cluster` questions of each of the k clusters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_selection_pipeline() {
    let out = tempfile::tempdir().unwrap();
    let params = params(out.path());
    let engine = Engine::with_options(&prefflow::SessionOptions {
        cache: Some(prefflow::CacheMode::Off),
        ..Default::default()
    })
    .unwrap();
    let table = run_file(&engine, "data_selection.sql", &params).await;
    assert!(
        table.contains("| code   | 5        | 3        | 1                  |"),
        "{table}"
    );
    assert!(
        table.contains("| math   | 6        | 3        | 1                  |"),
        "{table}"
    );
    let batches = engine
        .query(&format!(
            "SELECT count(*) FROM '{}/selection_fewshot.parquet' WHERE prompt LIKE '%A train travels%' OR prompt LIKE '%15 percent%'",
            out.path().display()
        ))
        .await
        .unwrap();
    let n = super::support::table(&batches);
    assert!(
        n.contains("| 0 "),
        "the over-long and the duplicate question must be gone: {n}"
    );
}
