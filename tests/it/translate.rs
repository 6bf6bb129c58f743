//! ai_translate with a Marian encoder-decoder against transformers: a tiny random-weight
//! MarianMTModel (scripts/reference/marian_fixture.py; fixtures in tests/fixtures/translate/):
//! greedy output ids equal, each chosen token's logit within 1e-3, and the SQL function's text
//! equal to the reference decode.

use std::path::Path;

use datafusion::arrow::array::AsArray;
use prefflow::{CacheMode, Engine, SessionOptions};
use prefflow_udfs::models::marian::Marian;
use serde_json::Value;

fn fixture() -> (std::path::PathBuf, Value) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translate");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("reference.json")).unwrap())
            .unwrap();
    (root.join("marian"), reference)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn marian_greedy_ids_and_logits_match_transformers() {
    let (dir, reference) = fixture();
    let model = Marian::load("marian", &dir, candle_core::Device::Cpu, 0).unwrap();
    let max_new = reference["max_new_tokens"].as_u64().unwrap() as usize;
    for case in reference["cases"].as_array().unwrap() {
        let (out, logits) = model
            .generate_ids(&ids(&case["input_ids"]), max_new)
            .unwrap();
        assert_eq!(out, ids(&case["output_ids"]), "{}", case["text"]);
        for (got, want) in logits.iter().zip(case["logits"].as_array().unwrap()) {
            let want = want.as_f64().unwrap() as f32;
            assert!(
                (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                "{}: logit {got} vs {want}",
                case["text"]
            );
        }
    }
}

#[test]
fn marian_batched_output_equals_one_by_one() {
    let (dir, reference) = fixture();
    let model = Marian::load("marian", &dir, candle_core::Device::Cpu, 0).unwrap();
    // Inputs of different lengths (so the batch pads) and a token budget that stops some rows
    // before </s> while others finish.
    let mut inputs: Vec<Vec<u32>> = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ids(&c["input_ids"]))
        .collect();
    inputs.push(inputs[1].iter().chain(&inputs[2]).copied().collect());
    inputs.push(vec![0]);
    for max_new in [1, 7, 20] {
        let alone: Vec<_> = inputs
            .iter()
            .map(|i| model.generate_ids(i, max_new).unwrap())
            .collect();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let together = runtime
            .block_on(model.generate_many(inputs.clone(), max_new))
            .unwrap();
        for ((a, t), input) in alone.iter().zip(&together).zip(&inputs) {
            assert_eq!(a.0, t.0, "ids for {input:?}, max_new {max_new}");
            for (x, y) in a.1.iter().zip(&t.1) {
                assert!((x - y).abs() <= 1e-4, "logit {x} vs {y} for {input:?}");
            }
        }
    }
    // More tokens than the position table holds: a clear error, not a crash.
    let err = model
        .generate_ids(&vec![11; 65], 5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("65 tokens; the model reads 1 to 64"), "{err}");
}

#[tokio::test]
async fn ai_translate_with_marian_gives_the_reference_text() {
    let (dir, reference) = fixture();
    let engine = Engine::with_options(&SessionOptions {
        cache: Some(CacheMode::Off),
        ..Default::default()
    })
    .unwrap();
    engine
        .sql(&format!("CREATE MODEL mt FROM '{}'", dir.display()))
        .await
        .unwrap();
    let max_new = reference["max_new_tokens"].as_u64().unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let batches = engine
            .query(&format!(
                "SELECT ai_translate('mt', '{text}', 'French', NULL, named_struct('max_tokens', {max_new}))"
            ))
            .await
            .unwrap();
        let got = batches[0].column(0).as_string::<i32>().value(0).to_string();
        assert_eq!(got, case["translation"].as_str().unwrap(), "{text}");
    }
    // translate_json through Marian keeps the structure.
    let batches = engine
        .query("SELECT translate_json('mt', '{\"greeting\": \"hello world\", \"n\": 2}', 'French', named_struct('max_tokens', 10))")
        .await
        .unwrap();
    let doc = batches[0].column(0).as_string::<i32>().value(0).to_string();
    let want = reference["cases"][0]["translation"].as_str().unwrap();
    assert_eq!(doc, format!("{{\"greeting\":\"{want}\",\"n\":2}}"));
}
