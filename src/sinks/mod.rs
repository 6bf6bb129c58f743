//! Training sinks: `COPY (query) TO 'dir' STORED AS dpo | kto | sft | sharegpt | tokenized
//! OPTIONS (...)` writes a dataset trainers load as it is.
//!
//! Every format checks the query's columns before a row is read (a missing or mistyped column
//! is a planning error naming it), drops the rows a trainer cannot use and counts why, splits
//! train / validation by a hash of the prompt (so every row of one prompt lands in the same
//! split, and the split never changes between runs), writes `train.parquet` (and
//! `validation.parquet`; `.jsonl` with `file_format 'jsonl'`) and a dataset card `README.md`
//! into a hidden folder beside the target, and moves it into place only when everything
//! succeeded: a failed run leaves the previous output as it was.
//!
//! Formats read and build Arrow arrays directly (a kept text column is a `take` of the input,
//! a reshaped one is built with list builders), and the output schema is fixed per format, so
//! JSONL and Parquet outputs hold the same types.
//!
//! Each format is a DataFusion `FileFormat` whose writer is a `DataSinkExec` over a
//! [`TrainingSink`]: DataFusion plans and runs the COPY (so `EXPLAIN COPY … STORED AS dpo` shows
//! the sink, and `Engine::context()` / DataFrame users get it too); the sink checks the target,
//! stages, writes the splits and the card, and commits.
//!
//! Every other COPY is a prefflow one too: [`route`] (run by the session's [`CopyRoute`]
//! rule and by `Engine::sql`) wraps DataFusion's formats so their writer is staged (written
//! into a hidden sibling, moved into place when done), sharded, checked against the query's
//! inputs, and for `hf://` pushed by the same sink.
//!
//! The folder, bottom up: `format` (the contract a format implements: a leaf) and `options`;
//! `formats/` (dpo, kto, sft, sharegpt, tokenized, plain, and `rows`, the Arrow helpers they
//! share); `files` (local split files and their writer); `card` and `provenance` (the
//! dataset card); `hub/` (target, client, push, resume: pushes to the Hugging Face Hub);
//! `dataset` (the sink loop over a local folder or a Hub push); `staged` (DataFusion's
//! formats behind prefflow's writer); `route` (the planning door); this file registers the
//! training formats with DataFusion.

pub(crate) mod card;
mod dataset;
mod files;
mod format;
mod formats;
pub(crate) mod hub;
mod options;
pub(crate) mod provenance;
mod route;
mod staged;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::GetExt;
use datafusion::common::Statistics;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::{FileFormat, FileFormatFactory};
use datafusion::datasource::physical_plan::{FileScanConfig, FileSinkConfig, FileSource};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::object_store::{ObjectMeta, ObjectStore};
use datafusion::physical_expr_common::sort_expr::LexRequirement;
use datafusion::physical_plan::ExecutionPlan;

use dataset::copy_inputs;
pub(crate) use dataset::push_staging;
pub use dataset::{PushStaging, TrainingSink};
pub use route::{CopyRoute, route};

pub use card::Stats;

/// The training formats, as written after `STORED AS`.
pub const FORMATS: [&str; 5] = ["dpo", "kto", "sft", "sharegpt", "tokenized"];

/// Registers the formats so `COPY … STORED AS dpo` plans; [`route`] (the [`CopyRoute`] rule
/// of a local session) makes every COPY a prefflow one.
pub fn register(state: &mut datafusion::execution::session_state::SessionState) -> DfResult<()> {
    for name in FORMATS {
        state.register_file_format(Arc::new(TrainingFormatName { name, inputs: None }), false)?;
    }
    Ok(())
}

/// The name after `STORED AS`: DataFusion asks it for the format when it plans the COPY.
#[derive(Debug)]
struct TrainingFormatName {
    name: &'static str,
    /// The files and folders the COPY's query reads, once [`route`]d.
    inputs: Option<Arc<Vec<std::path::PathBuf>>>,
}

impl GetExt for TrainingFormatName {
    fn get_ext(&self) -> String {
        self.name.to_string()
    }
}

/// The session's model registry, which a sink's provenance and formats read.
fn registry_of(
    state: &dyn datafusion::catalog::Session,
    name: &str,
) -> DfResult<Arc<prefflow_udfs::models::ModelRegistry>> {
    state
        .config()
        .get_extension::<prefflow_udfs::models::ModelRegistry>()
        .ok_or_else(|| {
            DataFusionError::Plan(format!(
                "{name}: the session has no model registry; build it with prefflow::build_session"
            ))
        })
}

impl FileFormatFactory for TrainingFormatName {
    fn create(
        &self,
        _state: &dyn datafusion::catalog::Session,
        format_options: &HashMap<String, String>,
    ) -> DfResult<Arc<dyn FileFormat>> {
        Ok(Arc::new(TrainingFormat {
            name: self.name,
            options: format_options.clone(),
            inputs: self.inputs.clone(),
        }))
    }

    fn default(&self) -> Arc<dyn FileFormat> {
        Arc::new(TrainingFormat {
            name: self.name,
            options: HashMap::new(),
            inputs: self.inputs.clone(),
        })
    }
}

/// A training format with its COPY options: written, never read.
#[derive(Debug)]
struct TrainingFormat {
    name: &'static str,
    options: HashMap<String, String>,
    inputs: Option<Arc<Vec<std::path::PathBuf>>>,
}

impl TrainingFormat {
    fn not_readable(&self) -> DataFusionError {
        DataFusionError::Plan(format!(
            "{}: a training format is written by COPY, not read; read its train.parquet / train.jsonl instead",
            self.name
        ))
    }
}

#[async_trait::async_trait]
impl FileFormat for TrainingFormat {
    fn get_ext(&self) -> String {
        self.name.to_string()
    }

    fn get_ext_with_compression(&self, _c: &FileCompressionType) -> DfResult<String> {
        Ok(self.name.to_string())
    }

    fn compression_type(&self) -> Option<FileCompressionType> {
        None
    }

    async fn infer_schema(
        &self,
        _state: &dyn datafusion::catalog::Session,
        _store: &Arc<dyn ObjectStore>,
        _objects: &[ObjectMeta],
    ) -> DfResult<SchemaRef> {
        Err(self.not_readable())
    }

    async fn infer_stats(
        &self,
        _state: &dyn datafusion::catalog::Session,
        _store: &Arc<dyn ObjectStore>,
        _table_schema: SchemaRef,
        _object: &ObjectMeta,
    ) -> DfResult<Statistics> {
        Err(self.not_readable())
    }

    async fn create_physical_plan(
        &self,
        _state: &dyn datafusion::catalog::Session,
        _conf: FileScanConfig,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(self.not_readable())
    }

    async fn create_writer_physical_plan(
        &self,
        input: Arc<dyn ExecutionPlan>,
        state: &dyn datafusion::catalog::Session,
        conf: FileSinkConfig,
        _order: Option<LexRequirement>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !conf.table_partition_cols.is_empty() {
            return Err(DataFusionError::Plan(format!(
                "{}: PARTITIONED BY does not apply to a training format (it writes train / validation splits)",
                self.name
            )));
        }
        let url = &conf.original_url;
        if url.starts_with(crate::hf::PREFIX) {
            // The token, repository and branch are checked before the query starts, so a
            // bad token fails before any model work.
            hub::preflight(url, &self.options).await?;
        }
        let inputs = copy_inputs(state, self.inputs.as_deref().map(|v| v.as_slice()), &input).await;
        let sink = TrainingSink::plan(
            &registry_of(state, self.name)?,
            self.name,
            &self.options,
            url,
            &conf.output_schema,
            inputs,
            push_staging(state.config()),
        )?;
        // The target is checked before the query starts (and again as the sink starts).
        sink.check_target()?;
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    fn file_source(
        &self,
        table_schema: datafusion::datasource::table_schema::TableSchema,
    ) -> Arc<dyn FileSource> {
        // Never used to read (every read path above refuses first); a source is required.
        datafusion::datasource::file_format::json::JsonFormat::default().file_source(table_schema)
    }
}
