//! Decoder models on real weights (SmolLM2-135M-Instruct GGUF from scripts/fetch-models).

use std::path::Path;

use prefflow_udfs::models::gguf::read_metadata;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The tokenizer built from GGUF metadata gives transformers' ids (reference: transformers
/// AutoTokenizer.from_pretrained(dir, gguf_file=...) on the same file, chat-templated prompt).
#[test]
fn gguf_tokenizer_matches_transformers() {
    let dir = Path::new(ROOT).join("models/smollm2-135m-instruct");
    let (_, _, tokenizer, info) = read_metadata("policy", &dir).unwrap();
    let text = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    let expected: Vec<u32> = vec![
        1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
        407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1,
        520, 9531, 198,
    ];
    assert_eq!(ids, expected);
    assert_eq!(
        tokenizer.decode(&ids[22..31], true).unwrap(),
        "user\nWhat is the capital of France?"
    );
    assert!(info.eos_ids.contains(&2));
    assert!(info.chat_template.unwrap().contains("<|im_start|>"));
}

/// Greedy generation in the f32 path equals transformers' (weights dequantized from the same
/// GGUF; references from scripts/reference/generate.py). The quantized path is reported, not
/// required: activation quantization in Q4_1 matmuls legitimately changes some greedy picks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_generation_matches_transformers_in_f32() {
    std::env::set_current_dir(ROOT).unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/smollm2_greedy.json").unwrap(),
    )
    .unwrap();
    let max_tokens = reference["max_tokens"].as_u64().unwrap();
    let cases = reference["references"].as_array().unwrap();
    let engine = prefflow::Engine::new().unwrap();
    engine
        .sql("CREATE MODEL f32 FROM 'models/smollm2-135m-instruct' OPTIONS (dtype 'f32')")
        .await
        .unwrap();
    engine
        .sql("CREATE MODEL q FROM 'models/smollm2-135m-instruct'")
        .await
        .unwrap();
    let values: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "({i}, '{}')",
                c["prompt"].as_str().unwrap().replace('\'', "''")
            )
        })
        .collect();
    let sql = format!(
        "SELECT i, ai_generate('f32', p, named_struct('max_tokens', {max_tokens})) AS f,
                ai_generate('q', p, named_struct('max_tokens', {max_tokens})) AS q
         FROM (VALUES {}) v(i, p) ORDER BY i",
        values.join(", ")
    );
    let batches = engine.query(&sql).await.unwrap();
    let mut quantized_same = 0;
    let mut row = 0;
    for b in &batches {
        use datafusion::arrow::array::AsArray;
        let f = b.column(1).as_string::<i32>();
        let q = b.column(2).as_string::<i32>();
        for r in 0..b.num_rows() {
            let expected = cases[row]["text"].as_str().unwrap();
            assert_eq!(f.value(r), expected, "prompt {:?}", cases[row]["prompt"]);
            quantized_same += usize::from(q.value(r) == expected);
            row += 1;
        }
    }
    assert_eq!(row, cases.len());
    println!("quantized Q4_1 path: {quantized_same}/{row} prompts give transformers' greedy text");
}

/// ai_logprob in the f32 path equals transformers' sum of response log-probabilities within
/// 1e-4 relative; the preference-accuracy query over the same pairs runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprob_matches_transformers_in_f32() {
    std::env::set_current_dir(ROOT).unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/smollm2_greedy.json").unwrap(),
    )
    .unwrap();
    let pairs = reference["logprobs"].as_array().unwrap();
    let engine = prefflow::Engine::new().unwrap();
    engine
        .sql("CREATE MODEL f32 FROM 'models/smollm2-135m-instruct' OPTIONS (dtype 'f32')")
        .await
        .unwrap();
    let quote = |v: &serde_json::Value| format!("'{}'", v.as_str().unwrap().replace('\'', "''"));
    let values: Vec<String> = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| format!("({i}, {}, {})", quote(&p["prompt"]), quote(&p["response"])))
        .collect();
    let sql = format!(
        "SELECT i, ai_logprob('f32', p, r) FROM (VALUES {}) v(i, p, r) ORDER BY i",
        values.join(", ")
    );
    let batches = engine.query(&sql).await.unwrap();
    let got: Vec<f64> = batches
        .iter()
        .flat_map(|b| {
            b.column(1)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Float64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(got.len(), pairs.len());
    for (g, p) in got.iter().zip(pairs) {
        let e = p["logprob"].as_f64().unwrap();
        let rel = (g - e).abs() / e.abs();
        assert!(
            rel < 1e-4,
            "{:?}: got {g}, transformers {e} (relative {rel:e})",
            p["response"]
        );
    }
}
