"""The README's "From Python" example runs as written: a Hub dataset (served by the loopback
stand-in, scripts/hub-standin.py, seeded with data/trusted_answers.jsonl), generation with
SmolLM2, scoring with MiniLM, pairing, the dpo sink, and `datasets.load_dataset`."""

import os
import re
import subprocess
import sys

from conftest import MODELS, ROOT, free_port, wait_for_port


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## From Python", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)



def test_readme_python_example(tmp_path):
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "trusted_answers.jsonl").write_bytes((ROOT / "data" / "trusted_answers.jsonl").read_bytes())
    port = free_port()
    hub = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "hub-standin.py"), str(port), f"ORG/trusted-answers={seed}"],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, "the Hub stand-in")
        work = tmp_path / "work"
        work.mkdir()
        (work / "models").symlink_to(MODELS)
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PREFFLOW_CACHE"))
        }
        env.update(
            HF_ENDPOINT=f"http://127.0.0.1:{port}",
            HF_HOME=str(tmp_path / "hf-home"),
            PREFFLOW_CACHE_DIR=str(tmp_path / "cache"),
            PYTHONDONTWRITEBYTECODE="1",
        )
        run = subprocess.run(
            [sys.executable, "-c", readme_example()], cwd=work, env=env,
            capture_output=True, text=True, timeout=900,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert "train" in run.stdout
        assert (work / "out" / "python_dpo" / "train.parquet").exists()
        assert (work / "out" / "python_dpo" / "README.md").exists()
    finally:
        hub.kill()
        hub.wait()
