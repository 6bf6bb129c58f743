"""Ctrl-C cancels a running statement and the engine goes on; model work keeps what it
computed in the result cache; the GIL is released while the engine works; progress reaches a
callback."""

import os
import signal
import threading
import time

import pytest

import prefflow

from conftest import MODELS

# Long enough to be still running when interrupted (minutes in a debug build).
ENDLESS = "SELECT count(*) FROM generate_series(1, 100000000000) AS t(v) WHERE v % 7 = 3"


def test_ctrl_c_cancels_the_statement_and_the_engine_goes_on(engine):
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        engine.sql(ENDLESS).to_arrow()
    timer.join()
    # Interrupted, not finished (the count would take far longer).
    assert time.monotonic() - started < 60
    assert engine.sql("SELECT 41 + 1 AS x").to_pylist() == [{"x": 42}]


def test_ctrl_c_while_iterating(engine):
    batches = iter(engine.sql("SELECT v FROM generate_series(1, 100000000000) AS t(v) WHERE v < 0"))
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        next(batches)
    timer.join()
    # The iterator is finished; the engine is not.
    assert list(batches) == []
    assert engine.sql("SELECT 1 AS x").to_pylist() == [{"x": 1}]


def texts(n):
    return [{"id": i, "text": f"sentence number {i} about topic {i % 17}"} for i in range(n)]


def test_interrupted_model_work_stays_in_the_result_cache(tmp_path):
    """A progress callback interrupts an embedding job once the first batches are stored; the
    same job run again takes those rows from the cache and computes only the rest."""
    seen = []

    def interrupt_after_first_rows(calls):
        seen.append(calls)
        if any(c["computed"] > 0 and c["rows"] < 600 for c in calls):
            raise KeyboardInterrupt

    final = []
    handler = [interrupt_after_first_rows]
    engine = prefflow.Engine(
        cache_dir=tmp_path / "cache", partitions=1, batch_size=50,
        progress=lambda calls: handler[0](calls),
        settings={"prefflow.max_batch_tokens": 256},
    )
    engine.sql(f"CREATE MODEL minilm FROM '{MODELS / 'all-minilm-l6-v2'}'")
    engine.register("texts", texts(600))
    query = "SELECT id, ai_embed('minilm', text) AS e FROM texts"

    with pytest.raises(KeyboardInterrupt):
        engine.sql(query).to_arrow()
    assert seen and seen[-1][0]["call"].startswith("ai_embed")

    handler[0] = final.append
    table = engine.sql(query).to_arrow()
    assert table.num_rows == 600
    last = final[-1][0]
    assert last["finished"] and last["rows"] == 600
    assert 0 < last["cache_hits"] < 600
    assert last["computed"] == 600 - last["cache_hits"]


def test_the_gil_is_released_while_the_engine_works(engine):
    """A Python thread keeps running while the main thread waits on a statement (until
    Ctrl-C); with the GIL held it would run only when the wait wakes every 100 ms."""
    stop = threading.Event()
    spins = [0]

    def spin():
        while not stop.is_set():
            spins[0] += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.sql(ENDLESS).to_arrow()
    finally:
        stop.set()
        spinner.join()
        timer.join()
    # Measured: millions of spins in 1.5 s; with the GIL held, a few thousand at most.
    assert spins[0] > 200_000
