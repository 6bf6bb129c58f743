#!/usr/bin/env python3
"""Tiny random-weight reward models and their reference scores, for the ai_reward parity test.

No real reward-model weights can be had offline, so this builds one tiny model per supported
head with transformers (random weights, fixed seed), saves it as a model folder prefflow can
load, and computes the reference score of a few (prompt, response) pairs with transformers:

  tests/fixtures/reward/bert/   BertForSequenceClassification (WordPiece tokenizer, pair input)
  tests/fixtures/reward/qwen2/  Qwen2ForSequenceClassification (byte-level BPE, chat template)
  tests/fixtures/reward/llama/  LlamaForSequenceClassification (same tokenizer and template)
  tests/fixtures/reward/qwen3/, gemma2/, mistral/, phi3/
                                *ForSequenceClassification of the other decoder families (q/k
                                norms; soft-capping and windows of 4; a window of 8; fused
                                projections and partial rotary): Skywork-Reward-V2 and
                                Skywork-Reward-Gemma-2 shapes
  tests/fixtures/reward/reference.json

Needs: pip install -r scripts/reference/requirements.txt   (not needed by cargo test)
Run:   python3 scripts/reference/reward_fixtures.py [KIND ...]   (KINDs rebuild only those)
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    Gemma2Config,
    Gemma2ForSequenceClassification,
    MistralConfig,
    MistralForSequenceClassification,
    Phi3Config,
    Phi3ForSequenceClassification,
    Qwen3Config,
    Qwen3ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForSequenceClassification,
)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "reward"

CORPUS = [
    "What is the boiling point of water at sea level?",
    "Water boils at 100 degrees Celsius at sea level.",
    "It boils at about 70 degrees on top of Mount Everest.",
    "Write a haiku about autumn leaves and the cooling wind.",
    "Solve for x: 3x + 7 = 22, so x equals 5.",
    "I do not know, maybe ask someone else.",
    "Translate good morning into French: bonjour.",
]

PAIRS = [
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("What is the boiling point of water at sea level?", "I do not know, maybe ask someone else."),
    ("Solve for x: 3x + 7 = 22.", "x equals 5."),
    ("Write a haiku about autumn.", "Leaves fall, the wind cools, autumn sighs."),
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def bert() -> dict:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS * 4, trainers.WordPieceTrainer(vocab_size=300, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, num_labels=1, initializer_range=0.5,
    )
    model = BertForSequenceClassification(config).eval()
    path = OUT / "bert"
    model.save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    scores = []
    with torch.no_grad():
        for p, r in PAIRS:
            inputs = fast(p, r, return_tensors="pt", return_token_type_ids=True)
            scores.append(float(model(**inputs).logits[0, 0]))
    return {"path": "tests/fixtures/reward/bert", "scores": scores}


def decoder(kind: str) -> dict:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(
        CORPUS * 4,
        trainers.BpeTrainer(vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )
    torch.manual_seed({"qwen2": 2, "llama": 3, "qwen3": 4, "gemma2": 5, "mistral": 6, "phi3": 7}[kind])
    common = dict(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=1,
        pad_token_id=tok.token_to_id("<|endoftext|>"), tie_word_embeddings=False, rope_theta=10000.0,
        initializer_range=0.2,
    )
    if kind == "qwen2":
        model = Qwen2ForSequenceClassification(Qwen2Config(**common)).eval()
    elif kind == "llama":
        model = LlamaForSequenceClassification(LlamaConfig(**common)).eval()
    elif kind == "qwen3":
        model = Qwen3ForSequenceClassification(Qwen3Config(**common, head_dim=16)).eval()
    elif kind == "gemma2":
        config = Gemma2Config(
            **common, head_dim=16, query_pre_attn_scalar=24, sliding_window=4, attn_logit_softcapping=3.0,
            final_logit_softcapping=6.0, hidden_activation="gelu_pytorch_tanh",
        )
        model = Gemma2ForSequenceClassification(config).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.normal_(0.0, 0.3)
    elif kind == "mistral":
        model = MistralForSequenceClassification(MistralConfig(**common, head_dim=8, sliding_window=8)).eval()
    else:
        model = Phi3ForSequenceClassification(Phi3Config(**common, partial_rotary_factor=0.5)).eval()
    path = OUT / kind
    model.save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    scores = []
    with torch.no_grad():
        for p, r in PAIRS:
            messages = [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
            ids = fast.apply_chat_template(messages, tokenize=True, return_tensors="pt", return_dict=True)
            scores.append(float(model(input_ids=ids["input_ids"]).logits[0, 0]))
    return {"path": f"tests/fixtures/reward/{kind}", "scores": scores}


DECODERS = ["qwen2", "llama", "qwen3", "gemma2", "mistral", "phi3"]


def main() -> None:
    only = sys.argv[1:]
    path = OUT / "reference.json"
    if only:
        reference = json.loads(path.read_text())
    else:
        shutil.rmtree(OUT, ignore_errors=True)
        OUT.mkdir(parents=True)
        reference = {"pairs": [list(p) for p in PAIRS], "bert": bert()}
    for kind in only or DECODERS:
        shutil.rmtree(OUT / kind, ignore_errors=True)
        reference[kind] = bert() if kind == "bert" else decoder(kind)
    path.write_text(json.dumps(reference, indent=1) + "\n")
    print(json.dumps(reference, indent=1))


if __name__ == "__main__":
    main()
