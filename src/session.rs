//! The one place that builds a [`SessionContext`]. The CLI, the library API ([`crate::Engine`])
//! and the tests all call [`build_session`], so they can never drift apart.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::catalog::{DynamicFileCatalog, UrlTableFactory};
use datafusion::error::Result;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

pub use prefflow_udfs::models::result_key::CacheMode;
use prefflow_udfs::models::{ModelRegistry, PrefflowOptions};

use crate::datasets::{EXTERNAL_TABLE_TYPES, ExternalTables, PathTables};

/// Settings a caller may choose; everything else is prefflow's fixed default.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Partitions a query runs in; default: the number of CPU cores. Tests fix it so plans
    /// and row order are deterministic.
    pub target_partitions: Option<usize>,
    /// Rows per record batch; default DataFusion's 8192.
    pub batch_size: Option<usize>,
    /// Folder of the result cache; default [`crate::cache::default_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Run on a Ballista cluster: the scheduler's `df://HOST:PORT` (needs the `cluster`
    /// feature).
    pub cluster: Option<String>,
    /// The session's initial `prefflow.cache` mode; default readwrite. Tests that check a
    /// model's outputs turn it off, so the model really runs.
    pub cache: Option<CacheMode>,
    /// More settings, as `SET key = value` would make them (`prefflow.shard`, ...).
    pub settings: Vec<(String, String)>,
}

/// Builds a session with every prefflow function, file format and dataset address.
pub fn build_session(options: &SessionOptions) -> Result<SessionContext> {
    let models = Arc::new(ModelRegistry::new());
    let mut config = base_config(SessionConfig::new(), &models);
    if let Some(n) = options.target_partitions {
        config = config.with_target_partitions(n);
    }
    if let Some(n) = options.batch_size {
        config = config.with_batch_size(n);
    }
    if let Some(mode) = options.cache {
        config = config.set_str("prefflow.cache", mode.as_str());
    }
    for (key, value) in &options.settings {
        config.options_mut().set(key, value)?;
    }
    let dir = options
        .cache_dir
        .clone()
        .unwrap_or_else(crate::cache::default_dir);
    models.set_result_store(Some(Arc::new(crate::cache::RedbStore::new(&dir))));
    // Hub pushes stage their part files beside the result cache (kept there if a push fails).
    config = config.with_extension(Arc::new(crate::sinks::PushStaging(dir.join("push"))));

    let state = build_state(config, &models, options.cluster.is_none())?;
    let state = match &options.cluster {
        None => state,
        Some(url) => on_cluster(state, url, &models)?,
    };

    // Paths and hf:// addresses directly in FROM, like DataFusion's enable_url_table() but
    // recognising .jsonl / .ndjson / .tsv and Hub datasets.
    let paths = Arc::new(PathTables::new());
    let catalogs = Arc::new(DynamicFileCatalog::new(
        Arc::clone(state.catalog_list()),
        Arc::clone(&paths) as Arc<dyn UrlTableFactory>,
    ));
    let state = SessionStateBuilder::new_from_existing(state)
        .with_catalog_list(catalogs)
        .build();
    let ctx = SessionContext::new_with_state(state);
    let local = datafusion::execution::object_store::ObjectStoreUrl::local_filesystem();
    ctx.register_object_store(
        local.as_ref(),
        Arc::new(crate::bom::BomAsSpaces::new(Arc::new(
            datafusion::object_store::local::LocalFileSystem::new(),
        ))),
    );
    paths.session_store().with_state(ctx.state_weak_ref());
    Ok(ctx)
}

/// The state planning for the Ballista scheduler at `url`: statements are planned here and
/// run on the cluster.
#[cfg(feature = "cluster")]
fn on_cluster(
    state: datafusion::execution::session_state::SessionState,
    url: &str,
    models: &Arc<ModelRegistry>,
) -> Result<datafusion::execution::session_state::SessionState> {
    use ballista_core::extension::SessionStateExt;
    let (host, port) = crate::cluster_client::parse_address(url)?;
    crate::cluster_client::check_reachable(&host, port)?;
    let mut state = state.upgrade_for_ballista(format!("http://{host}:{port}"))?;
    state
        .config_mut()
        .options_mut()
        .set("prefflow.client_version", env!("CARGO_PKG_VERSION"))?;
    // Ballista's upgrade resets the function lists to its defaults.
    register_functions(&mut state, models)?;
    Ok(state)
}

#[cfg(not(feature = "cluster"))]
fn on_cluster(
    _state: datafusion::execution::session_state::SessionState,
    _url: &str,
    _models: &Arc<ModelRegistry>,
) -> Result<datafusion::execution::session_state::SessionState> {
    Err(no_cluster().into())
}

/// The error of a cluster command in a build without the `cluster` feature.
#[cfg(not(feature = "cluster"))]
pub(crate) fn no_cluster() -> crate::error::PrefflowError {
    crate::error::PrefflowError::Usage(
        "this prefflow was built without the cluster feature: cargo install --path . --features cluster"
            .to_string(),
    )
}

/// Every prefflow scalar, aggregate and window function.
fn register_functions(
    state: &mut datafusion::execution::session_state::SessionState,
    models: &Arc<ModelRegistry>,
) -> Result<()> {
    use datafusion::execution::FunctionRegistry;
    for udf in prefflow_udfs::scalar_functions(models) {
        state.register_udf(udf)?;
    }
    for udaf in prefflow_udfs::aggregate_functions() {
        state.register_udaf(udaf)?;
    }
    for udwf in prefflow_udfs::window_functions() {
        state.register_udwf(udwf)?;
    }
    Ok(())
}

/// `config` with prefflow's settings and the session's models.
pub(crate) fn base_config(config: SessionConfig, models: &Arc<ModelRegistry>) -> SessionConfig {
    config
        // SHOW TABLES / SHOW COLUMNS / SHOW FUNCTIONS for people exploring a dataset.
        .with_information_schema(true)
        // A folder means every file below it, as `ls -R` would list them (DataFusion reads
        // only the top level by default, silently); globs are expanded with shell rules in
        // datasets::listing_table.
        .set_bool(
            "datafusion.execution.listing_table_ignore_subdirectory",
            false,
        )
        // SET prefflow.max_batch_tokens / prefflow.device / prefflow.threads.
        .with_option_extension(PrefflowOptions::default())
        // The session's models, shared by every model function and query.
        .with_extension(Arc::clone(models))
}

/// A session state with every prefflow function, format, table factory and rule, for
/// `config` (which carries the model registry). The cluster's scheduler builds its planning
/// sessions with it too, and the cluster client its session, without what only a local run
/// can ship (`local`: false): the model-calls node, and the COPY route's sinks (a cluster
/// client routes a COPY itself and runs its sink here; see `Engine::sql`).
pub(crate) fn build_state(
    config: SessionConfig,
    models: &Arc<ModelRegistry>,
    local: bool,
) -> Result<datafusion::execution::session_state::SessionState> {
    // Model calls keep the input's order and count their work (see model_calls): first, so
    // that every later rule sees the order.
    let mut rules: Vec<
        Arc<dyn datafusion::physical_optimizer::PhysicalOptimizerRule + Send + Sync>,
    > = Vec::new();
    if local {
        rules.push(Arc::new(crate::model_calls::ModelCallsRule::new(
            Arc::clone(models),
        )));
    }
    rules.extend(datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules);
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_physical_optimizer_rules(rules)
        // DataFusion's leaf-expression pushdown moves `r.field` below the projection that
        // computes `r` and copies `r`'s expression into each: `SELECT r.value, r.error FROM
        // (SELECT ai_generate(...) AS r ...)` then called the model once per field read
        // (every struct a model function returns: on_error 'record', ai_judge).
        .with_optimizer_rules(
            datafusion::optimizer::Optimizer::new()
                .rules
                .into_iter()
                .filter(|r| {
                    !matches!(
                        r.name(),
                        "extract_leaf_expressions" | "push_down_leaf_projections"
                    )
                })
                .collect(),
        )
        // --shard: filters the input tables (see shard).
        .with_analyzer_rule(Arc::new(crate::shard::ShardRule))
        // Model calls inside aggregates and windows move to a projection below (async_args).
        .with_analyzer_rule(Arc::new(crate::async_args::HoistModelCalls))
        // information_schema.routines describes the model functions too.
        .with_analyzer_rule(Arc::new(crate::routine_docs::RoutineDocs))
        .build();
    if local {
        // Every COPY writes through prefflow: staged, sharded, pushed (see sinks::route).
        state.add_analyzer_rule(Arc::new(crate::sinks::CopyRoute));
    }

    // Schemas are inferred from every record of JSON lines and CSV files, not the first
    // 1,000: a field that first appears later (a `system` prompt only some records have) is
    // a column, not silently dropped.
    state.table_options_mut().json.schema_infer_max_rec = Some(usize::MAX);
    state.table_options_mut().csv.schema_infer_max_rec = Some(usize::MAX);
    register_functions(&mut state, models)?;
    // COPY ... TO 'out.jsonl' / 'out.ndjson': JSON lines, as DataFusion writes for .json.
    for ext in ["jsonl", "ndjson"] {
        state.register_file_format(Arc::new(JsonLines(ext)), false)?;
    }
    // COPY ... STORED AS dpo | kto | sft | sharegpt | tokenized.
    crate::sinks::register(&mut state)?;
    // CREATE EXTERNAL TABLE: hf:// locations and JSONL / NDJSON as names for JSON lines.
    for file_type in EXTERNAL_TABLE_TYPES {
        state
            .table_factories_mut()
            .insert(file_type.to_string(), Arc::new(ExternalTables::default()));
    }

    Ok(state)
}

/// DataFusion's JSON lines format under another file extension.
#[derive(Debug)]
struct JsonLines(&'static str);

impl datafusion::common::GetExt for JsonLines {
    fn get_ext(&self) -> String {
        self.0.to_string()
    }
}

impl datafusion::datasource::file_format::FileFormatFactory for JsonLines {
    fn create(
        &self,
        state: &dyn datafusion::catalog::Session,
        format_options: &std::collections::HashMap<String, String>,
    ) -> datafusion::common::Result<Arc<dyn datafusion::datasource::file_format::FileFormat>> {
        datafusion::datasource::file_format::json::JsonFormatFactory::new()
            .create(state, format_options)
    }

    fn default(&self) -> Arc<dyn datafusion::datasource::file_format::FileFormat> {
        datafusion::datasource::file_format::json::JsonFormatFactory::new().default()
    }
}

/// The model registry of a session built by [`build_session`].
pub fn models(ctx: &SessionContext) -> Arc<ModelRegistry> {
    ctx.state()
        .config()
        .get_extension::<ModelRegistry>()
        .expect("build_session registers the model registry")
}
