#!/usr/bin/env python3
"""Reference embeddings for the ai_embed parity test, computed with sentence-transformers.

Reads models/all-minilm-l6-v2 (scripts/fetch-models) and writes
tests/fixtures/minilm_reference.json: the sentences and their embeddings as
sentence-transformers computes them (mean pooling, normalisation, truncation at 256 tokens).

Needs: pip install torch sentence-transformers   (not needed by cargo test)
Run:   python3 scripts/reference/embeddings.py
"""

import json
from pathlib import Path

from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parents[2]

SENTENCES = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "What is the boiling point of water at sea level?",
    "Solve for x: 3x + 7 = 22.",
    "Translate 'good morning' into French.",
    "机器学习是人工智能的一个分支。",
    "Emoji and symbols: 🚀 ≥ ∑ — ok?",
    "",
    "a",
    # Longer than max_seq_length (256 tokens): truncation must match.
    " ".join(["Preference data for alignment is built in stages, each one a query."] * 40),
]


def main() -> None:
    model = SentenceTransformer(str(ROOT / "models" / "all-minilm-l6-v2"), device="cpu")
    vectors = model.encode(SENTENCES, batch_size=4, convert_to_numpy=True)
    out = {
        "model": "models/all-minilm-l6-v2",
        "max_seq_length": model.max_seq_length,
        "sentences": SENTENCES,
        "embeddings": [[float(x) for x in v] for v in vectors],
    }
    path = ROOT / "tests" / "fixtures" / "minilm_reference.json"
    path.write_text(json.dumps(out) + "\n")
    print(f"wrote {path} ({len(SENTENCES)} sentences, dim {vectors.shape[1]})")


if __name__ == "__main__":
    main()
