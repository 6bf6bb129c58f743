//! GGUF decoders: a .gguf file alone is a complete model. Its metadata gives the architecture,
//! the tokenizer (GPT-2 style BPE: tokens and merges), BOS / EOS ids and the chat template; a
//! tokenizer.json beside the file wins over the embedded tokenizer.
//!
//! Byte-level BPE vocabularies (gpt2) carry their merges; SentencePiece vocabularies (llama,
//! e.g. Gemma) do not, so the merges are rebuilt from the vocabulary the way transformers does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::error::{ModelError, ModelResult};
use super::types::DecoderInfo;

/// The GGUF file a model path is: the path itself, the one .gguf file in a folder, or None for
/// a folder without one. A folder with several is refused before any is read (which is meant?).
pub fn find(model: &str, path: &Path) -> ModelResult<Option<PathBuf>> {
    if path.is_file() {
        return Ok(Some(path.to_path_buf()));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| ModelError::File {
            model: model.into(),
            path: path.display().to_string(),
            problem: e.to_string(),
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    files.sort();
    match files.len() {
        0 => Ok(None),
        1 => Ok(Some(files.remove(0))),
        n => {
            let names: Vec<String> = files
                .iter()
                .filter_map(|f| f.file_name())
                .map(|f| f.to_string_lossy().into_owned())
                .collect();
            Err(ModelError::Declaration(format!(
                "CREATE MODEL {model}: {} holds {n} GGUF files ({}): name one, as FROM '{}'",
                path.display(),
                names.join(", "),
                files[0].display()
            )))
        }
    }
}

/// The .gguf file of a model path (the file itself, or the one .gguf in a folder).
pub fn gguf_file(model: &str, path: &Path) -> ModelResult<PathBuf> {
    find(model, path)?.ok_or_else(|| ModelError::File {
        model: model.into(),
        path: path.display().to_string(),
        problem: "no .gguf file".into(),
    })
}

/// What a GGUF file's header says ([`read_metadata`]): everything but the weights, and the open
/// file to read those from.
pub struct GgufMetadata {
    /// The header: metadata and the tensor table.
    pub content: gguf_file::Content,
    /// The file, open, for the weights.
    pub reader: std::fs::File,
    /// The tokenizer (a tokenizer.json beside the file wins over the embedded one).
    pub tokenizer: Tokenizer,
    /// What generation needs: chat template, special tokens, context length.
    pub info: DecoderInfo,
}

fn meta_str(ct: &gguf_file::Content, key: &str) -> Option<String> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .cloned()
}

fn meta_u32(ct: &gguf_file::Content, key: &str) -> Option<u32> {
    ct.metadata.get(key).and_then(|v| v.to_u32().ok())
}

/// Builds the tokenizer a GGUF file describes: byte-level BPE (gpt2) or SentencePiece BPE
/// (llama), with control tokens matched whole.
fn embedded_tokenizer(model: &str, ct: &gguf_file::Content) -> ModelResult<Tokenizer> {
    let bad = |problem: String| ModelError::Unsupported {
        model: model.into(),
        problem,
    };
    let kind = meta_str(ct, "tokenizer.ggml.model").unwrap_or_default();
    let list = |key: &str| -> ModelResult<Vec<String>> {
        ct.metadata
            .get(key)
            .and_then(|v| v.to_vec().ok())
            .ok_or_else(|| bad(format!("GGUF metadata has no {key}")))?
            .iter()
            .map(|v| v.to_string().cloned().map_err(|e| bad(e.to_string())))
            .collect()
    };
    let mut tokens = list("tokenizer.ggml.tokens")?;
    let types: Vec<i32> = ct
        .metadata
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.iter().map(|t| t.to_i32().unwrap_or(1)).collect())
        .unwrap_or_default();
    let mut tokenizer = match kind.as_str() {
        "gpt2" => {
            let merges = list("tokenizer.ggml.merges")?
                .iter()
                .filter_map(|m| {
                    m.split_once(' ')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                })
                .collect();
            let vocab: tokenizers::models::bpe::Vocab = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i as u32))
                .collect();
            let bpe = BPE::builder()
                .vocab_and_merges(vocab, merges)
                .build()
                .map_err(|e| bad(format!("GGUF tokenizer: {e}")))?;
            let mut tokenizer = Tokenizer::new(bpe);
            let byte_level = ByteLevel::new(false, true, true);
            // llama.cpp's "smollm" pre-tokenizer is Hugging Face's: single digits, then
            // byte-level.
            if meta_str(ct, "tokenizer.ggml.pre").as_deref() == Some("smollm") {
                tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                    Digits::new(true).into(),
                    byte_level.into(),
                ])));
            } else {
                tokenizer.with_pre_tokenizer(Some(byte_level));
            }
            tokenizer.with_decoder(Some(ByteLevel::default()));
            tokenizer
        }
        "llama" => {
            let gemma =
                meta_str(ct, "general.architecture").is_some_and(|a| a.starts_with("gemma"));
            let scores: Vec<f32> = ct
                .metadata
                .get("tokenizer.ggml.scores")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.iter().map(|t| t.to_f32().unwrap_or(0.0)).collect())
                .unwrap_or_default();
            if gemma {
                // Gemma files store runs of spaces as spaces; its tokenizer spells them with ▁.
                for t in tokens.iter_mut() {
                    if !t.is_empty() && t.chars().all(|c| c == ' ') {
                        *t = "\u{2581}".repeat(t.chars().count());
                    }
                }
            }
            // Gemma's scores do not follow its merge order, the file order does (transformers'
            // gemma GGUF converter); other SentencePiece vocabularies rank by score.
            let rank: Vec<f32> = if gemma || scores.len() != tokens.len() {
                (0..tokens.len()).map(|i| -(i as f32)).collect()
            } else {
                scores
            };
            let vocab: HashMap<String, u32> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i as u32))
                .collect();
            let merges = sentencepiece_merges(&tokens, &vocab, &rank);
            let vocab: tokenizers::models::bpe::Vocab = vocab.into_iter().collect();
            let unk = meta_u32(ct, "tokenizer.ggml.unknown_token_id")
                .and_then(|i| tokens.get(i as usize).cloned())
                .unwrap_or_else(|| "<unk>".into());
            let bpe = BPE::builder()
                .vocab_and_merges(vocab, merges)
                .unk_token(unk)
                .fuse_unk(true)
                .byte_fallback(true)
                .build()
                .map_err(|e| bad(format!("GGUF tokenizer: {e}")))?;
            let mut tokenizer = Tokenizer::new(bpe);
            let replace = Replace::new(" ", "\u{2581}").map_err(|e| bad(e.to_string()))?;
            let prefix = ct
                .metadata
                .get("tokenizer.ggml.add_space_prefix")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(!gemma);
            if prefix {
                tokenizer
                    .with_normalizer(Some(tokenizers::normalizers::Sequence::new(vec![
                        Prepend::new("\u{2581}".into()).into(),
                        replace.into(),
                    ])))
                    .map_err(|e| bad(e.to_string()))?;
            } else {
                tokenizer
                    .with_normalizer(Some(replace))
                    .map_err(|e| bad(e.to_string()))?;
            }
            let split = Split::new(
                SplitPattern::String(" ".into()),
                SplitDelimiterBehavior::MergedWithPrevious,
                false,
            )
            .map_err(|e| bad(e.to_string()))?;
            tokenizer.with_pre_tokenizer(Some(split));
            let space = Replace::new("\u{2581}", " ").map_err(|e| bad(e.to_string()))?;
            tokenizer.with_decoder(Some(DecoderSequence::new(vec![
                space.into(),
                ByteFallback::default().into(),
                Fuse::default().into(),
            ])));
            tokenizer
        }
        other => {
            return Err(bad(format!(
                "GGUF tokenizer '{other}' is not supported (gpt2 and llama are); put a tokenizer.json beside the file"
            )));
        }
    };
    // Control tokens (type 3) such as <|im_start|> are special and matched whole; user-defined
    // ones (type 4) are matched whole too, as llama.cpp does.
    let marked = |kind: i32| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(types.iter())
            .filter(|(_, t)| **t == kind)
            .map(|(tok, _)| AddedToken::from(tok.clone(), kind == 3).normalized(false))
            .collect()
    };
    tokenizer
        .add_special_tokens(marked(3))
        .map_err(|e| bad(e.to_string()))?;
    tokenizer
        .add_tokens(marked(4))
        .map_err(|e| bad(e.to_string()))?;
    Ok(tokenizer)
}

/// SentencePiece merges recovered from a vocabulary: every split of a token into two tokens,
/// best-ranked token first, longer left piece first (transformers' `generate_merges`).
fn sentencepiece_merges(
    tokens: &[String],
    vocab: &HashMap<String, u32>,
    rank: &[f32],
) -> Vec<(String, String)> {
    let mut merges: Vec<(f32, usize, usize, u32, u32)> = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let mut local = Vec::new();
        for (cut, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(cut);
            if let (Some(&a), Some(&b)) = (vocab.get(l), vocab.get(r)) {
                local.push((rank[i], l.chars().count(), r.chars().count(), a, b));
            }
        }
        local.sort_by_key(|m| (m.3, m.4));
        merges.extend(local);
    }
    // Stable sort, best rank first, then longer pieces first, as Python's reverse sort.
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(y.1.cmp(&x.1)).then(y.2.cmp(&x.2)));
    merges
        .into_iter()
        .map(|m| (tokens[m.3 as usize].clone(), tokens[m.4 as usize].clone()))
        .collect()
}

/// Reads a GGUF file's metadata (not its weights): the tokenizer and what generation needs.
pub fn read_metadata(model: &str, path: &Path) -> ModelResult<GgufMetadata> {
    let file = gguf_file(model, path)?;
    let io = |e: std::io::Error| ModelError::File {
        model: model.into(),
        path: file.display().to_string(),
        problem: e.to_string(),
    };
    let mut reader = std::fs::File::open(&file).map_err(io)?;
    let ct = gguf_file::Content::read(&mut reader).map_err(|e| ModelError::File {
        model: model.into(),
        path: file.display().to_string(),
        problem: format!("not a readable GGUF file: {e}"),
    })?;
    let architecture = meta_str(&ct, "general.architecture").unwrap_or_default();
    if super::transformer::Family::from_name(&architecture).is_none() {
        return Err(ModelError::Unsupported {
            model: model.into(),
            problem: format!(
                "GGUF architecture '{architecture}' cannot generate ({} can)",
                super::transformer::FAMILIES
            ),
        });
    }
    let beside = file.with_file_name("tokenizer.json");
    let tokenizer = if beside.exists() {
        Tokenizer::from_file(&beside).map_err(|e| ModelError::File {
            model: model.into(),
            path: beside.display().to_string(),
            problem: e.to_string(),
        })?
    } else {
        embedded_tokenizer(model, &ct)?
    };
    let token_text = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or_default()
    };
    let eos = meta_u32(&ct, "tokenizer.ggml.eos_token_id");
    let bos = meta_u32(&ct, "tokenizer.ggml.bos_token_id");
    let mut eos_ids: Vec<u32> = eos.into_iter().collect();
    // Chat models end a turn with <|im_end|> / <end_of_turn> even where EOS is another token.
    for end in ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"] {
        if let Some(id) = tokenizer.token_to_id(end)
            && !eos_ids.contains(&id)
        {
            eos_ids.push(id);
        }
    }
    // A generation_config.json beside the file adds its stop tokens.
    let generation = file.with_file_name("generation_config.json");
    if generation.exists() {
        let g = super::source::read_json(model, &generation)?;
        let listed: Vec<u64> = match &g["eos_token_id"] {
            serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_u64()).collect(),
            v => v.as_u64().into_iter().collect(),
        };
        for id in listed {
            if !eos_ids.contains(&(id as u32)) {
                eos_ids.push(id as u32);
            }
        }
    }
    let add_bos = ct
        .metadata
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    let context = meta_u32(&ct, &format!("{architecture}.context_length")).unwrap_or(4096);
    let info = DecoderInfo {
        architecture,
        eos_ids,
        bos_token: token_text(bos),
        eos_token: token_text(eos),
        chat_template: meta_str(&ct, "tokenizer.chat_template"),
        add_bos: if add_bos { bos } else { None },
        context: context as usize,
    };
    Ok(GgufMetadata {
        content: ct,
        reader,
        tokenizer,
        info,
    })
}
