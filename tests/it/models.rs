//! Model functions on real weights against their Python reference implementations:
//! ai_embed vs sentence-transformers (tests/fixtures/minilm_reference.json) and ai_reward vs
//! transformers on tiny random-weight models (tests/fixtures/reward/). Both references are
//! made by the committed scripts in scripts/reference/.

use datafusion::arrow::array::{Array, AsArray, Float64Array};
use datafusion::arrow::datatypes::Float32Type;
use prefflow::{Engine, SessionOptions};

fn engine(partitions: usize) -> Engine {
    super::support::at_root();
    super::support::engine_with(SessionOptions {
        target_partitions: Some(partitions),
        // The model must really run: no results from earlier runs.
        cache: Some(prefflow::CacheMode::Off),
        ..Default::default()
    })
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Embeddings of `sentences` by minilm in one query, in input order.
async fn embed(engine: &Engine, sentences: &[String]) -> Vec<Vec<f32>> {
    embed_with(engine, "minilm", sentences).await
}

/// Embeddings of `sentences` by `model` in one query, in input order.
async fn embed_with(engine: &Engine, model: &str, sentences: &[String]) -> Vec<Vec<f32>> {
    let values: Vec<String> = sentences
        .iter()
        .enumerate()
        .map(|(i, s)| format!("({i}, {})", quote(s)))
        .collect();
    let sql = format!(
        "SELECT i, ai_embed('{model}', t) AS e FROM (VALUES {}) v(i, t) ORDER BY i",
        values.join(", ")
    );
    let batches = engine.query(&sql).await.unwrap();
    let mut out = Vec::new();
    for b in batches {
        let list = b.column(1).as_fixed_size_list();
        for r in 0..list.len() {
            out.push(
                list.value(r)
                    .as_primitive::<Float32Type>()
                    .values()
                    .to_vec(),
            );
        }
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_embed_matches_sentence_transformers() {
    let engine = engine(2);
    engine
        .sql("CREATE MODEL minilm FROM 'models/all-minilm-l6-v2'")
        .await
        .unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/minilm_reference.json").unwrap(),
    )
    .unwrap();
    let sentences: Vec<String> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let expected: Vec<Vec<f32>> = reference["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let got = embed(&engine, &sentences).await;
    assert_eq!(got.len(), expected.len());
    let mut worst = 0f32;
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g.len(), 384);
        let d = max_abs_diff(g, e);
        worst = worst.max(d);
        let cos: f32 = g.iter().zip(e).map(|(x, y)| x * y).sum::<f32>()
            / (g.iter().map(|x| x * x).sum::<f32>().sqrt()
                * e.iter().map(|x| x * x).sum::<f32>().sqrt());
        assert!(cos >= 0.9999, "sentence {i}: cosine {cos}");
        assert!(
            d < 1e-4,
            "sentence {i} ({:?}): max |diff| {d}",
            &sentences[i]
        );
    }
    println!(
        "ai_embed parity: {} sentences, worst max |diff| {worst:e}",
        got.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_embed_batched_equals_one_by_one() {
    let engine = engine(3);
    engine
        .sql("CREATE MODEL minilm FROM 'models/all-minilm-l6-v2'")
        .await
        .unwrap();
    let sentences: Vec<String> = (0..40)
        .map(|i| format!("Sentence number {i} {}", "with more words ".repeat(i % 7)))
        .collect();
    // Big batches across partitions vs a budget so small that every row runs alone.
    let batched = embed(&engine, &sentences).await;
    engine
        .sql("SET prefflow.max_batch_tokens = 1")
        .await
        .unwrap();
    let single = embed(&engine, &sentences).await;
    for (i, (a, b)) in batched.iter().zip(&single).enumerate() {
        let d = max_abs_diff(a, b);
        assert!(d < 1e-5, "row {i}: batched and one-by-one differ by {d}");
    }
}

/// ai_reward of every head against transformers (tests/fixtures/reward): BERT (a text pair),
/// and *ForSequenceClassification of Qwen2, Llama, Qwen3, Gemma 2 (soft-capping, windows of
/// 4), Mistral (a window of 8) and Phi-3 (fused projections, partial rotary), chat-templated,
/// within 1e-4 relative; each row alone gives the bits it gives in a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_reward_matches_transformers() {
    let engine = engine(2);
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/reward/reference.json").unwrap(),
    )
    .unwrap();
    let pairs: Vec<(String, String)> = reference["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let values: Vec<String> = pairs
        .iter()
        .enumerate()
        .map(|(i, (p, r))| format!("({i}, {}, {})", quote(p), quote(r)))
        .collect();
    for head in [
        "bert", "qwen2", "llama", "qwen3", "gemma2", "mistral", "phi3",
    ] {
        let path = reference[head]["path"].as_str().unwrap();
        engine
            .sql(&format!("CREATE OR REPLACE MODEL rm FROM '{path}'"))
            .await
            .unwrap();
        let sql = format!(
            "SELECT i, ai_reward('rm', p, r) FROM (VALUES {}) v(i, p, r) ORDER BY i",
            values.join(", ")
        );
        let batches = engine.query(&sql).await.unwrap();
        let got: Vec<f64> = batches
            .iter()
            .flat_map(|b| {
                b.column(1)
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        let expected: Vec<f64> = reference[head]["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            let rel = (g - e).abs() / e.abs().max(1e-6);
            assert!(
                rel < 1e-4,
                "{head}: got {g}, transformers {e} (relative {rel:e})"
            );
        }
        // Scores differ between responses: the test would notice a constant output.
        assert!(expected.iter().any(|e| (e - expected[0]).abs() > 0.1));
        // Scored one row at a time, each row gives the same bits as in the batch.
        for (i, (p, r)) in pairs.iter().enumerate() {
            let sql = format!("SELECT ai_reward('rm', {}, {})", quote(p), quote(r));
            let alone = engine.query(&sql).await.unwrap();
            let alone = alone[0]
                .column(0)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .value(0);
            assert_eq!(alone, got[i], "{head}: row {i} alone vs in a batch");
        }
    }
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Tiny random-weight embedders against sentence-transformers (tests/fixtures/encoders, from
/// scripts/reference/encoder_fixtures.py): XLM-RoBERTa with mean pooling (positions past the
/// padding id), a Qwen3 decoder with last-token pooling (Qwen3-Embedding's shape), BERT with
/// CLS pooling and ModernBERT (a global and a local layer of ±4 tokens, two RoPE bases), all
/// cosine >= 0.9999 and within 1e-4; one sentence at a time equals the batch. And RoBERTa,
/// DeBERTa-v3 and ModernBERT reward models on text pairs against transformers, within 1e-4
/// relative.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_encoders_match_sentence_transformers() {
    let engine = engine(2);
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/encoders/reference.json").unwrap(),
    )
    .unwrap();
    let sentences = strings(&reference["sentences"]);
    for name in ["xlmr", "qwen3_embed", "bert_cls", "modernbert"] {
        let r = &reference[name];
        engine
            .sql(&format!(
                "CREATE OR REPLACE MODEL e FROM '{}'",
                r["path"].as_str().unwrap()
            ))
            .await
            .unwrap();
        let got = embed_with(&engine, "e", &sentences).await;
        let expected = r["embeddings"].as_array().unwrap();
        assert_eq!(got.len(), expected.len(), "{name}");
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            let e: Vec<f32> = e
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let cos: f32 = g.iter().zip(&e).map(|(x, y)| x * y).sum::<f32>()
                / (g.iter().map(|x| x * x).sum::<f32>().sqrt()
                    * e.iter().map(|x| x * x).sum::<f32>().sqrt());
            let d = max_abs_diff(g, &e);
            assert!(
                cos >= 0.9999 && d < 1e-4,
                "{name} sentence {i}: cosine {cos}, max diff {d}"
            );
        }
        for (i, s) in sentences.iter().enumerate() {
            let alone = embed_with(&engine, "e", std::slice::from_ref(s)).await;
            let d = max_abs_diff(&alone[0], &got[i]);
            assert!(
                d < 1e-5,
                "{name} sentence {i}: alone and batched differ by {d}"
            );
        }
    }
    for name in ["roberta_rm", "deberta_rm", "modernbert_rm"] {
        let r = &reference[name];
        engine
            .sql(&format!(
                "CREATE OR REPLACE MODEL rm FROM '{}'",
                r["path"].as_str().unwrap()
            ))
            .await
            .unwrap();
        let expected = r["scores"].as_array().unwrap();
        for (pair, want) in reference["pairs"].as_array().unwrap().iter().zip(expected) {
            let pair = strings(pair);
            let sql = format!(
                "SELECT ai_reward('rm', {}, {})",
                quote(&pair[0]),
                quote(&pair[1])
            );
            let b = engine.query(&sql).await.unwrap();
            let got = b[0]
                .column(0)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .value(0);
            let want = want.as_f64().unwrap();
            let rel = (got - want).abs() / want.abs().max(1e-6);
            assert!(rel < 1e-4, "{name} {pair:?}: {got} vs transformers {want}");
        }
        assert!(
            expected
                .iter()
                .any(|e| (e.as_f64().unwrap() - expected[0].as_f64().unwrap()).abs() > 0.05),
            "{name}: constant scores"
        );
    }
}

/// ai_embed's prompt options against sentence-transformers' encode(prompt_name=...): the Qwen3
/// embedder's "query" instruction (config_sentence_transformers.json), the same text given as
/// `prompt`, and an unknown name refused with the names the model has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_embed_prompts_match_sentence_transformers() {
    let engine = engine(2);
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/encoders/reference.json").unwrap(),
    )
    .unwrap();
    let r = &reference["qwen3_embed"];
    engine
        .sql(&format!(
            "CREATE MODEL q FROM '{}'",
            r["path"].as_str().unwrap()
        ))
        .await
        .unwrap();
    let sentences = strings(&reference["sentences"]);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            "tests/fixtures/encoders/qwen3_embed/config_sentence_transformers.json",
        )
        .unwrap(),
    )
    .unwrap();
    let query = config["prompts"]["query"].as_str().unwrap();
    for options in [
        "named_struct('prompt_name', 'query')".to_string(),
        format!("named_struct('prompt', {})", quote(query)),
    ] {
        for (s, want) in sentences
            .iter()
            .zip(r["embeddings_query"].as_array().unwrap())
        {
            let sql = format!("SELECT ai_embed('q', {}, {options})", quote(s));
            let b = engine.query(&sql).await.unwrap();
            let list = b[0].column(0).as_fixed_size_list();
            let got = list
                .value(0)
                .as_primitive::<Float32Type>()
                .values()
                .to_vec();
            let want: Vec<f32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let d = max_abs_diff(&got, &want);
            assert!(d < 1e-4, "{options} {s:?}: max diff {d}");
        }
    }
    // The prompt changes the embedding: the test would notice it being ignored.
    let plain = r["embeddings"][0].as_array().unwrap()[0].as_f64().unwrap();
    let prompted = r["embeddings_query"][0].as_array().unwrap()[0]
        .as_f64()
        .unwrap();
    assert!((plain - prompted).abs() > 1e-3);
    let err = engine
        .query("SELECT ai_embed('q', 'x', named_struct('prompt_name', 'qeury'))")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ai_embed")
            && err.contains("no prompt named 'qeury'")
            && err.contains("document, query"),
        "{err}"
    );
}

/// Qwen3-Embedding's config.json names Qwen3ForCausalLM: a folder with sentence-transformers
/// modules is an embedder whatever head its config names, and embeds as the Qwen3Model folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_causal_lm_folder_with_sentence_transformers_modules_embeds() {
    let dir = tempfile::tempdir().unwrap();
    let from = std::path::Path::new("tests/fixtures/encoders/qwen3_embed");
    let to = dir.path().join("qwen3_embedding");
    std::fs::create_dir(&to).unwrap();
    for sub in ["", "1_Pooling", "2_Normalize"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for e in std::fs::read_dir(from.join(sub)).unwrap().flatten() {
            if e.path().is_file() {
                std::fs::copy(e.path(), to.join(sub).join(e.file_name())).unwrap();
            }
        }
    }
    let config = to.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["architectures"] = serde_json::json!(["Qwen3ForCausalLM"]);
    std::fs::write(&config, c.to_string()).unwrap();
    let engine = engine(1);
    engine
        .sql(&format!("CREATE MODEL a FROM '{}'", to.display()))
        .await
        .unwrap();
    engine
        .sql("CREATE MODEL b FROM 'tests/fixtures/encoders/qwen3_embed'")
        .await
        .unwrap();
    let s = vec!["Water boils at 100 degrees Celsius at sea level.".to_string()];
    let a = embed_with(&engine, "a", &s).await;
    let b = embed_with(&engine, "b", &s).await;
    assert_eq!(a, b);
}
