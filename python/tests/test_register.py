"""Python data as tables, joined with each other and with prefflow's model functions, and a
DPO sink written from Python and loaded with `datasets`."""

import datasets
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import prefflow

PROMPTS = [
    {"prompt_id": "p1", "prompt": "What is the capital of France?"},
    {"prompt_id": "p2", "prompt": "Name a primary color."},
    {"prompt_id": "p3", "prompt": "How many legs does a spider have?"},
]
ANSWERS = {
    "prompt_id": ["p1", "p1", "p2", "p2", "p3", "p3"],
    "answer": [
        "The capital of France is Paris.", "France is in Europe.",
        "Red is a primary color.", "Colors are nice.",
        "A spider has eight legs.", "Spiders are animals.",
    ],
}


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda rows: pa.Table.from_pylist(rows), id="pyarrow-table"),
        pytest.param(lambda rows: pa.Table.from_pylist(rows).to_batches()[0], id="pyarrow-batch"),
        pytest.param(lambda rows: pa.Table.from_pylist(rows).to_reader(), id="pyarrow-reader"),
        pytest.param(lambda rows: pd.DataFrame(rows), id="pandas"),
        pytest.param(lambda rows: pl.DataFrame(rows), id="polars"),
        pytest.param(lambda rows: datasets.Dataset.from_list(rows), id="datasets"),
        pytest.param(lambda rows: rows, id="list-of-dicts"),
    ],
)
def test_register_each_kind(engine, make):
    engine.register("prompts", make(PROMPTS))
    rows = engine.sql("SELECT prompt_id, length(prompt) AS n FROM prompts ORDER BY prompt_id").to_pylist()
    assert [r["prompt_id"] for r in rows] == ["p1", "p2", "p3"]
    assert rows[0]["n"] == len(PROMPTS[0]["prompt"])


def test_a_selected_dataset_keeps_its_selection(engine):
    ds = datasets.Dataset.from_list(PROMPTS).select([2, 0])
    engine.register("picked", ds)
    assert engine.sql("SELECT prompt_id FROM picked").to_pylist() == [
        {"prompt_id": "p3"}, {"prompt_id": "p1"},
    ]


def test_register_replaces_and_joins_pandas_with_polars(engine):
    engine.register("prompts", pd.DataFrame([PROMPTS[0]]))
    engine.register("prompts", pd.DataFrame(PROMPTS))
    engine.register("answers", pl.DataFrame(ANSWERS))
    rows = engine.sql(
        "SELECT p.prompt_id, count(*) AS n FROM prompts p JOIN answers a USING (prompt_id) "
        "GROUP BY p.prompt_id ORDER BY p.prompt_id"
    ).to_pylist()
    assert rows == [{"prompt_id": "p1", "n": 2}, {"prompt_id": "p2", "n": 2}, {"prompt_id": "p3", "n": 2}]


def test_model_function_over_registered_data(minilm):
    # polars strings arrive as string views; the model function reads them as any string.
    minilm.register("answers", pl.DataFrame(ANSWERS))
    table = minilm.sql(
        "SELECT answer, ai_embed('minilm', answer) AS e FROM answers ORDER BY answer"
    ).to_arrow()
    vectors = np.array(table.column("e").to_pylist())
    assert vectors.shape == (6, 384)
    # all-MiniLM-L6-v2 embeddings are normalised, and the same text embeds the same way
    # whichever table it came from.
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    again = minilm.sql("SELECT ai_embed('minilm', 'Red is a primary color.') AS e").to_pylist()[0]["e"]
    row = table.column("answer").to_pylist().index("Red is a primary color.")
    assert np.allclose(vectors[row], again, atol=1e-6)


def test_dpo_sink_from_python_loads_with_datasets(minilm, tmp_path):
    minilm.register("prompts", pd.DataFrame(PROMPTS))
    minilm.register("answers", pl.DataFrame(ANSWERS))
    out = tmp_path / "dpo"
    written = minilm.sql(
        f"""
        COPY (
          SELECT prompt_id, first_value(prompt) AS prompt,
                 arg_max(answer, score) AS chosen, arg_min(answer, score) AS rejected,
                 max(score) AS score_chosen, min(score) AS score_rejected
          FROM (
            SELECT p.prompt_id, p.prompt, a.answer,
                   1 - power(array_distance(ai_embed('minilm', a.answer),
                                            ai_embed('minilm', p.prompt)), 2) / 2 AS score
            FROM prompts p JOIN answers a USING (prompt_id))
          GROUP BY prompt_id
        ) TO '{out}' STORED AS dpo OPTIONS (validation_fraction 0)
        """
    ).to_pylist()
    assert written[0]["count"] == 3
    assert (out / "README.md").exists()
    loaded = datasets.load_dataset(str(out))
    train = loaded["train"]
    assert train.num_rows == 3
    assert {"prompt", "chosen", "rejected"} <= set(train.column_names)
    by_id = {r["prompt_id"]: r for r in train}
    assert by_id["p1"]["chosen"] == "The capital of France is Paris."
    assert by_id["p3"]["chosen"] == "A spider has eight legs."


def test_a_large_frame_streams_in_batches(tmp_path):
    engine = prefflow.Engine(cache_dir=tmp_path, partitions=4, batch_size=100, progress=False)
    engine.register("big", pd.DataFrame({"i": range(1000), "text": [f"t{i}" for i in range(1000)]}))
    batches = list(engine.sql("SELECT i, upper(text) AS t FROM big"))
    # One batch in, batches of the session's size out (the partitions share them, so without
    # ORDER BY the rows come in no particular order, as from a file).
    assert len(batches) == 10
    rows = sorted(pa.Table.from_batches(batches).to_pylist(), key=lambda r: r["i"])
    assert [r["i"] for r in rows] == list(range(1000))
    assert rows[7]["t"] == "T7"
    ordered = engine.sql("SELECT i FROM big ORDER BY i").to_arrow()
    assert ordered.column("i").to_pylist() == list(range(1000))


def test_a_reader_is_read_as_the_query_runs_and_only_once(engine):
    produced = []

    def batches():
        for i in range(50):
            produced.append(i)
            yield pa.record_batch({"i": list(range(i * 100, i * 100 + 100))})

    schema = pa.schema([("i", pa.int64())])
    engine.register("stream", pa.RecordBatchReader.from_batches(schema, batches()))
    assert produced == []  # registering reads nothing
    rows = engine.sql("SELECT count(*) AS n, sum(i) AS s FROM stream").to_pylist()
    assert rows == [{"n": 5000, "s": sum(range(5000))}]
    assert len(produced) == 50
    with pytest.raises(prefflow.Error, match=r"'stream'.*already read"):
        engine.sql("SELECT count(*) FROM stream").to_arrow()


def test_a_limit_stops_reading_a_reader_early(engine):
    produced = []

    def batches():
        for i in range(1000):
            produced.append(i)
            yield pa.record_batch({"i": [i]})

    engine.register("stream", pa.RecordBatchReader.from_batches(pa.schema([("i", pa.int64())]), batches()))
    assert len(engine.sql("SELECT i FROM stream LIMIT 3").to_pylist()) == 3
    assert len(produced) < 100


def test_a_failing_reader_is_a_clear_error(engine):
    def batches():
        yield pa.record_batch({"i": [1]})
        raise ValueError("the source went away")

    engine.register("stream", pa.RecordBatchReader.from_batches(pa.schema([("i", pa.int64())]), batches()))
    with pytest.raises(prefflow.Error, match="the source went away"):
        engine.sql("SELECT count(*) FROM stream").to_arrow()


def test_a_registered_table_is_split_by_shards(tmp_path):
    # Rows from Python are a row source like a file: each shard gets its own rows, and the
    # shards together hold every row once (they used to all get every row).
    frame = pd.DataFrame({"i": range(200)})
    seen = []
    for shard in ["0/3", "1/3", "2/3"]:
        engine = prefflow.Engine(
            cache_dir=tmp_path, progress=False, settings={"prefflow.shard": shard}
        )
        engine.register("rows", frame)
        got = engine.sql("SELECT i FROM rows").to_arrow().column("i").to_pylist()
        assert 0 < len(got) < 200
        seen.extend(got)
    assert sorted(seen) == list(range(200))
