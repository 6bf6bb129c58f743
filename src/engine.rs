//! The library API: run SQL and query files against a prefflow session.

use std::collections::HashMap;

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::dml::CopyTo;
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use prefflow_udfs::models::remote::redact_uri;
use prefflow_udfs::models::{ModelError, ModelSpec};

use crate::datasets::with_plan_json_diagnostics;
use crate::error::{PrefflowError, Result};
use crate::model_statements::{self, ModelStatement};
use crate::script::{Script, substitute};
use crate::session::{SessionOptions, build_session};

/// A prefflow session: every prefflow function, format and dataset address registered.
#[derive(Clone)]
pub struct Engine {
    ctx: SessionContext,
    /// Statements run on a Ballista cluster.
    cluster: bool,
}

/// The last statement of a script, planned but not yet run, so its rows can be streamed.
pub struct FinalQuery {
    /// The planned result.
    pub dataframe: DataFrame,
    /// `file:line` of the statement, for errors while it streams.
    pub location: String,
}

impl Engine {
    /// An engine with default options.
    pub fn new() -> Result<Self> {
        Self::with_options(&SessionOptions::default())
    }

    /// An engine with the given options.
    pub fn with_options(options: &SessionOptions) -> Result<Self> {
        Ok(Self {
            ctx: build_session(options)?,
            cluster: options.cluster.is_some(),
        })
    }

    /// The underlying DataFusion session, for registering tables or functions of your own.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The session's models (and what their functions are doing, for progress).
    pub fn models(&self) -> std::sync::Arc<prefflow_udfs::models::ModelRegistry> {
        crate::session::models(&self.ctx)
    }

    /// Plans one statement. DDL runs now; a `COPY … TO` runs now too (through the prefflow
    /// format DataFusion plans it with: staged, sharded, pushed; see `sinks::route`), and the
    /// returned frame holds its row count. What DataFusion's SQL cannot express is routed
    /// here: model DDL, and a statement on a cluster.
    pub async fn sql(&self, sql: &str) -> Result<DataFrame> {
        if let Some(statement) = model_statements::parse(sql) {
            let statement = statement.map_err(PrefflowError::Script)?;
            let result = self.model_statement(statement).await;
            if self.cluster {
                self.share_models()?;
            }
            return result;
        }
        let plan = match self.ctx.state().create_logical_plan(sql).await? {
            LogicalPlan::Copy(mut copy) => {
                // A dataset card's provenance names the statement that wrote it.
                copy.options.insert(
                    crate::sinks::provenance::STATEMENT_OPTION.to_string(),
                    sql.to_string(),
                );
                // Routed here too, not only by the session's rule: a cluster session (and
                // its in-process twin) has none.
                let (copy, _) = crate::sinks::route(copy, self.ctx.state().config_options())?;
                LogicalPlan::Copy(copy)
            }
            plan => plan,
        };
        if self.cluster {
            return self.on_cluster(sql, plan).await;
        }
        let copy = matches!(plan, LogicalPlan::Copy(_));
        let df = self.ctx.execute_logical_plan(plan).await?;
        if copy {
            return self.frame(collect(df).await?);
        }
        Ok(df)
    }

    /// A statement on a cluster: what Ballista cannot ship runs here; a COPY's query runs
    /// there and its rows stream into the sink planned here (the same route as a local run:
    /// the dataset is written and committed as a local run does).
    async fn on_cluster(&self, sql: &str, plan: LogicalPlan) -> Result<DataFrame> {
        if runs_in_process_only(&plan)? {
            // Ballista cannot ship this plan to its executors: the statement runs here, over
            // the same tables and models.
            eprintln!(
                "prefflow: this statement runs in this process, not on the cluster (WITH RECURSIVE, generate_series and range cannot be sent to executors)"
            );
            return Box::pin(self.in_process().sql(sql)).await;
        }
        match plan {
            LogicalPlan::Ddl(datafusion::logical_expr::DdlStatement::CreateMemoryTable(create)) => {
                self.create_table_on_cluster(&create).await
            }
            LogicalPlan::Copy(copy) => {
                let (copy, _) = crate::sinks::route(copy, self.ctx.state().config_options())?;
                let rows =
                    RemoteRows::scan(self.ctx.execute_logical_plan((*copy.input).clone()).await?)?;
                let local = self.in_process();
                let copy = LogicalPlan::Copy(CopyTo {
                    input: Arc::new(rows),
                    ..copy
                });
                let written = collect(local.ctx.execute_logical_plan(copy).await?).await?;
                self.frame(written)
            }
            plan => Ok(self.ctx.execute_logical_plan(plan).await?),
        }
    }

    /// Runs one statement and collects its rows.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        collect(self.sql(sql).await?).await
    }

    /// Runs one statement and streams its rows as record batches.
    pub async fn stream(&self, sql: &str) -> Result<SendableRecordBatchStream> {
        Ok(self.sql(sql).await?.execute_stream().await?)
    }

    /// Runs every statement of `script` in order with `${name}` parameters filled in, and
    /// returns the last one planned but not run. Parameters are checked for every statement
    /// before any runs, so a typo at the end of a long pipeline fails at once.
    pub async fn run_script(
        &self,
        script: &Script,
        params: &HashMap<String, String>,
    ) -> Result<Option<FinalQuery>> {
        let mut statements = Vec::with_capacity(script.statements.len());
        for st in &script.statements {
            let sql = substitute(&st.sql, params)
                .map_err(|m| PrefflowError::Script(m).at(script.location(st)))?;
            statements.push((sql, script.location(st)));
        }
        let n = statements.len();
        for (i, ((sql, location), st)) in statements.into_iter().zip(&script.statements).enumerate()
        {
            let df = self.sql(&sql).await.map_err(|e| {
                // A statement that does not parse or plan may be broken by a parameter's
                // value: say which values it was given.
                let used = crate::script::used_params(&st.sql, params);
                let message = e.to_string();
                let note = if !used.is_empty()
                    && [
                        "syntax error",
                        "during planning",
                        "Schema error",
                        "SQL error",
                    ]
                    .iter()
                    .any(|k| message.contains(k))
                {
                    format!(
                        " (the statement was given --param {})",
                        used.join(" --param ")
                    )
                } else {
                    String::new()
                };
                match crate::script::syntax_error(&e, st.line) {
                    // The line the parser stopped on, not the statement's first line.
                    Some((line, message)) => {
                        PrefflowError::Script(message + &note).at(format!("{}:{line}", script.name))
                    }
                    None if !note.is_empty() => {
                        PrefflowError::Script(crate::error::one_line(&message) + &note)
                            .at(location.clone())
                    }
                    None => e.at(location.clone()),
                }
            })?;
            if i + 1 == n {
                return Ok(Some(FinalQuery {
                    dataframe: df,
                    location,
                }));
            }
            drain(df).await.map_err(|e| e.at(location))?;
        }
        Ok(None)
    }

    /// This engine's tables, models and settings, planned and run in this process.
    fn in_process(&self) -> Engine {
        let state = datafusion::execution::session_state::SessionStateBuilder::new_from_existing(
            self.ctx.state(),
        )
        .with_query_planner(Arc::new(InProcessPlanner))
        .build();
        Engine {
            ctx: SessionContext::new_with_state(state),
            cluster: false,
        }
    }

    /// On a cluster, the declared models travel with every task (`prefflow.models`), so the
    /// executors load the same ones.
    #[cfg(feature = "cluster")]
    fn share_models(&self) -> Result<()> {
        let declared = crate::cluster_client::encode_models(&self.models());
        let state = self.ctx.state_ref();
        let mut state = state.write();
        state
            .config_mut()
            .options_mut()
            .set("prefflow.models", &declared)?;
        Ok(())
    }

    #[cfg(not(feature = "cluster"))]
    fn share_models(&self) -> Result<()> {
        Ok(())
    }

    async fn model_statement(&self, statement: ModelStatement) -> Result<DataFrame> {
        let models = crate::session::models(&self.ctx);
        let model_error = |e: ModelError| PrefflowError::Model(e.to_string());
        match statement {
            ModelStatement::Create {
                name,
                uri,
                options,
                or_replace,
                if_not_exists,
            } => {
                models
                    .declare(&name, &uri, options, or_replace, if_not_exists)
                    .await
                    .map_err(model_error)?;
                Ok(self.ctx.read_empty()?)
            }
            ModelStatement::Drop { name, if_exists } => {
                models.drop_model(&name, if_exists).map_err(model_error)?;
                Ok(self.ctx.read_empty()?)
            }
            ModelStatement::Show => {
                let specs = models.list();
                // Headers only (no weights), off the runtime: a sharded checkpoint has many.
                let summaries = {
                    let (models, specs) = (Arc::clone(&models), specs.clone());
                    tokio::task::spawn_blocking(move || {
                        specs
                            .iter()
                            .map(|s| models.summary(s).unwrap_or_default())
                            .collect::<Vec<_>>()
                    })
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?
                };
                let column = |f: &dyn Fn(&ModelSpec) -> String| -> ArrayRef {
                    Arc::new(StringArray::from(specs.iter().map(f).collect::<Vec<_>>()))
                };
                let about =
                    |f: &dyn Fn(&prefflow_udfs::models::summary::Summary) -> String| -> ArrayRef {
                        Arc::new(StringArray::from(
                            summaries.iter().map(f).collect::<Vec<_>>(),
                        ))
                    };
                let batch = RecordBatch::try_from_iter(vec![
                    ("name", column(&|s| s.name.clone())),
                    ("kind", column(&|s| s.kind.as_str().to_string())),
                    ("architecture", about(&|s| s.architecture.clone())),
                    (
                        "parameters",
                        about(&|s| {
                            s.parameters
                                .map(prefflow_udfs::models::summary::human)
                                .unwrap_or_default()
                        }),
                    ),
                    ("dtype", about(&|s| s.dtype.clone())),
                    (
                        "context",
                        about(&|s| s.context.map(|c| c.to_string()).unwrap_or_default()),
                    ),
                    ("uri", column(&|s| redact_uri(&s.uri))),
                    ("path", column(&|s| s.path.display().to_string())),
                    (
                        "options",
                        column(&|s| {
                            s.options
                                .iter()
                                .map(|(k, v)| format!("{k} '{v}'"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }),
                    ),
                ])
                .map_err(DataFusionError::from)?;
                self.frame(vec![batch])
            }
        }
    }

    /// Makes `batches` a table named `name`, replacing a table of that name (the Python
    /// package's `register`). On a cluster a memory table cannot be sent to the executors, so
    /// the rows are written as Parquet beside the result cache (as `CREATE TABLE … AS` there)
    /// and the table reads that file.
    pub async fn register_batches(
        &self,
        name: &str,
        schema: datafusion::arrow::datatypes::SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<()> {
        if !self.cluster {
            // Batches of the session's batch size (a DataFrame arrives as one batch), so model
            // calls over the table stream, checkpoint and report progress as over a file's.
            let size = self.ctx.state().config().batch_size().max(1);
            let batches = batches
                .iter()
                .flat_map(|b| {
                    (0..b.num_rows())
                        .step_by(size)
                        .map(move |start| b.slice(start, size.min(b.num_rows() - start)))
                })
                .collect();
            let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
            // Rows from outside: a source --shard splits, like a file's.
            return self.replace_table(name, Arc::new(crate::shard::Registered(Arc::new(table))));
        }
        let file = self.cluster_table_file(name)?;
        let batches = if batches.is_empty() {
            vec![RecordBatch::new_empty(schema)]
        } else {
            batches
        };
        SessionContext::new()
            .read_batches(batches)?
            .write_parquet(
                &file,
                datafusion::dataframe::DataFrameWriteOptions::new().with_single_file_output(true),
                None,
            )
            .await?;
        self.replace_with_parquet(name.into(), &file).await
    }

    /// Makes `reader` a table named `name` that is read as a query runs, not before (rows
    /// larger than memory stream through); replaces a table of that name. A reader is read
    /// once: a second query over the table is an error naming it. On a cluster the rows are
    /// read now and sent as [`Engine::register_batches`] does.
    pub async fn register_reader(
        &self,
        name: &str,
        reader: Box<dyn datafusion::arrow::record_batch::RecordBatchReader + Send>,
    ) -> Result<()> {
        let schema = reader.schema();
        if self.cluster {
            let batches = reader
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| PrefflowError::Usage(format!("table '{name}': {e}")))?;
            return self.register_batches(name, schema, batches).await;
        }
        let partition = ReaderPartition {
            name: name.to_string(),
            schema: Arc::clone(&schema),
            reader: std::sync::Mutex::new(Some(reader)),
        };
        let table = datafusion::catalog::streaming::StreamingTable::try_new(
            schema,
            vec![Arc::new(partition)],
        )?;
        self.replace_table(name, Arc::new(crate::shard::Registered(Arc::new(table))))
    }

    /// Registers `table` as `name`, replacing a table of that name.
    fn replace_table(
        &self,
        name: &str,
        table: Arc<dyn datafusion::catalog::TableProvider>,
    ) -> Result<()> {
        self.ctx.deregister_table(name)?;
        self.ctx.register_table(name, table)?;
        Ok(())
    }

    /// Makes the Parquet `file` table `name`, replacing a table of that name.
    async fn replace_with_parquet(
        &self,
        name: datafusion::common::TableReference,
        file: &str,
    ) -> Result<()> {
        self.ctx.deregister_table(name.clone())?;
        self.ctx
            .register_parquet(
                name,
                file,
                datafusion::prelude::ParquetReadOptions::default(),
            )
            .await?;
        Ok(())
    }

    /// A new Parquet file for table `name` under `tables/` beside the result cache.
    fn cluster_table_file(&self, name: &str) -> Result<String> {
        let dir = crate::sinks::push_staging(self.ctx.state().config()).with_file_name("tables");
        std::fs::create_dir_all(&dir).map_err(|e| PrefflowError::io(&dir, e))?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let table = name.rsplit('.').next().unwrap_or(name);
        Ok(dir
            .join(format!("{table}-{stamp}.parquet"))
            .display()
            .to_string())
    }

    /// `CREATE TABLE name AS query` on a cluster: a memory table cannot be sent to the
    /// executors, so the query's rows are written as Parquet beside the result cache (by the
    /// executors) and the table reads that file.
    async fn create_table_on_cluster(
        &self,
        create: &datafusion::logical_expr::CreateMemoryTable,
    ) -> Result<DataFrame> {
        let name = create.name.clone();
        let exists = self.ctx.table_exist(name.clone())?;
        if exists && create.if_not_exists {
            return self.frame(Vec::new());
        }
        if exists && !create.or_replace {
            return Err(DataFusionError::Plan(format!("Table '{name}' already exists")).into());
        }
        let file = self.cluster_table_file(name.table())?;
        self.ctx
            .execute_logical_plan((*create.input).clone())
            .await?
            .write_parquet(
                &file,
                datafusion::dataframe::DataFrameWriteOptions::new().with_single_file_output(true),
                None,
            )
            .await?;
        self.replace_with_parquet(name, &file).await?;
        self.frame(Vec::new())
    }

    /// Rows computed here as a frame: on a cluster, a frame of the engine's session would be
    /// sent there to be read back.
    fn frame(&self, batches: Vec<RecordBatch>) -> Result<DataFrame> {
        if batches.is_empty() {
            return Ok(SessionContext::new().read_empty()?);
        }
        if self.cluster {
            Ok(SessionContext::new().read_batches(batches)?)
        } else {
            Ok(self.ctx.read_batches(batches)?)
        }
    }
}

/// Runs a planned statement and collects its rows; a malformed JSON-lines record is reported
/// with its file and line.
pub async fn collect(df: DataFrame) -> Result<Vec<RecordBatch>> {
    let plan = df.logical_plan().clone();
    df.collect()
        .await
        .map_err(|e| with_plan_json_diagnostics(e, &plan).into())
}

/// Runs a planned statement to the end, dropping its rows.
pub async fn drain(df: DataFrame) -> Result<()> {
    let plan = df.logical_plan().clone();
    let diagnose =
        |e: DataFusionError| -> PrefflowError { with_plan_json_diagnostics(e, &plan).into() };
    let mut stream = df.execute_stream().await.map_err(diagnose)?;
    while let Some(batch) = stream.next().await {
        batch.map_err(diagnose)?;
    }
    Ok(())
}

/// Whether Ballista cannot send `plan` to its executors: a recursive query (its work table) or
/// a table function (`generate_series`, `range`), which DataFusion's plan codec does not encode
/// (the scheduler fails the job with "task could not be prepared", or the client with an
/// internal error).
fn runs_in_process_only(plan: &LogicalPlan) -> Result<bool> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::functions_table::generate_series::GenerateSeriesTable;
    let mut found = false;
    plan.apply_with_subqueries(|node| {
        found = match node {
            LogicalPlan::RecursiveQuery(_) => true,
            LogicalPlan::TableScan(scan) => scan
                .source
                .as_ref()
                .downcast_ref::<datafusion::datasource::DefaultTableSource>()
                .is_some_and(|s| {
                    s.table_provider
                        .as_ref()
                        .downcast_ref::<GenerateSeriesTable>()
                        .is_some()
                }),
            _ => false,
        };
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    Ok(found)
}

/// Plans physically in this process (the cluster session's planner sends plans to Ballista).
#[derive(Debug)]
struct InProcessPlanner;

#[async_trait::async_trait]
impl datafusion::execution::context::QueryPlanner for InProcessPlanner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        state: &dyn datafusion::catalog::Session,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        use datafusion::physical_planner::PhysicalPlanner;
        datafusion::physical_planner::DefaultPhysicalPlanner::default()
            .create_physical_plan(plan, state)
            .await
    }
}

/// The rows of a query run on the cluster, as a table scanned here: a COPY on a cluster
/// writes them through its sink in this process.
struct RemoteRows {
    rows: std::sync::Mutex<Option<DataFrame>>,
    schema: datafusion::arrow::datatypes::SchemaRef,
}

impl RemoteRows {
    /// A plan scanning `rows` once.
    fn scan(rows: DataFrame) -> Result<LogicalPlan> {
        let schema = Arc::new(rows.schema().as_arrow().clone());
        let partition = RemoteRows {
            rows: std::sync::Mutex::new(Some(rows)),
            schema: Arc::clone(&schema),
        };
        let table = datafusion::catalog::streaming::StreamingTable::try_new(
            schema,
            vec![Arc::new(partition)],
        )?;
        Ok(datafusion::logical_expr::LogicalPlanBuilder::scan(
            "cluster_rows",
            datafusion::datasource::provider_as_source(Arc::new(table)),
            None,
        )?
        .build()?)
    }
}

impl std::fmt::Debug for RemoteRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteRows")
    }
}

impl datafusion::physical_plan::streaming::PartitionStream for RemoteRows {
    fn schema(&self) -> &datafusion::arrow::datatypes::SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<datafusion::execution::TaskContext>) -> SendableRecordBatchStream {
        let rows = self.rows.lock().map(|mut r| r.take()).unwrap_or(None);
        let stream = futures::stream::once(async move {
            match rows {
                Some(rows) => rows.execute_stream().await,
                None => Err(DataFusionError::Execution(
                    "a COPY's cluster rows are read once".to_string(),
                )),
            }
        })
        .try_flatten();
        Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                Arc::clone(&self.schema),
                stream,
            ),
        )
    }
}

/// A record-batch reader as a table's one partition ([`Engine::register_reader`]).
struct ReaderPartition {
    name: String,
    schema: datafusion::arrow::datatypes::SchemaRef,
    reader: std::sync::Mutex<
        Option<Box<dyn datafusion::arrow::record_batch::RecordBatchReader + Send>>,
    >,
}

impl std::fmt::Debug for ReaderPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReaderPartition({})", self.name)
    }
}

impl datafusion::physical_plan::streaming::PartitionStream for ReaderPartition {
    fn schema(&self) -> &datafusion::arrow::datatypes::SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<datafusion::execution::TaskContext>) -> SendableRecordBatchStream {
        let reader = self.reader.lock().map(|mut r| r.take()).unwrap_or(None);
        let name = self.name.clone();
        let mut builder = datafusion::physical_plan::stream::RecordBatchReceiverStream::builder(
            Arc::clone(&self.schema),
            2,
        );
        let tx = builder.tx();
        // A reader may block (a Python generator behind it takes the GIL), so it is read on a
        // blocking thread; a dropped query closes the channel and reading stops.
        builder.spawn_blocking(move || {
            let Some(reader) = reader else {
                return Err(DataFusionError::Execution(format!(
                    "table '{name}' is a record-batch reader that was already read (a reader is read once; register a table to query it again)"
                )));
            };
            for batch in reader {
                let batch = batch.map_err(|e| {
                    DataFusionError::Execution(format!("reading table '{name}': {e}"))
                })?;
                if tx.blocking_send(Ok(batch)).is_err() {
                    break;
                }
            }
            Ok(())
        });
        builder.build()
    }
}
