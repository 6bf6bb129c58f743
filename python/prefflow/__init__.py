"""prefflow: build LLM training data (DPO pairs, SFT sets, selections) with SQL.

    import prefflow
    ctx = prefflow.Engine()
    ctx.sql("CREATE MODEL smol FROM 'models/smollm2-135m-instruct'")
    ctx.register("prompts", [{"id": 1, "prompt": "What is 2 + 2?"}])
    answers = ctx.sql("SELECT id, ai_generate('smol', prompt) AS answer FROM prompts")
    answers.to_pandas()

Statements run in the engine's own threads with the GIL released; Ctrl-C cancels the running
statement (rows a model already computed stay in the result cache). Errors raise
`prefflow.Error` with prefflow's one-line message.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Union

# candle asks rayon for its thread count on every f32 matmul, and without RAYON_NUM_THREADS
# each ask reads the CPU topology from /proc (a fifth of a decode step on 2 cores; see
# src/threads.rs): set here, before the engine starts a thread, as the CLI does in main.
if "RAYON_NUM_THREADS" not in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ["RAYON_NUM_THREADS"] = str(_cores or 1)

from ._prefflow import Error, __version__, _Engine, _Result  # noqa: E402

__all__ = ["Engine", "Result", "Error", "StderrProgress", "__version__"]


class Result:
    """The result of a statement. Its rows are computed on first use and then kept, so
    `to_arrow()` followed by `to_pandas()` runs the query once. Iterating streams
    `pyarrow.RecordBatch`es as they are computed, without keeping them (for large results).
    """

    def __init__(self, inner: _Result):
        self._inner = inner

    def to_arrow(self):
        """The rows as a `pyarrow.Table` (zero-copy from prefflow's Arrow buffers)."""
        return self._inner.to_arrow()

    def to_pandas(self, **kwargs):
        """The rows as a `pandas.DataFrame` (through pyarrow; kwargs go to `Table.to_pandas`)."""
        return self.to_arrow().to_pandas(**kwargs)

    def to_polars(self):
        """The rows as a `polars.DataFrame`."""
        import polars

        return polars.from_arrow(self.to_arrow())

    def to_pylist(self) -> list:
        """The rows as a list of dicts."""
        return self.to_arrow().to_pylist()

    @property
    def schema(self):
        """The `pyarrow.Schema` of the rows, known without running the query."""
        return self._inner.schema()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._inner.batches())

    def __arrow_c_stream__(self, requested_schema=None):
        # The Arrow PyCapsule protocol: pyarrow.table(result), polars.DataFrame(result),
        # duckdb and others read a result directly.
        return self.to_arrow().__arrow_c_stream__(requested_schema)

    # No __len__: list(result) asks for a length hint, which would compute and keep the rows
    # that iteration streams.

    def __repr__(self) -> str:
        table = self.to_arrow()
        shown = table.slice(0, 20).to_pandas() if _has("pandas") else table.slice(0, 20)
        more = f"\n... {table.num_rows} rows" if table.num_rows > 20 else ""
        return f"{shown}{more}"

    def _repr_html_(self) -> Optional[str]:
        if not _has("pandas"):
            return None
        table = self.to_arrow()
        html = table.slice(0, 20).to_pandas()._repr_html_()
        if table.num_rows > 20:
            html += f"<p>{table.num_rows} rows</p>"
        return html


class Engine:
    """A prefflow session: every prefflow SQL function, model, file format and dataset address.

    Args:
        cache_dir: folder of the result cache (default: prefflow's, as the CLI uses).
        threads: threads each model's math may use (default: one per core).
        partitions: partitions a query runs in (default: one per core).
        batch_size: rows per record batch.
        cache: the result cache mode: 'readwrite' (default), 'read' or 'off'.
        settings: more `SET` settings, e.g. {'prefflow.max_batch_tokens': '4096'}.
        progress: True (default) shows model-call progress on stderr as the CLI does; False
            shows nothing; a callable is called about twice a second while model calls run
            (and once at the end) with a list of dicts: call, rows, total_rows, computed,
            cache_hits, input_tokens, output_tokens, in_flight, retries, seconds, finished,
            run (the same number for the calls of one statement's run), line and summary
            (the CLI's log line and end-of-call summary). In a notebook, True
            writes log lines to the cell (`StderrProgress`).
        cluster: a Ballista scheduler's df://HOST:PORT (a package built with the cluster feature).
    """

    def __init__(
        self,
        cache_dir: Union[str, os.PathLike, None] = None,
        threads: Optional[int] = None,
        partitions: Optional[int] = None,
        batch_size: Optional[int] = None,
        cache: Optional[str] = None,
        settings: Optional[Mapping[str, Any]] = None,
        progress: Union[bool, Callable[[list], None], None] = True,
        cluster: Optional[str] = None,
    ):
        if progress is True and "ipykernel" in sys.modules:
            # A notebook shows the kernel's sys.stderr, not the process's stderr the Rust
            # display writes to.
            progress = StderrProgress()
        self._inner = _Engine(
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            threads=threads,
            partitions=partitions,
            batch_size=batch_size,
            cache=cache,
            settings={k: _sql_value(v) for k, v in (settings or {}).items()},
            progress=progress,
            cluster=cluster,
        )

    def sql(self, query: str) -> Result:
        """Runs the statements of `query` (one, or several separated by ';') and returns the
        last one's result. CREATE MODEL, SET, CREATE TABLE, COPY and INSERT run at once; a
        query's rows are computed when first asked for."""
        return Result(self._inner.sql(query))

    def run_file(self, path: Union[str, os.PathLike], params: Optional[Mapping[str, Any]] = None) -> Result:
        """Runs a query file (as `prefflow run` does) with `${name}` parameters; returns the
        result of its last statement."""
        return Result(
            self._inner.run_file(
                os.fspath(path), {k: _sql_value(v) for k, v in (params or {}).items()}
            )
        )

    def register(self, name: str, data: Any) -> None:
        """Makes `data` a table named `name` (replacing one of that name): a pyarrow Table,
        RecordBatch or RecordBatchReader, a pandas or polars DataFrame, a `datasets.Dataset`,
        a list of dicts, a prefflow Result, or anything with `__arrow_c_stream__`.

        A RecordBatchReader is not read here but as the first query over the table runs
        (rows larger than memory stream through; a LIMIT stops reading early); it can be read
        only once, so a second query over it raises `prefflow.Error`. Everything else is
        imported now, zero-copy where Arrow allows, and can be queried any number of times."""
        import pyarrow as pa

        # A reader is read as the query runs (once), so it may be larger than memory.
        self._inner.register(name, _arrow_stream(data), lazy=isinstance(data, pa.RecordBatchReader))

    def deregister(self, name: str) -> bool:
        """Drops table `name`; True if it existed."""
        return self._inner.deregister(name)

    def tables(self) -> list:
        """The names of the session's tables."""
        return self._inner.tables()

    def models(self) -> Result:
        """The declared models (SHOW MODELS)."""
        return self.sql("SHOW MODELS")


class StderrProgress:
    """A progress callback writing the CLI's log lines to `sys.stderr` (what a notebook cell
    shows): one line per running model call every `every` seconds
    ($PREFFLOW_PROGRESS_SECONDS, default 10) and the CLI's summary per call when it finishes."""

    def __init__(self, every: Optional[float] = None):
        self.every = every if every is not None else float(os.environ.get("PREFFLOW_PROGRESS_SECONDS", 10))
        self.last = time.monotonic()
        self.done: set = set()

    def __call__(self, calls: list) -> None:
        due = time.monotonic() - self.last >= self.every
        for c in calls:
            if c["finished"]:
                key = (c["run"], c["call"])
                if key not in self.done:
                    self.done.add(key)
                    print(f"prefflow: {c['summary']}", file=sys.stderr)
            elif due:
                print(f"prefflow: {c['line']}", file=sys.stderr)
        if due:
            self.last = time.monotonic()


def _sql_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return os.fspath(v) if isinstance(v, os.PathLike) else str(v)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _arrow_stream(data: Any) -> Any:
    """An object with `__arrow_c_stream__` holding `data`'s rows."""
    import pyarrow as pa

    if isinstance(data, Result):
        return data.to_arrow()
    if type(data).__module__.startswith("datasets") and hasattr(data, "with_format"):
        # A datasets.Dataset is an Arrow table (plus an index mapping after select / shuffle,
        # which the arrow format applies).
        return data.with_format("arrow")[:]
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, list):
        return pa.Table.from_pylist(data)
    if isinstance(data, dict):
        return pa.Table.from_pydict(data)
    module = type(data).__module__
    if module.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False)
    if module.startswith("polars"):
        return data.to_arrow()
    if hasattr(data, "__arrow_c_stream__"):
        return data
    raise TypeError(
        f"prefflow.Engine.register: cannot make a table of {type(data).__name__}; pass a "
        "pyarrow Table / RecordBatch / RecordBatchReader, a pandas or polars DataFrame, a "
        "datasets.Dataset, a list of dicts or an object with __arrow_c_stream__"
    )
