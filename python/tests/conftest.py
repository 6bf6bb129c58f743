"""Shared fixtures: the checkout's root, its bundled models, and an engine whose result cache
lives in a temp folder (tests never write into the checkout)."""

import os
import socket
import time
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, what: str, seconds: float = 60) -> None:
    """Waits until a server started by a test accepts connections on `port`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.1)
