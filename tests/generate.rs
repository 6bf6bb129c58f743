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
