#!/usr/bin/env python3
"""Tiny random-weight encoders and embedders and their reference outputs, for the ai_embed and
ai_reward parity tests of the families without offline weights:

  tests/fixtures/encoders/xlmr/        XLMRobertaModel as a sentence-transformers model (mean
                                       pooling, Normalize): multilingual-e5 / bge-m3 shape;
                                       positions offset by padding_idx + 1
  tests/fixtures/encoders/roberta_rm/  RobertaForSequenceClassification (a text pair, the
                                       classification head on <s>): OpenAssistant-style RMs
  tests/fixtures/encoders/qwen3_embed/ Qwen3Model as a sentence-transformers model (last-token
                                       pooling, Normalize): Qwen3-Embedding shape
  tests/fixtures/encoders/bert_cls/    BertModel with CLS pooling and no Normalize
  tests/fixtures/encoders/deberta_rm/  DebertaV2ForSequenceClassification with DeBERTa-v3's
                                       attention (c2p and p2c, shared keys, 8 log buckets so
                                       that the pairs' distances pass them, normed relative
                                       embeddings, no absolute positions)
  tests/fixtures/encoders/modernbert/  ModernBertModel as a sentence-transformers model (mean
                                       pooling, Normalize): a global then a local layer
                                       (local_attention 8: ±4 tokens), two RoPE bases
  tests/fixtures/encoders/modernbert_rm/ ModernBertForSequenceClassification (mean pooling)
  tests/fixtures/encoders/reference.json

Tokenizers: a byte-level BPE trained here with RoBERTa's <s> ... </s> template (xlmr, roberta),
the decoder fixtures' BPE (qwen3_embed, which appends <|endoftext|> as Qwen3-Embedding does),
the reward fixtures' WordPiece (bert_cls). References: sentence-transformers `encode` (batch 3,
so padding is exercised) and transformers logits, in float32.

Needs: pip install -r scripts/reference/requirements.txt   (not needed by cargo test)
Run:   python3 scripts/reference/encoder_fixtures.py
"""

import json
import shutil
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer, models as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    ModernBertModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3Model,
    RobertaConfig,
    RobertaForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaModel,
)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "encoders"

SENTENCES = [
    "What is the boiling point of water at sea level?",
    "Water boils at 100 degrees Celsius at sea level.",
    "hi",
    "Translate good morning into French: bonjour, and then say it again more slowly.",
    "x equals 5.",
]

PAIRS = [
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("What is the boiling point of water at sea level?", "I do not know, maybe ask someone else."),
    ("Solve for x: 3x + 7 = 22.", "x equals 5."),
]

CORPUS = SENTENCES + [p for pair in PAIRS for p in pair]


def roberta_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(
        CORPUS * 4,
        trainers.BpeTrainer(vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
    )


# Qwen3-Embedding's instruction prompt, as its config_sentence_transformers.json names it.
QUERY = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"


def sentence_model(folder: Path, pooling: str, normalize: bool, prompts=None) -> SentenceTransformer:
    # Eager attention: the reference masks (ModernBERT's local window) as written.
    word = st.Transformer(str(folder), model_args={"attn_implementation": "eager"})
    pool = st.Pooling(word.get_embedding_dimension(), pooling_mode=pooling)
    modules = [word, pool] + ([st.Normalize()] if normalize else [])
    return SentenceTransformer(modules=modules, device="cpu", prompts=prompts)


def embed_fixture(name: str, model, tok, pooling: str, normalize: bool, prompts=None) -> dict:
    folder = OUT / name
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    s = sentence_model(folder, pooling, normalize, prompts)
    shutil.rmtree(folder)
    s.save(str(folder))
    (folder / "README.md").unlink(missing_ok=True)
    s = SentenceTransformer(str(folder), device="cpu", model_kwargs={"attn_implementation": "eager"})
    vectors = s.encode(SENTENCES, batch_size=3, convert_to_numpy=True)
    out = {"path": f"tests/fixtures/encoders/{name}", "embeddings": [[float(x) for x in v] for v in vectors]}
    for prompt in prompts or {}:
        vectors = s.encode(SENTENCES, batch_size=3, convert_to_numpy=True, prompt_name=prompt)
        out[f"embeddings_{prompt}"] = [[float(x) for x in v] for v in vectors]
    return out


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    reference = {"sentences": SENTENCES, "pairs": [list(p) for p in PAIRS]}
    rob = roberta_tokenizer()
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, initializer_range=0.2)

    torch.manual_seed(11)
    xlmr = XLMRobertaModel(
        XLMRobertaConfig(vocab_size=len(rob), max_position_embeddings=130, pad_token_id=1, type_vocab_size=1, **small),
        add_pooling_layer=False,
    )
    reference["xlmr"] = embed_fixture("xlmr", xlmr, rob, "mean", True)

    torch.manual_seed(12)
    rm = RobertaForSequenceClassification(
        RobertaConfig(vocab_size=len(rob), max_position_embeddings=130, pad_token_id=1, type_vocab_size=1, num_labels=1, **small)
    ).eval()
    folder = OUT / "roberta_rm"
    rm.save_pretrained(folder)
    rob.save_pretrained(folder)
    with torch.no_grad():
        scores = [float(rm(**rob(p, r, return_tensors="pt")).logits[0, 0]) for p, r in PAIRS]
    reference["roberta_rm"] = {"path": "tests/fixtures/encoders/roberta_rm", "scores": scores}

    torch.manual_seed(13)
    decoder_tok = Tokenizer.from_file(str(ROOT / "tests" / "fixtures" / "reward" / "qwen2" / "tokenizer.json"))
    end = decoder_tok.token_to_id("<|endoftext|>")
    decoder_tok.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", end)])
    qtok = PreTrainedTokenizerFast(tokenizer_object=decoder_tok, pad_token="<|endoftext|>", eos_token="<|endoftext|>")
    qwen3 = Qwen3Model(
        Qwen3Config(
            vocab_size=400, head_dim=16, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
            pad_token_id=end, **small,
        )
    )
    reference["qwen3_embed"] = embed_fixture("qwen3_embed", qwen3, qtok, "lasttoken", True, {"query": QUERY, "document": ""})

    torch.manual_seed(14)
    wordpiece = PreTrainedTokenizerFast.from_pretrained(str(ROOT / "tests" / "fixtures" / "reward" / "bert"))
    bert = BertModel(BertConfig(vocab_size=len(wordpiece), max_position_embeddings=128, **small), add_pooling_layer=False)
    reference["bert_cls"] = embed_fixture("bert_cls", bert, wordpiece, "cls", False)

    torch.manual_seed(15)
    deberta = DebertaV2ForSequenceClassification(
        DebertaV2Config(
            vocab_size=len(wordpiece), max_position_embeddings=128, relative_attention=True, position_buckets=8,
            max_relative_positions=-1, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", share_att_key=True,
            position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7, pooler_hidden_size=32,
            pooler_hidden_act="gelu", num_labels=1, **small,
        )
    ).eval()
    folder = OUT / "deberta_rm"
    deberta.save_pretrained(folder)
    wordpiece.save_pretrained(folder)
    with torch.no_grad():
        scores = [float(deberta(**wordpiece(p, r, return_tensors="pt")).logits[0, 0]) for p, r in PAIRS]
    reference["deberta_rm"] = {"path": "tests/fixtures/encoders/deberta_rm", "scores": scores}

    def modern(**extra) -> ModernBertConfig:
        ids = {k: wordpiece.convert_tokens_to_ids(t) for k, t in [("pad_token_id", "[PAD]"), ("cls_token_id", "[CLS]"), ("sep_token_id", "[SEP]"), ("bos_token_id", "[CLS]"), ("eos_token_id", "[SEP]")]}
        return ModernBertConfig(
            vocab_size=len(wordpiece), max_position_embeddings=128, local_attention=8, global_attn_every_n_layers=2,
            global_rope_theta=160000.0, local_rope_theta=10000.0, **ids, **small, **extra,
        )

    torch.manual_seed(16)
    reference["modernbert"] = embed_fixture("modernbert", ModernBertModel(modern()), wordpiece, "mean", True)
    torch.manual_seed(17)
    mrm = ModernBertForSequenceClassification(modern(num_labels=1, classifier_pooling="mean")).eval()
    folder = OUT / "modernbert_rm"
    mrm.save_pretrained(folder)
    wordpiece.save_pretrained(folder)
    with torch.no_grad():
        scores = [float(mrm(**wordpiece(p, r, return_tensors="pt", return_token_type_ids=False)).logits[0, 0]) for p, r in PAIRS]
    reference["modernbert_rm"] = {"path": "tests/fixtures/encoders/modernbert_rm", "scores": scores}

    (OUT / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    print({k: (v["path"] if isinstance(v, dict) else len(v)) for k, v in reference.items()})


if __name__ == "__main__":
    main()
