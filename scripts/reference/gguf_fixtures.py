#!/usr/bin/env python3
"""Tiny GGUF files of the decoder families llama.cpp defines, written with the `gguf` package
from the same random weights as the safetensors fixtures (tests/fixtures/decoders), with
llama.cpp's tensor names, layouts and metadata keys as its convert_hf_to_gguf.py writes them:
q/k rows permuted for llama's interleaved RoPE, Gemma's norms stored as 1 + w, Phi-3's fused
qkv and gate_up kept fused, Llama 3's RoPE as a rope_freqs tensor, LongRoPE's factors as
rope_factors_short / rope_factors_long. Weights stay f32, so each file must give what its
safetensors twin gives (tests/fixtures/decoders/reference.json).

  tests/fixtures/gguf/{llama,qwen2,qwen3,gemma2,phi3,llama3_rope,llama_yarn,llama_linear}/
      model.gguf + the fixture's tokenizer.json (prefflow reads a tokenizer.json beside a GGUF)

Not written: Gemma 3 (llama.cpp fixes its local / global pattern at 5 : 1, the 2-layer
fixture's is 1 : 1; the real Gemma-3 270M GGUF is tested instead), Mistral's sliding window and
dynamic NTK (llama.cpp has no metadata for them).

Needs: pip install -r scripts/reference/requirements.txt   (not needed by cargo test)
Run:   python3 scripts/reference/gguf_fixtures.py
"""

import json
import math
import shutil
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "fixtures" / "decoders"
OUT = ROOT / "tests" / "fixtures" / "gguf"

ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2", "phi3": "phi3",
        "llama3_rope": "llama", "llama_yarn": "llama", "llama_linear": "llama"}


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute: rotate-half pairs to interleaved pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write(name: str) -> None:
    src = SOURCE / name
    c = json.loads((src / "config.json").read_text())
    arch = ARCH[name]
    tensors = load_file(str(src / "model.safetensors"))
    heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    gemma = arch == "gemma2"
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    w = gguf.GGUFWriter(str(out / "model.gguf"), arch)
    rope = c.get("rope_parameters") or {}
    w.add_uint32(f"{arch}.context_length", c["max_position_embeddings"])
    w.add_uint32(f"{arch}.embedding_length", c["hidden_size"])
    w.add_uint32(f"{arch}.block_count", c["num_hidden_layers"])
    w.add_uint32(f"{arch}.feed_forward_length", c["intermediate_size"])
    w.add_uint32(f"{arch}.attention.head_count", heads)
    w.add_uint32(f"{arch}.attention.head_count_kv", kv)
    w.add_uint32(f"{arch}.attention.key_length", head_dim)
    w.add_uint32(f"{arch}.attention.value_length", head_dim)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c["rms_norm_eps"])
    w.add_float32(f"{arch}.rope.freq_base", rope.get("rope_theta", 10000.0))
    rotary = int(head_dim * rope.get("partial_rotary_factor", c.get("partial_rotary_factor") or 1.0))
    w.add_uint32(f"{arch}.rope.dimension_count", rotary)
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        w.add_string(f"{arch}.rope.scaling.type", "linear")
        w.add_float32(f"{arch}.rope.scaling.factor", rope["factor"])
    elif kind == "yarn":
        w.add_string(f"{arch}.rope.scaling.type", "yarn")
        w.add_float32(f"{arch}.rope.scaling.factor", rope["factor"])
        w.add_uint32(f"{arch}.rope.scaling.original_context_length", rope["original_max_position_embeddings"])
    elif kind == "llama3":
        # convert_hf_to_gguf's LlamaModel.generate_extra_tensors: a divisor per frequency.
        base, factor = rope["rope_theta"], rope["factor"]
        low, high, old = rope["low_freq_factor"], rope["high_freq_factor"], rope["original_max_position_embeddings"]
        freqs = 1.0 / (base ** (np.arange(0, rotary, 2, dtype=np.float32) / rotary))
        factors = []
        for f in freqs:
            wavelen = 2 * math.pi / f
            if wavelen < old / high:
                factors.append(1)
            elif wavelen > old / low:
                factors.append(factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        w.add_tensor("rope_freqs.weight", np.array(factors, dtype=np.float32))
    elif kind == "longrope":
        original = rope["original_max_position_embeddings"]
        w.add_uint32(f"{arch}.rope.scaling.original_context_length", original)
        scale = c["max_position_embeddings"] / original
        w.add_float32(f"{arch}.rope.scaling.attn_factor", math.sqrt(1 + math.log(scale) / math.log(original)))
        w.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32))
        w.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32))
    elif kind != "default":
        raise SystemExit(f"{name}: rope {kind} has no GGUF form")
    if gemma:
        w.add_float32(f"{arch}.attn_logit_softcapping", c["attn_logit_softcapping"])
        w.add_float32(f"{arch}.final_logit_softcapping", c["final_logit_softcapping"])
        w.add_uint32(f"{arch}.attention.sliding_window", c["sliding_window"])
        # llama.cpp scales Gemma 2's scores by 1/sqrt(head_dim) unless the file says otherwise.
        w.add_float32(f"{arch}.attention.scale", 1.0 / math.sqrt(c["query_pre_attn_scalar"]))
    w.add_uint32("tokenizer.ggml.eos_token_id", c["eos_token_id"])
    w.add_string("tokenizer.chat_template", (src / "chat_template.jinja").read_text())

    def put(gguf_name: str, t: np.ndarray) -> None:
        w.add_tensor(gguf_name, np.ascontiguousarray(t.astype(np.float32)))

    norm = (lambda t: t + 1.0) if gemma else (lambda t: t)
    put("token_embd.weight", tensors["model.embed_tokens.weight"])
    put("output_norm.weight", norm(tensors["model.norm.weight"]))
    if "lm_head.weight" in tensors:
        put("output.weight", tensors["lm_head.weight"])
    for i in range(c["num_hidden_layers"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        t = lambda n: tensors[p + n]
        put(b + "attn_norm.weight", norm(t("input_layernorm.weight")))
        if arch == "phi3":
            put(b + "attn_qkv.weight", t("self_attn.qkv_proj.weight"))
            put(b + "ffn_up.weight", t("mlp.gate_up_proj.weight"))
        else:
            q, k = t("self_attn.q_proj.weight"), t("self_attn.k_proj.weight")
            if arch == "llama":
                q, k = permute(q, heads), permute(k, kv)
            put(b + "attn_q.weight", q)
            put(b + "attn_k.weight", k)
            put(b + "attn_v.weight", t("self_attn.v_proj.weight"))
            for proj in ("q", "k", "v"):
                if p + f"self_attn.{proj}_proj.bias" in tensors:
                    put(b + f"attn_{proj}.bias", t(f"self_attn.{proj}_proj.bias"))
            put(b + "ffn_gate.weight", t("mlp.gate_proj.weight"))
            put(b + "ffn_up.weight", t("mlp.up_proj.weight"))
        put(b + "attn_output.weight", t("self_attn.o_proj.weight"))
        put(b + "ffn_down.weight", t("mlp.down_proj.weight"))
        if arch == "qwen3":
            put(b + "attn_q_norm.weight", t("self_attn.q_norm.weight"))
            put(b + "attn_k_norm.weight", t("self_attn.k_norm.weight"))
        if gemma:
            put(b + "post_attention_norm.weight", norm(t("post_attention_layernorm.weight")))
            put(b + "ffn_norm.weight", norm(t("pre_feedforward_layernorm.weight")))
            put(b + "post_ffw_norm.weight", norm(t("post_feedforward_layernorm.weight")))
        else:
            put(b + "ffn_norm.weight", t("post_attention_layernorm.weight"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
    print(name, (out / "model.gguf").stat().st_size)


def main() -> None:
    for name in ARCH:
        write(name)


if __name__ == "__main__":
    main()
