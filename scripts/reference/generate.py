#!/usr/bin/env python3
"""Greedy references for ai_generate: transformers with the weights dequantized from the same
GGUF files prefflow reads (models/, from scripts/fetch-models).

tests/fixtures/smollm2_greedy.json (SmolLM2-135M-Instruct): per prompt, the chat-templated greedy
continuation (token ids and text, end-of-turn excluded), and for (prompt, response) pairs the sum
of the response tokens' log-probabilities after the chat-templated prompt (prompt and response
tokenized separately, as ai_logprob does).

tests/fixtures/gemma3_greedy.json (Gemma-3-270m, a base model whose GGUF file has no chat
template): raw completions (BOS + text, as ai_generate with chat false sends them) with the prompt
token ids, and log-probabilities under GEMMA_TEMPLATE (given to prefflow in CREATE MODEL OPTIONS).

Needs: pip install torch transformers gguf accelerate   (not needed by cargo test)
Run:   python3 scripts/reference/generate.py
"""

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
DIR = ROOT / "models" / "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_NEW = 24

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "What is 12 times 7?",
    "Name three primary colors.",
    "Translate 'good morning' into French.",
    "Explain in one sentence what a reward model is.",
    "Give me a synonym for happy.",
    "How many legs does a spider have?",
]


PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of France?", "I think it is Berlin, but I am not sure."),
    ("Name three primary colors.", "Red, blue and yellow."),
    ("Name three primary colors.", "Green."),
]


def logprob(tok, model, prompt: str, response: str) -> float:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    p = tok(text, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    return float(sum(lp[len(p) - 1 + i, t] for i, t in enumerate(r)))


GEMMA_DIR = ROOT / "models" / "gemma-3-270m"
GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "El perro corre en el parque y",
    "1, 2, 3, 4, 5,",
    "To make a cup of tea, first",
]
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def gemma() -> None:
    tok = AutoTokenizer.from_pretrained(GEMMA_DIR, gguf_file=GEMMA_GGUF)
    model = AutoModelForCausalLM.from_pretrained(GEMMA_DIR, gguf_file=GEMMA_GGUF, torch_dtype=torch.float32).eval()
    stops = [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
    out = []
    for p in GEMMA_PROMPTS:
        ids = tok(p, return_tensors="pt", add_special_tokens=True)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=stops)
        new = gen[0][ids["input_ids"].shape[1]:].tolist()
        new = new[: next((i for i, t in enumerate(new) if t in stops), len(new))]
        out.append({"prompt": p, "prompt_ids": ids["input_ids"][0].tolist(), "ids": new,
                    "text": tok.decode(new, skip_special_tokens=True)})
        print(p, "->", repr(out[-1]["text"]))
    tok.chat_template = GEMMA_TEMPLATE
    logprobs = [{"prompt": p, "response": r, "logprob": logprob(tok, model, p, r)} for p, r in PAIRS]
    print(logprobs)
    path = ROOT / "tests" / "fixtures" / "gemma3_greedy.json"
    path.write_text(json.dumps(
        {"max_tokens": MAX_NEW, "chat_template": GEMMA_TEMPLATE, "references": out, "logprobs": logprobs},
        indent=1, ensure_ascii=False) + "\n")


def main() -> None:
    tok = AutoTokenizer.from_pretrained(DIR, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(DIR, gguf_file=GGUF, torch_dtype=torch.float32).eval()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    out = []
    for p in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=[end, tok.eos_token_id])
        new = gen[0][ids["input_ids"].shape[1]:].tolist()
        new = [t for t in new if t not in (end, tok.eos_token_id)]
        out.append({"prompt": p, "ids": new, "text": tok.decode(new, skip_special_tokens=True)})
        print(p, "->", repr(out[-1]["text"]))
    logprobs = [{"prompt": p, "response": r, "logprob": logprob(tok, model, p, r)} for p, r in PAIRS]
    print(logprobs)
    path = ROOT / "tests" / "fixtures" / "smollm2_greedy.json"
    path.write_text(
        json.dumps({"max_tokens": MAX_NEW, "references": out, "logprobs": logprobs}, indent=1, ensure_ascii=False) + "\n"
    )


if __name__ == "__main__":
    import sys

    if "--only-gemma" not in sys.argv:
        main()
    gemma()
