#!/usr/bin/env python3
"""Tiny random-weight decoders (safetensors folders) and their transformers references, for the
decoder parity tests of architectures without offline weights, and the safetensors load path.

  tests/fixtures/decoders/qwen2/   Qwen2ForCausalLM (q/k/v biases, grouped-query attention)
  tests/fixtures/decoders/llama/   LlamaForCausalLM (tied embeddings)
  tests/fixtures/decoders/gemma3/  Gemma3ForCausalLM (q/k norms, sandwich norms, a sliding-window
                                   layer with a window of 4 and a global one, two RoPE bases,
                                   query_pre_attn_scalar unlike head_dim)
  tests/fixtures/decoders/qwen3/   Qwen3ForCausalLM (per-head q/k RMSNorm, head_dim unlike
                                   hidden/heads, no biases, tied embeddings)
  tests/fixtures/decoders/gemma2/  Gemma2ForCausalLM (attention and final logit soft-capping,
                                   alternating sliding (window 4) / global layers, sandwich norms,
                                   query_pre_attn_scalar)
  tests/fixtures/decoders/mistral/ MistralForCausalLM with a sliding window of 16 on every layer
  tests/fixtures/decoders/phi3/    Phi3ForCausalLM (fused qkv_proj and gate_up_proj, partial
                                   rotary 0.5, longrope with original context 24: "Hi." starts
                                   under it and passes it while generating, the others start past it)
  tests/fixtures/decoders/llama3_rope/, llama_yarn/, llama_dynamic/, llama_linear/
                                   LlamaForCausalLM with each RoPE scaling type (original context
                                   16; dynamic NTK scales past max_position_embeddings 24)
  tests/fixtures/decoders/qwen3_bf16_sharded/
                                   a Qwen3 saved in bf16 across shards with its index file
  tests/fixtures/decoders/reference.json

Every prompt is longer than the sliding windows and the RoPE thresholds once chat-templated.
Run with model names to rebuild only those (reference.json keeps the others).

Each folder gets the tiny byte-level BPE tokenizer and ChatML template of the reward fixtures
(tests/fixtures/reward/qwen2). References: greedy continuations of chat-templated prompts (token
ids and text, end-of-turn excluded) and ai_logprob sums, computed in float64 by transformers.

Needs: pip install -r scripts/reference/requirements.txt   (not needed by cargo test)
Run:   python3 scripts/reference/decoder_fixtures.py
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
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
    # Short (20 tokens templated): its prefill stays under the dynamic thresholds (24) and its
    # generation passes them.
    "Hi.",
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
    yield "qwen3", Qwen3ForCausalLM(Qwen3Config(**COMMON, head_dim=16, tie_word_embeddings=True))
    gemma2 = Gemma2ForCausalLM(
        Gemma2Config(
            **COMMON,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=4,
            attn_logit_softcapping=3.0,
            final_logit_softcapping=6.0,
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=False,
        )
    )
    with torch.no_grad():
        for name, p in gemma2.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    yield "gemma2", gemma2
    yield "mistral", MistralForCausalLM(MistralConfig(**COMMON, head_dim=8, sliding_window=16, tie_word_embeddings=False))
    half = 8 // 2 // 2  # rotary dims / 2 with partial_rotary_factor 0.5 of head_dim 8
    phi3 = dict(COMMON, max_position_embeddings=256)
    yield "phi3", Phi3ForCausalLM(
        Phi3Config(
            **phi3,
            partial_rotary_factor=0.5,
            original_max_position_embeddings=24,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "original_max_position_embeddings": 24,
                "short_factor": [1.0 + 0.25 * i for i in range(half)],
                "long_factor": [2.0 + 1.5 * i for i in range(half)],
            },
            tie_word_embeddings=False,
        )
    )
    scalings = {
        "llama3_rope": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        "llama_yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        "llama_dynamic": {"rope_type": "dynamic", "factor": 4.0},
        "llama_linear": {"rope_type": "linear", "factor": 2.0},
    }
    for name, scaling in scalings.items():
        # Dynamic NTK scales past max_position_embeddings itself, so that is the threshold here.
        # YaRN's factor is max_position_embeddings over the original context (64 / 16).
        context = dict(COMMON, max_position_embeddings={"llama_dynamic": 24, "llama_yarn": 64}.get(name, 256))
        yield name, LlamaForCausalLM(
            LlamaConfig(**context, rope_parameters=dict(scaling, rope_theta=10000.0), tie_word_embeddings=False)
        )
    # A checkpoint as published: bf16 weights in several shards with model.safetensors.index.json.
    yield "qwen3_bf16_sharded", Qwen3ForCausalLM(Qwen3Config(**COMMON, head_dim=16, tie_word_embeddings=False))


def load(folder: Path):
    """The saved model as transformers reads it, in float64 with eager attention (the reference
    attention, soft-capping included)."""
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, attn_implementation="eager").eval()


def main() -> None:
    torch.manual_seed(0)
    # The tokenizer.json as written, as prefflow (the tokenizers crate) reads it: AutoTokenizer
    # would let transformers 5 rebuild the pre-tokenizer for the folder's model_type.
    tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER / "tokenizer.json"))
    tok.chat_template = (TOKENIZER / "chat_template.jinja").read_text()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    only = set(sys.argv[1:])
    path = OUT / "reference.json"
    reference = json.loads(path.read_text()) if only and path.exists() else {"max_tokens": MAX_NEW, "models": {}}
    for name, model in models():
        if only and name not in only:
            continue
        model = model.eval()
        folder = OUT / name
        shutil.rmtree(folder, ignore_errors=True)
        if name.endswith("_sharded"):
            model.to(torch.bfloat16).save_pretrained(folder, max_shard_size="60KB")
        else:
            model.save_pretrained(folder)
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(TOKENIZER / f, folder / f)
        # References come from the saved files, read back as transformers reads them.
        model = load(folder)
        greedy = []
        for p in PROMPTS:
            # Dynamic NTK keeps state between calls in transformers: each prompt starts afresh.
            if name == "llama_dynamic":
                model = load(folder)
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            ids = tok(text, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(**ids, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=[end, 2], pad_token_id=0)
            new = gen[0][ids["input_ids"].shape[1]:].tolist()
            cut = next((i for i, t in enumerate(new) if t in (end, 2)), len(new))
            new = new[:cut]
            greedy.append({"prompt": p, "prompt_tokens": ids["input_ids"].shape[1], "ids": new, "text": tok.decode(new, skip_special_tokens=True)})
        logprobs = []
        for p, r in PAIRS:
            if name == "llama_dynamic":
                model = load(folder)
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            pi = tok(text, add_special_tokens=False)["input_ids"]
            ri = tok(r, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([pi + ri])).logits[0], dim=-1)
            logprobs.append({"prompt": p, "response": r, "logprob": float(sum(lp[len(pi) - 1 + i, t] for i, t in enumerate(ri)))})
        reference["models"][name] = {"greedy": greedy, "logprobs": logprobs}
        print(name, [g["ids"] for g in greedy], [round(x["logprob"], 4) for x in logprobs])
    path.write_text(json.dumps(reference, indent=1) + "\n")


if __name__ == "__main__":
    main()
