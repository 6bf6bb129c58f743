//! The result cache through the library, EXPLAIN / EXPLAIN ANALYZE of model calls, and shards.

use std::path::Path;

use prefflow::{CacheMode, Engine, SessionOptions};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/decoders/qwen2");

/// A session on `cache` with the tiny decoder declared as `tiny`.
async fn engine(cache: &Path, settings: &[(&str, &str)]) -> Engine {
    let engine = super::support::engine_with(SessionOptions {
        target_partitions: Some(2),
        cache_dir: Some(cache.to_path_buf()),
        cache: Some(CacheMode::ReadWrite),
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    });
    engine
        .sql(&format!("CREATE MODEL tiny FROM '{TINY}'"))
        .await
        .unwrap();
    engine
}

use super::support::text;

fn prompts(dir: &Path, n: usize) {
    let rows: String = (0..n)
        .map(|i| {
            format!(
                "{{\"id\": {i}, \"topic\": \"t{}\", \"prompt\": \"Tell me about {i}.\"}}\n",
                i % 3
            )
        })
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), rows).unwrap();
}

const GENERATE: &str = "ai_generate('tiny', prompt, named_struct('max_tokens', 8))";

#[tokio::test]
async fn explain_analyze_shows_calls_cache_hits_tokens_batches_and_time() {
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 6);
    let cache = dir.path().join("cache");
    let e = engine(&cache, &[]).await;
    let from = format!("FROM '{}'", dir.path().join("prompts.jsonl").display());

    // EXPLAIN names the call and its model's files, without running it.
    let plan = text(&e, &format!("EXPLAIN SELECT {GENERATE} {from}")).await;
    assert!(
        plan.contains("ModelCallsExec: ai_generate(tiny) [model="),
        "{plan}"
    );
    assert!(plan.contains("decoders/qwen2"), "{plan}");
    assert!(!plan.contains("calls="), "{plan}");

    let analyze = format!("EXPLAIN ANALYZE SELECT id, {GENERATE} {from}");
    let first = text(&e, &analyze).await;
    assert!(
        first.contains("calls=6 cache_hits=0 input_tokens="),
        "{first}"
    );
    assert!(!first.contains("output_tokens=0 "), "{first}");
    assert!(
        first.contains("batches=") && first.contains("time="),
        "{first}"
    );

    // The same query again, in a new session on the same cache: every row is a hit and the
    // model reads and writes nothing.
    let again = engine(&cache, &[]).await;
    let second = text(&again, &analyze).await;
    assert!(
        second.contains("calls=6 cache_hits=6 input_tokens=0 output_tokens=0"),
        "{second}"
    );
}

#[tokio::test]
async fn results_are_reused_across_queries_and_only_by_identical_calls() {
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 6);
    let cache = dir.path().join("cache");
    let e = engine(&cache, &[]).await;
    let from = format!("FROM '{}'", dir.path().join("prompts.jsonl").display());
    let fresh = text(
        &e,
        &format!("SELECT id, {GENERATE} AS a {from} ORDER BY id"),
    )
    .await;

    // Another query over some of the same prompts reuses them; a different option does not.
    let sub = text(
        &e,
        &format!("EXPLAIN ANALYZE SELECT id, {GENERATE} {from} WHERE id < 3"),
    )
    .await;
    assert!(sub.contains("calls=3 cache_hits=3"), "{sub}");
    let other = text(
        &e,
        &format!(
            "EXPLAIN ANALYZE SELECT ai_generate('tiny', prompt, named_struct('max_tokens', 9)) {from}"
        ),
    )
    .await;
    assert!(other.contains("calls=6 cache_hits=0"), "{other}");

    // Cached results are the computed ones.
    let cached = text(
        &e,
        &format!("SELECT id, {GENERATE} AS a {from} ORDER BY id"),
    )
    .await;
    assert_eq!(fresh, cached);

    // 'read' reuses but stores nothing new; 'off' neither reads nor writes.
    e.sql("SET prefflow.cache = 'read'").await.unwrap();
    let q = format!(
        "EXPLAIN ANALYZE SELECT ai_generate('tiny', prompt, named_struct('max_tokens', 7)) {from}"
    );
    assert!(text(&e, &q).await.contains("calls=6 cache_hits=0"));
    assert!(
        text(&e, &q).await.contains("calls=6 cache_hits=0"),
        "read mode wrote"
    );
    e.sql("SET prefflow.cache = 'off'").await.unwrap();
    let off = text(&e, &format!("EXPLAIN ANALYZE SELECT {GENERATE} {from}")).await;
    assert!(off.contains("calls=6 cache_hits=0"), "{off}");

    // A bad mode is an error naming the setting.
    e.sql("SET prefflow.cache = 'sometimes'").await.unwrap();
    let err = e
        .query(&format!("SELECT {GENERATE} {from}"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ai_generate: prefflow.cache must be 'off', 'read' or 'readwrite'"),
        "{err}"
    );
}

#[tokio::test]
async fn the_union_of_shards_is_the_unsharded_output() {
    let dir = tempfile::tempdir().unwrap();
    prompts(dir.path(), 30);
    let cache = dir.path().join("cache");
    let input = dir.path().join("prompts.jsonl");
    let out = dir.path().join("out");
    let copy = |target: &str| {
        format!(
            "COPY (SELECT id, topic, {GENERATE} AS answer FROM '{}' ORDER BY id) TO '{}/{target}'",
            input.display(),
            out.display()
        )
    };
    let whole = engine(&cache, &[]).await;
    whole.sql(&copy("all.parquet")).await.unwrap();
    for (key, name) in [("", "rows"), ("topic", "topics")] {
        let mut counts = Vec::new();
        for i in 0..3 {
            let shard = format!("{i}/3");
            let e = engine(
                &cache,
                &[("prefflow.shard", &shard), ("prefflow.shard_key", key)],
            )
            .await;
            let n = text(&e, &copy(&format!("{name}.parquet"))).await;
            counts.push(n);
        }
        let parts = format!("'{}/{name}.shard-*-of-00003.parquet'", out.display());
        let whole_file = format!("'{}/all.parquet'", out.display());
        let check = engine(&cache, &[]).await;
        let diff = text(
            &check,
            &format!(
                "SELECT (SELECT count(*) FROM {parts}) AS n,
                        (SELECT count(*) FROM (SELECT * FROM {whole_file} EXCEPT SELECT * FROM {parts})) AS missing,
                        (SELECT count(*) FROM (SELECT * FROM {parts} EXCEPT SELECT * FROM {whole_file})) AS extra"
            ),
        )
        .await;
        assert!(diff.contains("| 30 | 0       | 0     |"), "{name}: {diff}");
        if key == "topic" {
            // A key keeps its rows together: each topic is in exactly one shard.
            let mut topics = 0;
            for i in 0..3 {
                let file = format!("'{}/{name}.shard-{i:05}-of-00003.parquet'", out.display());
                let batches = check
                    .query(&format!("SELECT count(DISTINCT topic) FROM {file}"))
                    .await
                    .unwrap();
                let column = batches[0].column(0);
                topics += datafusion::arrow::array::cast::AsArray::as_primitive::<
                    datafusion::arrow::datatypes::Int64Type,
                >(column)
                .value(0);
            }
            assert_eq!(topics, 3, "each of the 3 topics in one shard");
        }
        assert_eq!(counts.len(), 3);
    }

    // Without a key, a statement reading two files cannot shard them alike.
    let e = engine(&cache, &[("prefflow.shard", "0/2")]).await;
    let err = e
        .query(&format!(
            "SELECT * FROM '{0}' a JOIN '{0}' b ON a.id = b.id",
            input.display()
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--shard-key"), "{err}");
}
