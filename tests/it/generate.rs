//! Decoder parity against transformers: real weights (SmolLM2-135M-Instruct and Gemma-3-270m
//! GGUF files from scripts/fetch-models; references from scripts/reference/generate.py) and tiny
//! random-weight safetensors decoders (Qwen2, Llama, Gemma 3; tests/fixtures/decoders from
//! scripts/reference/decoder_fixtures.py).

use std::path::Path;

use super::support::ROOT;

use datafusion::arrow::array::{AsArray, Float64Array};
use prefflow_udfs::models::gguf::{GgufMetadata, read_metadata};

fn fixture(path: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap()).unwrap()
}

/// A JSON list of token ids.
fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn quote(v: &serde_json::Value) -> String {
    format!("'{}'", v.as_str().unwrap().replace('\'', "''"))
}

async fn engine(declarations: &[String]) -> prefflow::Engine {
    super::support::at_root();
    let engine = super::support::engine_with(prefflow::SessionOptions {
        cache: Some(prefflow::CacheMode::Off),
        ..Default::default()
    });
    for d in declarations {
        engine.sql(d).await.unwrap();
    }
    engine
}

/// ai_generate of every reference prompt under each model, greedy, in prompt order.
async fn generate(
    engine: &prefflow::Engine,
    models: &[&str],
    cases: &[serde_json::Value],
    options: &str,
) -> Vec<Vec<String>> {
    let values: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| format!("({i}, {})", quote(&c["prompt"])))
        .collect();
    let calls: Vec<String> = models
        .iter()
        .map(|m| format!("ai_generate('{m}', p, named_struct({options}))"))
        .collect();
    let sql = format!(
        "SELECT {} FROM (VALUES {}) v(i, p) ORDER BY i",
        calls.join(", "),
        values.join(", ")
    );
    let batches = engine.query(&sql).await.unwrap();
    let mut out = vec![Vec::new(); models.len()];
    for b in &batches {
        for (m, col) in out.iter_mut().enumerate() {
            let a = b.column(m).as_string::<i32>();
            col.extend((0..b.num_rows()).map(|r| a.value(r).to_string()));
        }
    }
    out
}

/// Asserts ai_logprob under `model` equals the references within 1e-4 relative.
async fn assert_logprobs(engine: &prefflow::Engine, model: &str, pairs: &[serde_json::Value]) {
    let values: Vec<String> = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| format!("({i}, {}, {})", quote(&p["prompt"]), quote(&p["response"])))
        .collect();
    let sql = format!(
        "SELECT ai_logprob('{model}', p, r) FROM (VALUES {}) v(i, p, r) ORDER BY i",
        values.join(", ")
    );
    let batches = engine.query(&sql).await.unwrap();
    let got: Vec<f64> = batches
        .iter()
        .flat_map(|b| {
            let a: &Float64Array = b.column(0).as_primitive();
            a.values().to_vec()
        })
        .collect();
    assert_eq!(got.len(), pairs.len());
    for (g, p) in got.iter().zip(pairs) {
        let e = p["logprob"].as_f64().unwrap();
        let rel = (g - e).abs() / e.abs();
        assert!(
            rel < 1e-4,
            "{model} {:?}: got {g}, transformers {e} (relative {rel:e})",
            p["response"]
        );
    }
}

/// Greedy f32 texts must equal the references; reports how many quantized texts do too, and
/// how many leading tokens the quantized texts share with the references on average.
fn check_greedy(
    name: &str,
    model_dir: &str,
    cases: &[serde_json::Value],
    f32: &[String],
    q: &[String],
) -> usize {
    assert_eq!(f32.len(), cases.len());
    for (got, c) in f32.iter().zip(cases) {
        assert_eq!(
            got,
            c["text"].as_str().unwrap(),
            "{name}: {:?}",
            c["prompt"]
        );
    }
    let tokenizer = read_metadata(name, &Path::new(ROOT).join(model_dir))
        .unwrap()
        .tokenizer;
    let mut same = 0;
    let (mut agree, mut total) = (0, 0);
    for (g, c) in q.iter().zip(cases) {
        same += usize::from(g.as_str() == c["text"].as_str().unwrap());
        let reference: Vec<u32> = ids(&c["ids"]);
        let got = tokenizer.encode(g.as_str(), false).unwrap();
        agree += reference
            .iter()
            .zip(got.get_ids())
            .take_while(|(a, b)| a == b)
            .count();
        total += reference.len();
    }
    println!(
        "{name} quantized path: {same}/{} prompts give transformers' greedy text; {agree}/{total} tokens agree before the first difference",
        cases.len()
    );
    same
}

/// The tokenizer built from GGUF metadata gives transformers' ids (reference: transformers
/// AutoTokenizer.from_pretrained(dir, gguf_file=...) on the same file, chat-templated prompt).
#[test]
fn gguf_tokenizer_matches_transformers() {
    let dir = Path::new(ROOT).join("models/smollm2-135m-instruct");
    let GgufMetadata {
        tokenizer, info, ..
    } = read_metadata("policy", &dir).unwrap();
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

/// Gemma's SentencePiece tokenizer, rebuilt from the GGUF vocabulary (no merges in the file),
/// gives transformers' ids, BOS included, on code, Spanish, digits and runs of spaces.
#[test]
fn gemma_gguf_tokenizer_matches_transformers() {
    let reference = fixture("tests/fixtures/gemma3_greedy.json");
    let dir = Path::new(ROOT).join("models/gemma-3-270m");
    let GgufMetadata {
        tokenizer, info, ..
    } = read_metadata("gemma", &dir).unwrap();
    assert_eq!(info.add_bos, Some(2));
    for case in reference["references"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let mut got = vec![2];
        got.extend(tokenizer.encode(prompt, false).unwrap().get_ids());
        assert_eq!(got, ids(&case["prompt_ids"]), "{prompt:?}");
        let new: Vec<u32> = ids(&case["ids"]);
        assert_eq!(
            tokenizer.decode(&new, true).unwrap(),
            case["text"].as_str().unwrap()
        );
    }
    let spaces = tokenizer.encode("a    b\n\n  c", false).unwrap();
    assert_eq!(
        tokenizer.decode(spaces.get_ids(), true).unwrap(),
        "a    b\n\n  c"
    );
}

/// SmolLM2: greedy generation in the f32 path equals transformers' (weights dequantized from
/// the same GGUF), with the rows decoded together (continuous batching). The quantized path is
/// reported, not required: activation quantization legitimately changes some greedy picks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_greedy_matches_transformers_in_f32() {
    let reference = fixture("tests/fixtures/smollm2_greedy.json");
    let cases = reference["references"].as_array().unwrap();
    let max_tokens = reference["max_tokens"].as_u64().unwrap();
    let engine = engine(&[
        "CREATE MODEL f32 FROM 'models/smollm2-135m-instruct' OPTIONS (dtype 'f32')".into(),
        "CREATE MODEL q FROM 'models/smollm2-135m-instruct'".into(),
    ])
    .await;
    let out = generate(
        &engine,
        &["f32", "q"],
        cases,
        &format!("'max_tokens', {max_tokens}"),
    )
    .await;
    check_greedy(
        "SmolLM2",
        "models/smollm2-135m-instruct",
        cases,
        &out[0],
        &out[1],
    );
}

/// SmolLM2: ai_logprob in the f32 path equals transformers' within 1e-4 relative.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_logprob_matches_transformers_in_f32() {
    let reference = fixture("tests/fixtures/smollm2_greedy.json");
    let engine = engine(&[
        "CREATE MODEL f32 FROM 'models/smollm2-135m-instruct' OPTIONS (dtype 'f32')".into(),
    ])
    .await;
    assert_logprobs(&engine, "f32", reference["logprobs"].as_array().unwrap()).await;
}

/// Gemma-3-270m (base model, raw completions with BOS): greedy f32 equals transformers';
/// ai_logprob under a chat template given in OPTIONS equals transformers' within 1e-4; the
/// quantized (Q4_K_M) output is the same decoded 8 together and one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemma3_matches_transformers_in_f32() {
    let reference = fixture("tests/fixtures/gemma3_greedy.json");
    let cases = reference["references"].as_array().unwrap();
    let max_tokens = reference["max_tokens"].as_u64().unwrap();
    let template = quote(&reference["chat_template"]);
    let engine = engine(&[
        format!(
            "CREATE MODEL f32 FROM 'models/gemma-3-270m' OPTIONS (dtype 'f32', chat_template {template})"
        ),
        "CREATE MODEL q FROM 'models/gemma-3-270m'".into(),
    ])
    .await;
    let options = format!("'max_tokens', {max_tokens}, 'chat', false");
    let out = generate(&engine, &["f32", "q"], cases, &options).await;
    check_greedy(
        "Gemma-3-270m",
        "models/gemma-3-270m",
        cases,
        &out[0],
        &out[1],
    );
    // The quantized path too is independent of which sequences share a batch.
    engine.sql("SET prefflow.decode_batch = 1").await.unwrap();
    let single = generate(&engine, &["q"], cases, &options).await;
    assert_eq!(
        single[0], out[1],
        "quantized Gemma: batch size changed the output"
    );
    assert_logprobs(&engine, "f32", reference["logprobs"].as_array().unwrap()).await;
}

/// Tiny random-weight decoders of every family from safetensors (scripts/reference/
/// decoder_fixtures.py): Qwen2, Llama (tied embeddings), Gemma 3 (sliding window of 4, q/k
/// norms, two RoPE bases), Qwen3 (q/k norms, head_dim from the config), Gemma 2 (attention and
/// final soft-capping, alternating windows), Mistral (a window of 16 on every layer, passed by
/// every prompt), Phi-3 (fused projections, partial rotary, LongRoPE with a prompt that crosses
/// the original context while generating) and Llama with llama3, yarn, dynamic and linear RoPE
/// scaling: greedy text and ai_logprob equal transformers' (float64 references), decoding all
/// rows together and one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_safetensors_decoders_match_transformers() {
    let reference = fixture("tests/fixtures/decoders/reference.json");
    let max_tokens = reference["max_tokens"].as_u64().unwrap();
    for (name, r) in reference["models"].as_object().unwrap() {
        let engine = engine(&[format!(
            "CREATE MODEL m FROM 'tests/fixtures/decoders/{name}'"
        )])
        .await;
        let cases = r["greedy"].as_array().unwrap();
        let options = format!("'max_tokens', {max_tokens}");
        let batched = generate(&engine, &["m"], cases, &options).await;
        for (got, c) in batched[0].iter().zip(cases) {
            assert_eq!(
                got,
                c["text"].as_str().unwrap(),
                "{name}: {:?}",
                c["prompt"]
            );
        }
        engine.sql("SET prefflow.decode_batch = 1").await.unwrap();
        let single = generate(&engine, &["m"], cases, &options).await;
        assert_eq!(batched, single, "{name}: batch size changed the output");
        assert_logprobs(&engine, "m", r["logprobs"].as_array().unwrap()).await;
    }
}

/// The same tiny decoders as GGUF files (scripts/reference/gguf_fixtures.py: llama.cpp's names,
/// permuted llama q/k, Gemma's stored 1 + w norms, Phi-3's fused matrices, Llama 3's rope_freqs
/// and LongRoPE's factor tensors, f32 weights) give their safetensors twins' transformers
/// references: the same greedy text and ai_logprob within 1e-4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_gguf_decoders_match_their_safetensors_twins() {
    let reference = fixture("tests/fixtures/decoders/reference.json");
    let max_tokens = reference["max_tokens"].as_u64().unwrap();
    let families = [
        "llama",
        "qwen2",
        "qwen3",
        "gemma2",
        "phi3",
        "llama3_rope",
        "llama_yarn",
        "llama_linear",
    ];
    for name in families {
        let r = &reference["models"][name];
        let engine = engine(&[format!(
            "CREATE MODEL m FROM 'tests/fixtures/gguf/{name}/model.gguf'"
        )])
        .await;
        let cases = r["greedy"].as_array().unwrap();
        let options = format!("'max_tokens', {max_tokens}");
        let got = generate(&engine, &["m"], cases, &options).await;
        for (got, c) in got[0].iter().zip(cases) {
            assert_eq!(
                got,
                c["text"].as_str().unwrap(),
                "{name} GGUF: {:?}",
                c["prompt"]
            );
        }
        assert_logprobs(&engine, "m", r["logprobs"].as_array().unwrap()).await;
    }
}
