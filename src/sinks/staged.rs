//! DataFusion's own file formats (parquet, json, csv, arrow, jsonl / ndjson, …) as a prefflow
//! COPY writes them. [`super::route`] wraps the format of every plain COPY in a
//! [`StagedFormatFactory`]; its writer plan checks the target once, against the query's inputs
//! and the session's table folders, and returns either
//! - for a local target, DataFusion's own writer pointed at a hidden sibling, under a
//!   [`StagedWriteExec`] that moves the output into place only after the writer finished
//!   (a failed or cancelled run leaves the previous file or folder as it was), or
//! - for `hf://datasets/ORG/NAME`, after the Hub preflight, a [`TrainingSink`] pushing the
//!   rows as they are.
//!
//! Reading is DataFusion's own: every other method is the inner format's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{GetExt, Statistics};
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::{FileFormat, FileFormatFactory};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::physical_plan::{
    FileOutputMode, FileScanConfig, FileSinkConfig, FileSource,
};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::object_store::{ObjectMeta, ObjectStore};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr_common::sort_expr::LexRequirement;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use prefflow_udfs::models::remote::redact_uri;

use crate::error::PrefflowError;
use crate::target::{Output, Staged, local_path, temp_sibling};

use super::options::Options;
use super::{TrainingSink, copy_inputs, hub, provenance, push_staging, registry_of};

/// Options only a push to the Hub takes.
const HUB_ONLY: [&str; 2] = ["private", "commit_message"];

/// The options prefflow reads from a plain COPY (the others are the DataFusion format's):
/// `checkpoint_rows` is taken by a local file too (written once, atomically), so one query
/// file serves a local and a Hub target.
fn is_prefflow_option(key: &str) -> bool {
    let key = key.trim_start_matches("format.");
    key == provenance::STATEMENT_OPTION
        || key == "validation_fraction"
        || key == "checkpoint_rows"
        || HUB_ONLY.contains(&key)
}

/// A DataFusion file format factory, with the input files of the COPY it writes.
#[derive(Debug)]
pub(crate) struct StagedFormatFactory {
    inner: Arc<dyn FileFormatFactory>,
    inputs: Arc<Vec<PathBuf>>,
}

impl StagedFormatFactory {
    pub(crate) fn new(inner: Arc<dyn FileFormatFactory>, inputs: Arc<Vec<PathBuf>>) -> Self {
        Self { inner, inputs }
    }
}

impl GetExt for StagedFormatFactory {
    fn get_ext(&self) -> String {
        self.inner.get_ext()
    }
}

impl FileFormatFactory for StagedFormatFactory {
    fn create(
        &self,
        state: &dyn datafusion::catalog::Session,
        format_options: &HashMap<String, String>,
    ) -> DfResult<Arc<dyn FileFormat>> {
        let theirs: HashMap<String, String> = format_options
            .iter()
            .filter(|(k, _)| !is_prefflow_option(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Arc::new(StagedFormat {
            ext: self.inner.get_ext(),
            inner: self.inner.create(state, &theirs)?,
            options: format_options.clone(),
            inputs: Arc::clone(&self.inputs),
        }))
    }

    fn default(&self) -> Arc<dyn FileFormat> {
        Arc::new(StagedFormat {
            ext: self.inner.get_ext(),
            inner: self.inner.default(),
            options: HashMap::new(),
            inputs: Arc::clone(&self.inputs),
        })
    }
}

/// A DataFusion file format whose writer is staged (or pushed to the Hub).
#[derive(Debug)]
struct StagedFormat {
    /// The name after `STORED AS` (`jsonl` for DataFusion's JSON under that name).
    ext: String,
    inner: Arc<dyn FileFormat>,
    /// Every option of the COPY, prefflow's too.
    options: HashMap<String, String>,
    inputs: Arc<Vec<PathBuf>>,
}

impl StagedFormat {
    fn given(&self, name: &str) -> bool {
        self.options
            .keys()
            .any(|k| k.trim_start_matches("format.") == name)
    }
}

#[async_trait::async_trait]
impl FileFormat for StagedFormat {
    fn get_ext(&self) -> String {
        self.inner.get_ext()
    }

    fn get_ext_with_compression(&self, c: &FileCompressionType) -> DfResult<String> {
        self.inner.get_ext_with_compression(c)
    }

    fn compression_type(&self) -> Option<FileCompressionType> {
        self.inner.compression_type()
    }

    async fn infer_schema(
        &self,
        state: &dyn datafusion::catalog::Session,
        store: &Arc<dyn ObjectStore>,
        objects: &[ObjectMeta],
    ) -> DfResult<SchemaRef> {
        self.inner.infer_schema(state, store, objects).await
    }

    async fn infer_stats(
        &self,
        state: &dyn datafusion::catalog::Session,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> DfResult<Statistics> {
        self.inner
            .infer_stats(state, store, table_schema, object)
            .await
    }

    async fn create_physical_plan(
        &self,
        state: &dyn datafusion::catalog::Session,
        conf: FileScanConfig,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.inner.create_physical_plan(state, conf).await
    }

    async fn create_writer_physical_plan(
        &self,
        input: Arc<dyn ExecutionPlan>,
        state: &dyn datafusion::catalog::Session,
        conf: FileSinkConfig,
        order: Option<LexRequirement>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let url = conf.original_url.clone();
        let refuse = |m: String| -> DataFusionError { PrefflowError::Target(m).into() };
        if self.given("validation_fraction") {
            return Err(refuse(format!(
                "COPY TO '{url}' STORED AS {}: validation_fraction splits by prompt and applies to the training formats (dpo, kto, sft, sharegpt, tokenized)",
                self.ext
            )));
        }
        let inputs = copy_inputs(state, Some(&self.inputs), &input).await;
        if url.starts_with(crate::hf::PREFIX) {
            // The token, repository and branch are checked before the query starts, so a
            // bad token fails before any model work.
            hub::preflight(&url, &self.options).await?;
            let sink = TrainingSink::plan_plain(
                &registry_of(state, &self.ext)?,
                &self.ext,
                &self.options,
                &url,
                &conf.output_schema,
                inputs,
                push_staging(state.config()),
            )?;
            return Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), order)));
        }
        if let Some(name) = HUB_ONLY.into_iter().find(|n| self.given(n)) {
            return Err(refuse(format!(
                "COPY TO '{url}': {name} applies to a push to hf://datasets/ORG/NAME, not to a local file"
            )));
        }
        let mut options = Options::new("COPY", &self.options);
        hub::take_checkpoint_rows(&mut options)?;
        let Some(target) = local_path(&url) else {
            let scheme = url.split("://").next().unwrap_or_default();
            return Err(refuse(format!(
                "COPY TO '{}': writing to {scheme}:// is not supported; write to a local path or an hf://datasets/ORG/NAME dataset",
                redact_uri(&url)
            )));
        };
        // DataFusion writes one file for a name with an ending, else a folder of part files.
        let parts = !conf.table_partition_cols.is_empty()
            || match conf.file_output_mode {
                FileOutputMode::SingleFile => false,
                FileOutputMode::Directory => true,
                FileOutputMode::Automatic => url.ends_with('/') || target.extension().is_none(),
            };
        let kind = if parts {
            Output::Parts(self.ext.clone())
        } else {
            Output::File
        };
        crate::target::check(&target, &kind, &inputs)?;
        let tmp = temp_sibling(&target);
        let mut staged = conf;
        let mut tmp_url = tmp.display().to_string();
        if parts {
            tmp_url.push('/');
        }
        staged.table_paths = vec![ListingTableUrl::parse(&tmp_url)?];
        staged.file_output_mode = if parts {
            FileOutputMode::Directory
        } else {
            FileOutputMode::SingleFile
        };
        let writer = self
            .inner
            .create_writer_physical_plan(input, state, staged, order)
            .await?;
        Ok(Arc::new(StagedWriteExec::new(writer, target, tmp, kind)))
    }

    fn file_source(
        &self,
        table_schema: datafusion::datasource::table_schema::TableSchema,
    ) -> Arc<dyn FileSource> {
        self.inner.file_source(table_schema)
    }
}

/// DataFusion's writer into a hidden sibling of the target, moved into place when it
/// finished: the previous file or folder stays as it was until then.
#[derive(Debug)]
pub(crate) struct StagedWriteExec {
    writer: Arc<dyn ExecutionPlan>,
    target: PathBuf,
    tmp: PathBuf,
    kind: Output,
}

impl StagedWriteExec {
    fn new(writer: Arc<dyn ExecutionPlan>, target: PathBuf, tmp: PathBuf, kind: Output) -> Self {
        Self {
            writer,
            target,
            tmp,
            kind,
        }
    }
}

impl DisplayAs for StagedWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let what = match &self.kind {
            Output::File => "file".to_string(),
            Output::Parts(ext) => format!("folder of .{ext} parts"),
            Output::Dataset(format, _) => format!("{format} dataset"),
        };
        write!(
            f,
            "StagedWriteExec: target={}, writes={what}, staged in a hidden sibling and moved into place when written",
            self.target.display()
        )
    }
}

impl ExecutionPlan for StagedWriteExec {
    fn name(&self) -> &str {
        "StagedWriteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.writer.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.writer]
    }

    // The writer's one count row comes up as it is: no repartition between.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [writer] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("StagedWriteExec has one child".to_string()))?;
        Ok(Arc::new(Self::new(
            writer,
            self.target.clone(),
            self.tmp.clone(),
            self.kind.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let folder = !matches!(self.kind, Output::File);
        let staging = Staged::new(self.tmp.clone(), &self.target, folder)?;
        let written = self.writer.execute(partition, context)?;
        let schema = written.schema();
        let (target, kind) = (self.target.clone(), self.kind.clone());
        // The count row comes after the commit: a run that answered wrote its output.
        let done = futures::stream::once(async move {
            let rows: Vec<_> = written.try_collect().await?;
            staging.commit(&target, &kind)?;
            Ok::<_, DataFusionError>(rows)
        })
        .map(|r| match r {
            Ok(rows) => futures::stream::iter(rows.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => futures::stream::iter(vec![Err(e)]),
        })
        .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, done)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.writer.metrics()
    }
}
