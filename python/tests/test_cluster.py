"""`Engine(cluster=...)`: statements from Python run on a Ballista scheduler and executor (the
`prefflow` binary of the same build, `$PREFFLOW_BIN`, set by scripts/test-python), with the
same rows as a local engine; Python data registered there travels as Parquet."""

import os
import subprocess
import time

import numpy as np
import pytest

import prefflow
from conftest import MODELS, free_port, wait_for_port

BIN = os.environ.get("PREFFLOW_BIN")
pytestmark = pytest.mark.skipif(not BIN, reason="PREFFLOW_BIN (a prefflow binary with the cluster feature) is not set")



@pytest.fixture
def cluster(tmp_path):
    port = free_port()
    logs = open(tmp_path / "cluster.log", "w")
    procs = [subprocess.Popen([BIN, "scheduler", "--bind", f"127.0.0.1:{port}"], stdout=logs, stderr=logs)]
    url = f"df://127.0.0.1:{port}"
    try:
        wait_for_port(port, "the scheduler")
        procs.append(subprocess.Popen(
            [BIN, "executor", "--scheduler", url, "--port", str(free_port()),
             "--grpc-port", str(free_port()), "--cache-dir", str(tmp_path / "executor-cache")],
            stdout=logs, stderr=logs,
        ))
        yield url
    finally:
        for p in procs:
            p.kill()
            p.wait()
        logs.close()


def test_statements_run_on_a_cluster(cluster, tmp_path):
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(f'{{"id": {i}, "text": "sentence {i}"}}\n' for i in range(20)))
    remote = prefflow.Engine(cache_dir=tmp_path / "client", cache="off", progress=False, cluster=cluster)
    # Ready when a query that needs an executor runs.
    deadline = time.monotonic() + 60
    while True:
        try:
            remote.sql(f"SELECT count(*) AS n FROM '{data}'").to_pylist()
            break
        except prefflow.Error:
            assert time.monotonic() < deadline, "the cluster did not run a query"
            time.sleep(0.3)
    local = prefflow.Engine(cache_dir=tmp_path / "local", cache="off", progress=False)
    query = f"SELECT id, ai_embed('minilm', text) AS e FROM '{data}' ORDER BY id"
    tables = []
    for engine in (remote, local):
        engine.sql(f"CREATE MODEL minilm FROM '{MODELS / 'all-minilm-l6-v2'}'")
        tables.append(engine.sql(query).to_arrow())
    assert tables[0].column("id").to_pylist() == list(range(20))
    assert np.array_equal(np.array(tables[0].column("e").to_pylist()), np.array(tables[1].column("e").to_pylist()))

    remote.register("labels", [{"id": i, "label": f"l{i % 3}"} for i in range(20)])
    rows = remote.sql(
        f"SELECT l.label, count(*) AS n FROM '{data}' t JOIN labels l USING (id) GROUP BY l.label ORDER BY l.label"
    ).to_pylist()
    assert rows == [{"label": "l0", "n": 7}, {"label": "l1", "n": 7}, {"label": "l2", "n": 6}]
