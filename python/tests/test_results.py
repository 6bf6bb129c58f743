"""A statement's result in every form: pyarrow (zero-copy), pandas, polars, dicts, batches."""

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import prefflow

QUERY = """
SELECT v AS id, 'row ' || CAST(v AS VARCHAR) AS text, CAST(v AS DOUBLE) / 4 AS score,
       CASE WHEN v % 3 = 0 THEN NULL ELSE [v, v + 1] END AS pair
FROM generate_series(1, 10) AS t(v)
ORDER BY id
"""


def test_to_arrow_keeps_types_and_nulls(engine):
    table = engine.sql(QUERY).to_arrow()
    assert isinstance(table, pa.Table)
    assert table.schema.names == ["id", "text", "score", "pair"]
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("score").type == pa.float64()
    assert pa.types.is_list(table.schema.field("pair").type)
    assert table.column("id").to_pylist() == list(range(1, 11))
    assert table.column("pair").to_pylist()[2] is None
    assert table.column("pair").to_pylist()[0] == [1, 2]


def test_rows_are_computed_once_and_shared_zero_copy(engine):
    result = engine.sql(QUERY)
    assert not result._inner.computed()
    first = result.to_arrow()
    assert result._inner.computed()
    second = result.to_arrow()
    # The same Arrow buffers reach Python twice (C data interface, no copy, no re-run).
    a = first.column("id").chunk(0).buffers()[1]
    b = second.column("id").chunk(0).buffers()[1]
    assert a.address == b.address
    assert first.equals(second)


def test_pandas_polars_pylist(engine):
    result = engine.sql(QUERY)
    df = result.to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert list(df["id"]) == list(range(1, 11))
    assert df["score"].iloc[3] == 1.0
    pldf = result.to_polars()
    assert isinstance(pldf, pl.DataFrame)
    assert pldf["text"].to_list()[:2] == ["row 1", "row 2"]
    rows = result.to_pylist()
    assert rows[0] == {"id": 1, "text": "row 1", "score": 0.25, "pair": [1, 2]}


def test_arrow_pycapsule_protocol(engine):
    result = engine.sql(QUERY)
    assert pa.table(result).num_rows == 10
    assert pl.DataFrame(result).height == 10


def test_schema_without_running(engine):
    result = engine.sql(QUERY)
    assert result.schema.names == ["id", "text", "score", "pair"]
    assert not result._inner.computed()


def test_iterating_streams_record_batches(tmp_path):
    engine = prefflow.Engine(cache_dir=tmp_path, partitions=1, batch_size=100, progress=False)
    result = engine.sql("SELECT v FROM generate_series(1, 1000) AS t(v)")
    batches = list(result)
    assert all(isinstance(b, pa.RecordBatch) for b in batches)
    assert len(batches) >= 10
    assert sum(b.num_rows for b in batches) == 1000
    # Streaming does not keep the rows; asking for a table runs the query.
    assert not result._inner.computed()
    assert result.to_arrow().num_rows == 1000
    # Once kept, iteration replays them.
    assert sum(b.num_rows for b in result) == 1000


def test_statements_run_at_once_and_the_last_result_is_returned(engine, tmp_path):
    out = tmp_path / "rows.parquet"
    result = engine.sql(
        f"""
        CREATE TABLE t AS VALUES (1, 'a'), (2, 'b');
        INSERT INTO t VALUES (3, 'c');
        COPY (SELECT * FROM t ORDER BY column1) TO '{out}';
        """
    )
    # COPY ran inside sql(): the file exists before the result is read.
    assert out.exists()
    assert result.to_pylist() == [{"count": 3}]
    assert pq.read_table(out).num_rows == 3
    assert "t" in engine.tables()
    assert engine.deregister("t") is True
    assert "t" not in engine.tables()


def test_run_file_with_params(engine, tmp_path):
    script = tmp_path / "job.sql"
    script.write_text(
        "CREATE TABLE nums AS SELECT v FROM generate_series(1, ${n}) AS t(v);\n"
        "SELECT count(*) AS n, '${label:-none}' AS label FROM nums;\n"
    )
    rows = engine.run_file(script, params={"n": 7}).to_pylist()
    assert rows == [{"n": 7, "label": "none"}]


def test_settings_reach_the_session(tmp_path):
    engine = prefflow.Engine(
        cache_dir=tmp_path, threads=1, cache="off",
        settings={"prefflow.max_batch_tokens": 1024}, progress=False,
    )
    shown = {
        r["name"]: r["value"]
        for r in engine.sql("SHOW ALL").to_pylist()
        if r["name"].startswith("prefflow.")
    }
    assert shown["prefflow.threads"] == "1"
    assert shown["prefflow.cache"] == "off"
    assert shown["prefflow.max_batch_tokens"] == "1024"


def test_importing_sets_the_math_thread_count():
    # As the CLI's main does (src/threads.rs); a value the user set is kept.
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAYON_NUM_THREADS"}
    code = "import os, prefflow; print(os.environ['RAYON_NUM_THREADS'])"
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert shown.stdout.strip() == str(len(os.sched_getaffinity(0)))
    env["RAYON_NUM_THREADS"] = "3"
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert shown.stdout.strip() == "3"
