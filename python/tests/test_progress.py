"""Progress on stderr as the CLI shows it (summary per model call), or nothing."""

import subprocess
import sys

import prefflow

from conftest import MODELS

SCRIPT = """
import sys, prefflow
ctx = prefflow.Engine(cache_dir=sys.argv[1], progress=sys.argv[2] == "on")
ctx.sql("CREATE MODEL minilm FROM '{model}'")
ctx.register("t", [{{"text": f"line {{i}}"}} for i in range(40)])
print(ctx.sql("SELECT ai_embed('minilm', text) AS e FROM t").to_arrow().num_rows)
"""


def run(tmp_path, mode):
    code = SCRIPT.format(model=MODELS / "all-minilm-l6-v2")
    return subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "cache"), mode],
        capture_output=True, text=True, timeout=300,
    )


def test_progress_on_stderr_like_the_cli(tmp_path):
    shown = run(tmp_path, "on")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "40"
    # The end-of-call summary the CLI prints.
    assert "prefflow: ai_embed" in shown.stderr
    assert "40 rows (40 computed, 0 from cache)" in shown.stderr
    quiet = run(tmp_path, "off")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""


def test_notebook_progress_lines(tmp_path, capsys):
    """The callback a notebook gets: the CLI's lines on sys.stderr, one summary per call and
    statement run."""
    engine = prefflow.Engine(cache_dir=tmp_path, progress=prefflow.StderrProgress(every=0))
    engine.sql(f"CREATE MODEL minilm FROM '{MODELS / 'all-minilm-l6-v2'}'")
    engine.register("t", [{"text": f"line {i}"} for i in range(30)])
    query = "SELECT ai_embed('minilm', text) AS e FROM t"
    engine.sql(query).to_arrow()
    engine.sql(query).to_arrow()
    summaries = [l for l in capsys.readouterr().err.splitlines() if " from cache)" in l]
    assert len(summaries) == 2
    assert "30 rows (30 computed, 0 from cache)" in summaries[0]
    assert "30 rows (0 computed, 30 from cache)" in summaries[1]

    # A running call's line is the CLI's, as the engine formats it.
    show = prefflow.StderrProgress(every=0)
    show([{"call": "ai_embed('m', text)", "finished": False, "run": 0,
           "line": "ai_embed('m', text): 10/30 rows (33%), 1 in flight, 0 cached, 80 tok/s",
           "summary": "unused"}])
    assert capsys.readouterr().err == "prefflow: ai_embed('m', text): 10/30 rows (33%), 1 in flight, 0 cached, 80 tok/s\n"
