#!/usr/bin/env python3
"""A tiny random-weight Marian translation model (safetensors folder) and its transformers
references, for ai_translate's Marian parity test.

  tests/fixtures/translate/marian/          MarianMTModel: config.json, model.safetensors,
                                            tokenizer.json (a word-level tokenizer that appends
                                            </s>, standing in for Marian's SentencePiece pair)
  tests/fixtures/translate/reference.json   greedy translations: input ids, output ids, text

Real Marian models (Helsinki-NLP/opus-mt-*) ship source.spm / target.spm; prefflow reads a
tokenizer.json, which candle's convert_slow_tokenizer.py (or transformers' converters) makes.
The references disable the end-of-length forced </s> and ban <pad>, as Marian generation configs
do (bad_words_ids [[pad]]); prefflow decodes the same way.

Needs: pip install torch transformers tokenizers   (not needed by cargo test)
Run:   python3 scripts/reference/marian_fixture.py
"""

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "translate"
MAX_NEW = 10

WORDS = (
    "the a cat dog sat on mat hello world good morning how are you today i am fine thank "
    "bonjour le chat chien monde merci bien comment allez vous aujourd hui je suis "
    "water boils at degrees sea level question answer what is of and to in it"
).split()
SPECIAL = ["</s>", "<unk>", ">>fra<<", ">>eng<<", "<pad>"]

TEXTS = [
    "hello world",
    "the cat sat on the mat",
    "good morning how are you today",
    "what is the answer to the question",
    ">>fra<< thank you",
]


def main():
    vocab = {tok: i for i, tok in enumerate(SPECIAL[:-1] + WORDS)}
    vocab["<pad>"] = len(vocab)
    eos, unk, pad = vocab["</s>"], vocab["<unk>"], vocab["<pad>"]
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", eos)]
    )
    tok.add_special_tokens(["</s>", "<unk>", "<pad>"])
    folder = OUT / "marian"
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))

    torch.manual_seed(0)
    config = MarianConfig(
        vocab_size=len(vocab),
        decoder_vocab_size=len(vocab),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        activation_function="swish",
        pad_token_id=pad,
        eos_token_id=eos,
        decoder_start_token_id=pad,
        forced_eos_token_id=eos,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
    )
    model = MarianMTModel(config).eval()
    # Random matrices large enough that greedy choices are not near ties; layer norms (and the fixed sinusoidal positions) stay at
    # identity and the logits bias at zero so no single token dominates.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or "embed_positions" in name:
                continue
            if "final_logits_bias" in name:
                p.zero_()
            else:
                p.normal_(0.0, 1.0)
    model.save_pretrained(folder, safe_serialization=True)

    fast = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    gen = model.generation_config
    gen.forced_eos_token_id = None
    gen.bad_words_ids = [[pad]]
    gen.num_beams = 1
    gen.do_sample = False
    gen.max_length = None
    refs = []
    for text in TEXTS:
        ids = fast(text)["input_ids"]
        with torch.no_grad():
            result = model.generate(
                torch.tensor([ids]),
                max_new_tokens=MAX_NEW,
                generation_config=gen,
                output_scores=True,
                return_dict_in_generate=True,
            )
        out = result.sequences[0].tolist()
        new = out[1:]  # after decoder_start
        # The chosen token's logit at each step: a finer check than the ids alone.
        logits = [float(step[0, t]) for step, t in zip(result.scores, new)]
        if new and new[-1] == eos:
            new = new[:-1]
        refs.append(
            {
                "text": text,
                "input_ids": ids,
                "output_ids": new,
                "logits": logits[: len(new)],
                "translation": fast.decode(new, skip_special_tokens=True),
            }
        )
    (OUT / "reference.json").write_text(
        json.dumps({"max_new_tokens": MAX_NEW, "cases": refs}, indent=1, ensure_ascii=False) + "\n"
    )
    print(json.dumps(refs, indent=1))


if __name__ == "__main__":
    main()
