#!/usr/bin/env python3
"""Tiny random-weight decoders (safetensors folders) and their transformers references, for the
decoder parity tests of architectures without offline weights, and the safetensors load path.

  tests/fixtures/decoders/qwen2/   Qwen2ForCausalLM (q/k/v biases, grouped-query attention)
  tests/fixtures/decoders/llama/   LlamaForCausalLM (tied embeddings)
  tests/fixtures/decoders/gemma3/  Gemma3ForCausalLM (q/k norms, sandwich norms, a sliding-window
                                   layer with a window of 4 and a global one, two RoPE bases,
                                   query_pre_attn_scalar unlike head_dim)
  tests/fixtures/decoders/reference.json

Each folder gets the tiny byte-level BPE tokenizer and ChatML template of the reward fixtures
(tests/fixtures/reward/qwen2). References: greedy continuations of chat-templated prompts (token
ids and text, end-of-turn excluded) and ai_logprob sums, computed in float64 by transformers.

Needs: pip install torch transformers   (not needed by cargo test)
Run:   python3 scripts/reference/decoder_fixtures.py
"""

import json
import shutil
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "decoders"
TOKENIZER = ROOT / "tests" / "fixtures" / "reward" / "qwen2"
MAX_NEW = 12

PROMPTS = [
    "What is the boiling point of water at sea level?",
    "Write a haiku about autumn leaves and the cooling wind.",
    "Solve for x: 3x + 7 = 22.",
    "Translate good morning into French.",
]

PAIRS = [
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius."),
    ("Solve for x: 3x + 7 = 22.", "x equals 5."),
]

COMMON = dict(
    vocab_size=400,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    initializer_range=0.2,
    pad_token_id=0,
    eos_token_id=2,
    bos_token_id=None,
)


def models():
    yield "qwen2", Qwen2ForCausalLM(Qwen2Config(**COMMON, tie_word_embeddings=False))
    yield "llama", LlamaForCausalLM(LlamaConfig(**COMMON, tie_word_embeddings=True))
    gemma = Gemma3TextConfig(
        **COMMON,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=False,
    )
    model = Gemma3ForCausalLM(gemma)
    # Random norm weights, so that Gemma's (1 + w) scaling is exercised.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    yield "gemma3", model


def main() -> None:
    torch.manual_seed(0)
    # The tokenizer.json as written, as prefflow (the tokenizers crate) reads it: AutoTokenizer
    # would let transformers 5 rebuild the pre-tokenizer for the folder's model_type.
    tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER / "tokenizer.json"))
    tok.chat_template = (TOKENIZER / "chat_template.jinja").read_text()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    reference = {"max_tokens": MAX_NEW, "models": {}}
    for name, model in models():
        model = model.eval()
        folder = OUT / name
        shutil.rmtree(folder, ignore_errors=True)
        model.save_pretrained(folder)
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(TOKENIZER / f, folder / f)
        # References come from the saved files, read back as transformers reads them.
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
        greedy = []
        for p in PROMPTS:
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            ids = tok(text, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(**ids, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=[end, 2], pad_token_id=0)
            new = gen[0][ids["input_ids"].shape[1]:].tolist()
            cut = next((i for i, t in enumerate(new) if t in (end, 2)), len(new))
            new = new[:cut]
            greedy.append({"prompt": p, "ids": new, "text": tok.decode(new, skip_special_tokens=True)})
        logprobs = []
        for p, r in PAIRS:
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            pi = tok(text, add_special_tokens=False)["input_ids"]
            ri = tok(r, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([pi + ri])).logits[0], dim=-1)
            logprobs.append({"prompt": p, "response": r, "logprob": float(sum(lp[len(pi) - 1 + i, t] for i, t in enumerate(ri)))})
        reference["models"][name] = {"greedy": greedy, "logprobs": logprobs}
        print(name, [g["ids"] for g in greedy], [round(x["logprob"], 4) for x in logprobs])
    (OUT / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")


if __name__ == "__main__":
    main()
