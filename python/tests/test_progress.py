"""Progress on stderr as the CLI shows it (summary per model call), or nothing."""

import subprocess
import sys

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
