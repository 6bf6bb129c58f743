//! Scale-out on Apache DataFusion Ballista (`--features cluster`): `prefflow scheduler`,
//! `prefflow executor`, and `prefflow run --cluster df://HOST:PORT`.
//!
//! The client plans a statement with its prefflow session and sends the logical plan to the
//! scheduler; the scheduler plans it physically with a prefflow session of its own (every
//! function, format and rule) and hands stages to the executors, which run them with every
//! prefflow function registered over one model registry per process (a model is loaded once
//! per executor and kept across queries). The models a client declared travel with each task
//! (the `prefflow.models` setting) and are adopted by the executor before the stage runs.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use prefflow_udfs::models::ModelRegistry;
use prefflow_udfs::models::settings::PrefflowOptions;

use crate::cluster_client::decode_models;
use crate::error::{PrefflowError, Result};
use crate::session::{base_config, build_state};

/// Warnings and errors of Ballista's scheduler and executor (why a task could not be prepared,
/// a lost executor, …) on standard error; `RUST_LOG` chooses others.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a scheduler on `bind` until the process ends.
pub async fn run_scheduler(bind: SocketAddr) -> Result<()> {
    init_logging();
    // Physical planning only reads model declarations (for EXPLAIN labels); nothing loads.
    let models = Arc::new(ModelRegistry::new());
    let builder_models = Arc::clone(&models);
    let config = SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        external_host: bind.ip().to_string(),
        // A lost executor is noticed in seconds, and its tasks run again on the others.
        executor_timeout_seconds: 10,
        expire_dead_executor_interval_seconds: 2,
        no_executors_grace_period_seconds: 30,
        override_session_builder: Some(Arc::new(move |config: SessionConfig| {
            // The job's settings (from the client) are in `config` already.
            let config = if config
                .options()
                .extensions
                .get::<PrefflowOptions>()
                .is_some()
            {
                config.with_extension(Arc::clone(&builder_models))
            } else {
                base_config(config, &builder_models)
            };
            adopt(&builder_models, &config)?;
            build_state(config, &builder_models, false)
                .map_err(|e| DataFusionError::Plan(e.to_string()))
        })),
        override_config_producer: Some(Arc::new(move || {
            base_config(SessionConfig::new_with_ballista(), &models)
        })),
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| PrefflowError::Target(format!("scheduler on {bind}: {e}")))?;
    start_server(cluster, bind, Arc::new(config))
        .await
        .map_err(|e| PrefflowError::Target(format!("scheduler on {bind}: {e}")))
}

/// What an executor needs: where it listens and which scheduler it joins.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    pub scheduler: (String, u16),
    pub bind_host: String,
    pub port: u16,
    pub grpc_port: u16,
    /// Tasks it runs at once (Ballista's vcores).
    pub concurrent_tasks: usize,
    pub work_dir: Option<String>,
    /// The result cache this executor reads and writes (shared folders are fine).
    pub cache_dir: std::path::PathBuf,
}

/// Runs an executor until the process ends.
pub async fn run_executor(options: ExecutorOptions) -> Result<()> {
    init_logging();
    let models = Arc::new(ModelRegistry::new());
    // Model calls reuse and store results as a local run does (per the job's prefflow.cache).
    models.set_result_store(Some(Arc::new(crate::cache::RedbStore::new(
        &options.cache_dir,
    ))));
    let functions = session_functions(&models)?;
    let producer_models = Arc::clone(&models);
    let config = ExecutorProcessConfig {
        bind_host: options.bind_host.clone(),
        external_host: Some(options.bind_host.clone()),
        port: options.port,
        grpc_port: options.grpc_port,
        scheduler_host: options.scheduler.0.clone(),
        scheduler_port: options.scheduler.1,
        vcores: options.concurrent_tasks,
        work_dir: options.work_dir.clone(),
        // Heartbeats well inside the scheduler's 10 s executor timeout.
        executor_heartbeat_interval_seconds: 2,
        override_function_registry: Some(Arc::new(functions)),
        override_config_producer: Some(Arc::new(move || {
            base_config(SessionConfig::new_with_ballista(), &producer_models)
        })),
        override_execution_engine: Some(Arc::new(AdoptModels {
            inner: DefaultExecutionEngine::new(),
            models,
            host: format!("{}:{}", options.bind_host, options.grpc_port),
        })),
        ..Default::default()
    };
    start_executor_process(Arc::new(config)).await.map_err(|e| {
        PrefflowError::Target(format!(
            "executor for scheduler df://{}:{}: {e}",
            options.scheduler.0, options.scheduler.1
        ))
    })
}

/// Every function a local session has (DataFusion's own, the nested / array ones Ballista's
/// default registry lacks, prefflow's, under every alias), over the executor's models: a task
/// that names any of them can be prepared here.
fn session_functions(models: &Arc<ModelRegistry>) -> Result<BallistaFunctionRegistry> {
    let state = build_state(
        base_config(SessionConfig::new_with_ballista(), models),
        models,
        false,
    )?;
    Ok(BallistaFunctionRegistry {
        scalar_functions: state.scalar_functions().clone(),
        aggregate_functions: state.aggregate_functions().clone(),
        window_functions: state.window_functions().clone(),
        higher_order_functions: state.higher_order_functions().clone(),
    })
}

/// Ballista's execution engine, adopting the client's model declarations (from the task's
/// `prefflow.models`) into the executor's registry before a stage runs.
struct AdoptModels {
    inner: DefaultExecutionEngine,
    models: Arc<ModelRegistry>,
    /// This executor, named in the errors of its tasks.
    host: String,
}

impl ExecutionEngine for AdoptModels {
    fn create_query_stage_exec(
        &self,
        job_id: ballista_core::JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> datafusion::error::Result<Arc<dyn QueryStageExecutor>> {
        let client = &PrefflowOptions::from_config(config.options())
            .0
            .client_version;
        if !client.is_empty() && client != env!("CARGO_PKG_VERSION") {
            return Err(DataFusionError::Execution(format!(
                "on executor {}: it runs prefflow {} and the client prefflow {client}: run the same version everywhere",
                self.host,
                env!("CARGO_PKG_VERSION")
            )));
        }
        adopt(&self.models, config)?;
        let inner = self.inner.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )?;
        Ok(Arc::new(NamedErrors {
            inner,
            host: self.host.clone(),
        }))
    }
}

/// A stage whose errors name the executor and read as one line (Ballista sends a task's
/// error to the client in Rust's debug form).
#[derive(Debug)]
struct NamedErrors {
    inner: Arc<dyn QueryStageExecutor>,
    host: String,
}

impl std::fmt::Display for NamedErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.inner, f)
    }
}

#[async_trait::async_trait]
impl QueryStageExecutor for NamedErrors {
    async fn execute_query_stage(
        &self,
        task_id: usize,
        context: Arc<datafusion::execution::TaskContext>,
    ) -> datafusion::error::Result<Vec<ballista_core::serde::protobuf::ShuffleWritePartition>> {
        self.inner
            .execute_query_stage(task_id, context)
            .await
            .map_err(|e| {
                let mut message = crate::error::one_line(&e.to_string());
                // DataFusion's wrappers say nothing the message does not.
                while let Some(rest) = ["External error: ", "DataFusion error: "]
                    .iter()
                    .find_map(|p| message.strip_prefix(p))
                {
                    message = rest.to_string();
                }
                DataFusionError::Execution(format!("on executor {}: {message}", self.host))
            })
    }

    fn collect_plan_metrics(&self) -> Vec<datafusion::physical_plan::metrics::MetricsSet> {
        self.inner.collect_plan_metrics()
    }

    fn collect_runtime_stats_reports(
        &self,
    ) -> Vec<ballista_core::serde::protobuf::RuntimeStatsReport> {
        self.inner.collect_runtime_stats_reports()
    }

    fn collect_window_state_reports(
        &self,
    ) -> datafusion::error::Result<Vec<ballista_core::serde::protobuf::WindowStateReport>> {
        self.inner.collect_window_state_reports()
    }

    fn collect_column_stats(&self) -> Vec<ballista_core::serde::protobuf::TaskColumnStats> {
        self.inner.collect_column_stats()
    }
}

/// Adopts the models a job's settings declare (`prefflow.models`) into `models`.
fn adopt(models: &ModelRegistry, config: &SessionConfig) -> datafusion::error::Result<()> {
    let declared = PrefflowOptions::from_config(config.options()).0.models;
    if !declared.is_empty() {
        models.adopt(decode_models(&declared).map_err(DataFusionError::Execution)?);
    }
    Ok(())
}
