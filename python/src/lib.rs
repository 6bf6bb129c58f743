//! `prefflow._prefflow`: the engine as a Python extension module. The Python package
//! (`prefflow/__init__.py`) wraps these classes with the conversions (pandas, polars,
//! datasets) that are easier to write in Python.
//!
//! Every wait on the engine releases the GIL and wakes every 100 ms to let Python run its
//! signal handlers: Ctrl-C raises `KeyboardInterrupt` and drops the running statement (rows a
//! model already computed stay in the result cache), as Ctrl-C does in the shell.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arrow_array::ffi_stream::ArrowArrayStreamReader;
use arrow_pyarrow::{FromPyArrow, IntoPyArrow, Table, ToPyArrow};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchReader};
use datafusion::dataframe::DataFrame;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use futures::StreamExt;
use prefflow::progress::{Progress, ProgressMode};
use prefflow::{CacheMode, PrefflowError, Script, SessionOptions};
use prefflow_udfs::models::call_stats::Activity;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

// The system allocator, wrapped so a template render can be held to a memory budget
// (prefflow_udfs::models::memory_budget), as in the `prefflow` binary.
#[global_allocator]
static ALLOCATOR: prefflow_udfs::models::memory_budget::Budgeted<std::alloc::System> =
    prefflow_udfs::models::memory_budget::Budgeted(std::alloc::System);

create_exception!(
    prefflow,
    Error,
    PyException,
    "A prefflow statement failed; the message is prefflow's one-line error."
);

/// How often a wait wakes to run Python's signal handlers and the progress callback.
const TICK: Duration = Duration::from_millis(100);
/// How often a progress callback is called while model calls run.
const CALLBACK_EVERY: Duration = Duration::from_millis(500);

/// One runtime for every engine of the process; its threads run the queries while the calling
/// Python thread waits with the GIL released.
///
/// A child process forked after the runtime started inherits it without its threads, and a
/// wait on it would never end: there it is an error instead (the process id is checked).
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<(u32, tokio::runtime::Runtime)> = OnceLock::new();
    let (pid, runtime) = RUNTIME.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("prefflow")
            .build()
            .expect("a tokio runtime");
        (std::process::id(), runtime)
    });
    if *pid != std::process::id() {
        return Err(Error::new_err(
            "prefflow: this process was forked from one whose prefflow engine had started, and \
             the engine's threads do not survive fork; use multiprocessing's 'spawn' start \
             method, or make the first engine in each worker",
        ));
    }
    Ok(runtime)
}

fn error(e: PrefflowError) -> PyErr {
    Error::new_err(e.to_string())
}

/// How model-call progress is shown.
#[derive(Clone)]
enum Report {
    /// As the CLI does: bars on a terminal, log lines otherwise, a summary at the end.
    Stderr,
    Quiet,
    /// A Python callable given a list of dicts, one per model call.
    Callback(Arc<Py<PyAny>>),
}

/// Progress of one statement's model calls while the caller waits for it.
struct Watch {
    display: Option<Progress>,
    callback: Option<Arc<Py<PyAny>>>,
    activity: Arc<Activity>,
    from: usize,
    last: Instant,
}

impl Watch {
    fn start(engine: &prefflow::Engine, report: &Report) -> Self {
        let activity = Arc::clone(engine.models().activity());
        let from = activity.node_count();
        let (mode, callback) = match report {
            Report::Stderr => (ProgressMode::for_stderr(false), None),
            Report::Quiet => (ProgressMode::Quiet, None),
            Report::Callback(f) => (ProgressMode::Quiet, Some(Arc::clone(f))),
        };
        Self {
            display: Some(Progress::start_since(Arc::clone(&activity), mode, from)),
            callback,
            activity,
            from,
            last: Instant::now(),
        }
    }

    /// Calls the callback when one is due (and there is something to report).
    fn tick(&mut self, py: Python<'_>, last: bool) -> PyResult<()> {
        let Some(callback) = &self.callback else {
            return Ok(());
        };
        if !last && self.last.elapsed() < CALLBACK_EVERY {
            return Ok(());
        }
        self.last = Instant::now();
        let entries: Vec<_> = self
            .activity
            .entries_since(self.from)
            .into_iter()
            .filter(|e| e.started())
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        let calls = PyList::empty(py);
        for e in entries {
            let s = e.snapshot();
            let d = PyDict::new(py);
            d.set_item("call", &e.label)?;
            d.set_item("rows", s.rows)?;
            d.set_item("total_rows", e.total_rows)?;
            d.set_item("computed", s.computed())?;
            d.set_item("cache_hits", s.cache_hits)?;
            d.set_item("input_tokens", s.input_tokens)?;
            d.set_item("output_tokens", s.output_tokens)?;
            d.set_item("in_flight", s.in_flight)?;
            d.set_item("retries", s.retries)?;
            d.set_item("seconds", e.elapsed().unwrap_or_default().as_secs_f64())?;
            d.set_item("finished", e.finished())?;
            // The CLI's log line and end-of-call summary, for callbacks that print them.
            d.set_item("line", prefflow::progress::line(&e))?;
            d.set_item("summary", prefflow::progress::summary(&e))?;
            // Tells one statement's calls from another's of the same label.
            d.set_item("run", self.from)?;
            calls.append(d)?;
        }
        callback.call1(py, (calls,))?;
        Ok(())
    }

    fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
        if let Some(display) = self.display.take() {
            py.detach(|| display.finish());
        }
        let result = self.tick(py, true);
        self.callback = None;
        result
    }
}

/// Runs `fut` on the runtime with the GIL released. Every [`TICK`] the GIL is taken back to
/// run signal handlers (a `KeyboardInterrupt` drops the future, which cancels the statement)
/// and the progress callback.
fn wait<T: Send>(
    py: Python<'_>,
    watch: &mut Watch,
    fut: impl Future<Output = T> + Send,
) -> PyResult<T> {
    let runtime = runtime()?;
    let mut fut = Box::pin(fut);
    loop {
        let step = py.detach(|| {
            runtime.block_on(async { tokio::time::timeout(TICK, fut.as_mut()).await.ok() })
        });
        if let Some(value) = step {
            return Ok(value);
        }
        let interrupted = py.check_signals().and_then(|()| watch.tick(py, false));
        if let Err(e) = interrupted {
            // Dropping the statement stops its model work; that can take a moment (a batch in
            // a worker thread finishes), so without the GIL.
            py.detach(move || drop(fut));
            let _ = watch.finish(py);
            return Err(e);
        }
    }
}

/// True for statements that do their work when executed (COPY, INSERT): `sql()` runs them at
/// once. DDL and SET already ran while planning; queries run when their rows are asked for.
fn runs_now(df: &DataFrame) -> bool {
    matches!(
        df.logical_plan(),
        LogicalPlan::Copy(_) | LogicalPlan::Dml(_)
    )
}

/// A prefflow session.
#[pyclass(name = "_Engine", module = "prefflow._prefflow")]
struct PyEngine {
    engine: prefflow::Engine,
    report: Report,
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (cache_dir=None, threads=None, partitions=None, batch_size=None, cache=None, settings=None, progress=None, cluster=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        cache_dir: Option<PathBuf>,
        threads: Option<usize>,
        partitions: Option<usize>,
        batch_size: Option<usize>,
        cache: Option<String>,
        settings: Option<HashMap<String, String>>,
        progress: Option<Bound<'_, PyAny>>,
        cluster: Option<String>,
    ) -> PyResult<Self> {
        let usage = |m: String| Error::new_err(format!("prefflow.Engine: {m}"));
        let cache = cache
            .map(|c| CacheMode::parse(&c))
            .transpose()
            .map_err(usage)?;
        if partitions == Some(0) || batch_size == Some(0) {
            return Err(usage("partitions and batch_size must be at least 1".into()));
        }
        let mut all_settings: Vec<(String, String)> =
            settings.unwrap_or_default().into_iter().collect();
        all_settings.sort();
        if let Some(n) = threads {
            all_settings.push(("prefflow.threads".to_string(), n.to_string()));
        }
        let report = match progress {
            None => Report::Stderr,
            Some(p) if p.is_callable() => Report::Callback(Arc::new(p.unbind())),
            Some(p) => match p.extract::<bool>() {
                Ok(true) => Report::Stderr,
                Ok(false) => Report::Quiet,
                Err(_) => {
                    return Err(usage(
                        "progress must be True, False or a callable taking a list of dicts".into(),
                    ));
                }
            },
        };
        let options = SessionOptions {
            target_partitions: partitions,
            batch_size,
            cache_dir,
            cluster,
            cache,
            settings: all_settings,
        };
        let runtime = runtime()?;
        let engine = py.detach(|| {
            let _guard = runtime.enter();
            prefflow::Engine::with_options(&options)
        });
        Ok(Self {
            engine: engine.map_err(error)?,
            report,
        })
    }

    /// Runs the statements of `text` in order (split on `;` as in a query file); returns the
    /// last one's result.
    fn sql(&self, py: Python<'_>, text: &str) -> PyResult<PyStatementResult> {
        let script = Script::parse("<sql>", text).map_err(error)?;
        self.run(py, script, HashMap::new(), false)
    }

    /// Runs a query file with `${name}` parameters; returns the last statement's result.
    #[pyo3(signature = (path, params=None))]
    fn run_file(
        &self,
        py: Python<'_>,
        path: PathBuf,
        params: Option<HashMap<String, String>>,
    ) -> PyResult<PyStatementResult> {
        let script = Script::from_file(&path).map_err(error)?;
        self.run(py, script, params.unwrap_or_default(), true)
    }

    /// Registers an Arrow stream (anything with `__arrow_c_stream__`) as table `name`,
    /// replacing a table of that name. The rows are imported once, zero-copy; with `lazy`
    /// (a RecordBatchReader) they are read as the first query over the table runs.
    #[pyo3(signature = (name, data, lazy=false))]
    fn register(
        &self,
        py: Python<'_>,
        name: &str,
        data: &Bound<'_, PyAny>,
        lazy: bool,
    ) -> PyResult<()> {
        let in_register = |e: String| Error::new_err(format!("register('{name}'): {e}"));
        let rows = if lazy {
            let reader = ArrowArrayStreamReader::from_pyarrow_bound(data)
                .map_err(|e| in_register(e.value(py).to_string()))?;
            Rows::Reader(Box::new(reader))
        } else {
            let (batches, schema) = Table::from_pyarrow_bound(data)
                .map_err(|e| in_register(e.value(py).to_string()))?
                .into_inner();
            Rows::Batches(schema, batches)
        };
        let engine = self.engine.clone();
        let table = name.to_string();
        let mut watch = Watch::start(&self.engine, &Report::Quiet);
        wait(py, &mut watch, async move {
            match rows {
                Rows::Reader(reader) => engine.register_reader(&table, reader).await,
                Rows::Batches(schema, batches) => {
                    engine.register_batches(&table, schema, batches).await
                }
            }
        })?
        .map_err(|e| in_register(e.to_string()))
    }

    /// Drops table `name` (a registered one or one made by CREATE TABLE); true if it existed.
    fn deregister(&self, name: &str) -> PyResult<bool> {
        self.engine
            .context()
            .deregister_table(name)
            .map(|t| t.is_some())
            .map_err(|e| error(e.into()))
    }

    /// The session's table names.
    fn tables(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .engine
            .context()
            .catalog_names()
            .into_iter()
            .flat_map(|c| {
                let catalog = self.engine.context().catalog(&c);
                catalog
                    .map(|cat| {
                        cat.schema_names()
                            .into_iter()
                            .filter(|s| s != "information_schema")
                            .flat_map(|s| {
                                cat.schema(&s).map(|x| x.table_names()).unwrap_or_default()
                            })
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect();
        names.sort();
        names
    }
}

impl PyEngine {
    fn run(
        &self,
        py: Python<'_>,
        script: Script,
        params: HashMap<String, String>,
        file: bool,
    ) -> PyResult<PyStatementResult> {
        let mut watch = Watch::start(&self.engine, &self.report);
        let engine = self.engine.clone();
        let planned = wait(py, &mut watch, async move {
            let last = if file {
                engine.run_script(&script, &params).await?
            } else {
                // Statements given as a string take no ${...} parameters, so a literal
                // '${' in a string is left alone.
                let n = script.statements.len();
                let mut last = None;
                for (i, st) in script.statements.iter().enumerate() {
                    // One statement's errors need no `<sql>:line`.
                    let here = (n > 1).then(|| script.location(st));
                    let df = engine.sql(&st.sql).await.map_err(|e| located(e, &here))?;
                    if i + 1 < n {
                        prefflow::engine::drain(df)
                            .await
                            .map_err(|e| located(e, &here))?;
                    } else {
                        last = Some(prefflow::FinalQuery {
                            dataframe: df,
                            location: script.location(st),
                        });
                    }
                }
                last
            };
            let Some(last) = last else {
                return Ok::<_, PrefflowError>(None);
            };
            let location = (file || script.statements.len() > 1).then_some(last.location);
            // A COPY or INSERT does its work now, as the statement's caller expects.
            if runs_now(&last.dataframe) {
                let batches = prefflow::engine::collect(last.dataframe.clone())
                    .await
                    .map_err(|e| located(e, &location))?;
                return Ok(Some((last.dataframe, location, Some(batches))));
            }
            Ok(Some((last.dataframe, location, None)))
        })?;
        watch.finish(py)?;
        let (dataframe, location, batches) = match planned.map_err(error)? {
            Some(p) => p,
            None => return Err(Error::new_err("no statements to run")),
        };
        Ok(PyStatementResult {
            engine: self.engine.clone(),
            report: self.report.clone(),
            dataframe,
            location,
            batches: Mutex::new(batches),
        })
    }
}

/// The rows `register` was given.
enum Rows {
    /// Read as the first query over the table runs.
    Reader(Box<dyn RecordBatchReader + Send>),
    Batches(SchemaRef, Vec<RecordBatch>),
}

/// The result of a statement: its rows are computed when first asked for, and kept.
#[pyclass(name = "_Result", module = "prefflow._prefflow")]
struct PyStatementResult {
    engine: prefflow::Engine,
    report: Report,
    dataframe: DataFrame,
    location: Option<String>,
    batches: Mutex<Option<Vec<RecordBatch>>>,
}

impl PyStatementResult {
    /// The rows, computed now if they were not yet.
    fn rows(&self, py: Python<'_>) -> PyResult<Vec<RecordBatch>> {
        if let Some(b) = self.batches.lock().expect("result lock").as_ref() {
            return Ok(b.clone());
        }
        let mut watch = Watch::start(&self.engine, &self.report);
        let df = self.dataframe.clone();
        let rows = wait(py, &mut watch, prefflow::engine::collect(df))?;
        watch.finish(py)?;
        let rows = rows.map_err(|e| error(located(e, &self.location)))?;
        *self.batches.lock().expect("result lock") = Some(rows.clone());
        Ok(rows)
    }

    fn arrow_schema(&self) -> SchemaRef {
        Arc::clone(self.dataframe.schema().inner())
    }
}

#[pymethods]
impl PyStatementResult {
    /// The result as a `pyarrow.Table` (computed on first use, then kept).
    fn to_arrow<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let batches = self.rows(py)?;
        // The batches' own schema: DataFusion's planned schema can differ in field metadata.
        let schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| self.arrow_schema());
        let batches = batches
            .into_iter()
            .map(|b| {
                if b.schema() == schema {
                    Ok(b)
                } else {
                    b.with_schema(Arc::clone(&schema))
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::new_err(e.to_string()))?;
        Table::try_new(batches, schema)
            .map_err(|e| Error::new_err(e.to_string()))?
            .into_pyarrow(py)
    }

    /// The result's `pyarrow.Schema`, without running it.
    fn schema<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.arrow_schema().as_ref().to_pyarrow(py)
    }

    /// True once the rows were computed (and are kept).
    fn computed(&self) -> bool {
        self.batches.lock().expect("result lock").is_some()
    }

    /// The rows as `pyarrow.RecordBatch`es, streamed as they are computed (not kept); the rows
    /// already computed are replayed.
    fn batches(&self) -> PyResult<PyBatches> {
        if let Some(b) = self.batches.lock().expect("result lock").as_ref() {
            return Ok(PyBatches {
                state: Mutex::new(BatchState::Kept(b.clone().into_iter())),
            });
        }
        Ok(PyBatches {
            state: Mutex::new(BatchState::Planned {
                engine: self.engine.clone(),
                report: self.report.clone(),
                dataframe: self.dataframe.clone(),
                location: self.location.clone(),
            }),
        })
    }
}

enum BatchState {
    Kept(std::vec::IntoIter<RecordBatch>),
    Planned {
        engine: prefflow::Engine,
        report: Report,
        dataframe: DataFrame,
        location: Option<String>,
    },
    Streaming {
        stream: SendableRecordBatchStream,
        watch: Watch,
        plan: LogicalPlan,
        location: Option<String>,
    },
    Done,
}

/// An iterator of `pyarrow.RecordBatch`es.
#[pyclass(name = "_Batches", module = "prefflow._prefflow")]
struct PyBatches {
    state: Mutex<BatchState>,
}

#[pymethods]
impl PyBatches {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let mut state = self
            .state
            .try_lock()
            .map_err(|_| Error::new_err("this batch iterator is in use by another thread"))?;
        loop {
            match &mut *state {
                BatchState::Done => return Ok(None),
                BatchState::Kept(rows) => {
                    return rows.next().map(|b| b.to_pyarrow(py)).transpose();
                }
                BatchState::Planned {
                    engine,
                    report,
                    dataframe,
                    location,
                } => {
                    let mut watch = Watch::start(engine, report);
                    let df = dataframe.clone();
                    let plan = df.logical_plan().clone();
                    let location = location.clone();
                    let started = wait(py, &mut watch, df.execute_stream());
                    let stream = match started {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            *state = BatchState::Done;
                            watch.finish(py)?;
                            return Err(error(located(diagnosed(e, &plan), &location)));
                        }
                        Err(e) => {
                            *state = BatchState::Done;
                            return Err(e);
                        }
                    };
                    *state = BatchState::Streaming {
                        stream,
                        watch,
                        plan,
                        location,
                    };
                }
                BatchState::Streaming {
                    stream,
                    watch,
                    plan,
                    location,
                } => {
                    let next = match wait(py, watch, stream.next()) {
                        Ok(n) => n,
                        Err(e) => {
                            *state = BatchState::Done;
                            return Err(e);
                        }
                    };
                    match next {
                        Some(Ok(batch)) => return batch.to_pyarrow(py).map(Some),
                        Some(Err(e)) => {
                            let e = error(located(diagnosed(e, plan), location));
                            watch.finish(py)?;
                            *state = BatchState::Done;
                            return Err(e);
                        }
                        None => {
                            watch.finish(py)?;
                            *state = BatchState::Done;
                            return Ok(None);
                        }
                    }
                }
            }
        }
    }
}

fn diagnosed(e: datafusion::error::DataFusionError, plan: &LogicalPlan) -> PrefflowError {
    prefflow::datasets::with_plan_json_diagnostics(e, plan).into()
}

fn located(e: PrefflowError, location: &Option<String>) -> PrefflowError {
    match location {
        Some(l) => e.at(l.clone()),
        None => e,
    }
}

#[pymodule]
fn _prefflow(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_class::<PyStatementResult>()?;
    m.add_class::<PyBatches>()?;
    m.add("Error", m.py().get_type::<Error>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
