"""Errors are prefflow.Error with prefflow's one-line message; bad input never loses data."""

import pytest

import prefflow


def test_sql_error_is_one_line(engine):
    with pytest.raises(prefflow.Error) as e:
        engine.sql("SELECT nope FROM (SELECT 1 AS x)").to_arrow()
    assert "nope" in str(e.value)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, Exception)


def test_model_function_error_names_the_function(engine):
    with pytest.raises(prefflow.Error, match=r"ai_embed.*unknown"):
        engine.sql("SELECT ai_embed('unknown', 'text')").to_arrow()


def test_error_in_a_later_statement_names_its_line(engine):
    with pytest.raises(prefflow.Error, match=r"^<sql>:3: "):
        engine.sql("SELECT 1;\n\nSELECT * FROM missing_table;")


def test_output_never_replaces_a_folder_prefflow_did_not_write(engine, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(prefflow.Error):
        engine.sql(f"COPY (SELECT 1 AS a) TO '{mine}' STORED AS parquet")
    assert (mine / "notes.txt").read_text() == "keep me"


def test_bad_engine_options():
    with pytest.raises(prefflow.Error, match="cache"):
        prefflow.Engine(cache="sometimes")
    with pytest.raises(prefflow.Error, match="progress"):
        prefflow.Engine(progress="loud")


def test_register_refuses_what_is_not_a_table(engine):
    with pytest.raises(TypeError, match="register"):
        engine.register("x", 42)


def test_missing_query_file(engine, tmp_path):
    with pytest.raises(prefflow.Error, match="nope.sql"):
        engine.run_file(tmp_path / "nope.sql")


def test_a_forked_child_gets_an_error_not_a_hang(engine, tmp_path):
    """The engine's threads do not survive fork: in a child forked after the engine ran, a
    statement is a clear error (it would otherwise wait forever)."""
    import os

    assert engine.sql("SELECT 1 AS x").to_pylist() == [{"x": 1}]
    out = tmp_path / "child.txt"
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            engine.sql("SELECT 2 AS x").to_pylist()
            out.write_text("no error")
        except prefflow.Error as e:
            out.write_text(str(e))
            code = 0
        finally:
            os._exit(code)
    import signal
    import time

    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child's statement hung")
        time.sleep(0.05)
    assert os.WEXITSTATUS(status) == 0, out.read_text() if out.exists() else "child died"
    assert "forked" in out.read_text() and "spawn" in out.read_text()
    # The parent's engine is unaffected.
    assert engine.sql("SELECT 3 AS x").to_pylist() == [{"x": 3}]
