"""Shared fixtures: the checkout's root, its bundled models, and an engine whose result cache
lives in a temp folder (tests never write into the checkout)."""

import os
from pathlib import Path

import pytest

import prefflow

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def engine(tmp_path) -> prefflow.Engine:
    """Two partitions and no progress output; the cache in the test's own folder."""
    return prefflow.Engine(cache_dir=tmp_path / "cache", partitions=2, progress=False)


@pytest.fixture
def minilm(engine) -> prefflow.Engine:
    """The engine with all-MiniLM-L6-v2 declared as 'minilm' (scripts/fetch-models lays it out)."""
    path = MODELS / "all-minilm-l6-v2"
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/fetch-models")
    engine.sql(f"CREATE MODEL minilm FROM '{path}'")
    return engine


def pytest_configure(config):
    # The engine's threads: the tests share two cores with nothing else.
    os.environ.setdefault("PREFFLOW_PROGRESS_SECONDS", "1")
