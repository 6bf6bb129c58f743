//! The training sink DataFusion runs for `COPY … STORED AS <format>` (and for a plain
//! `hf://` push): it checks the target, stages, writes the splits and the card locally or
//! pushes them to the Hub, and commits.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::sink::DataSink;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;

use crate::error::{PrefflowError, Result};
use crate::target::{Output, local_path, temp_sibling};

use super::files::{self, FileKind};
use super::format::Format;
use super::options::{self, COMMON_OPTIONS, Options};
use super::{Stats, card, hub, provenance};

/// A planned training sink: the format (checked against the query's schema), its settings and
/// the target folder. Written once, by [`DataSink::write_all`].
pub struct TrainingSink {
    format: &'static str,
    target: Destination,
    kind: FileKind,
    validation_fraction: f64,
    settings: card::Settings,
    /// What the query and the session's tables read (see [`copy_inputs`]): the output must not touch it.
    inputs: Vec<PathBuf>,
    planned: std::sync::Mutex<Option<Box<dyn Format>>>,
    /// The query's schema (what the sink reads).
    schema: SchemaRef,
    /// The card's provenance as planned: the COPY statement's text (None when planned
    /// without the engine, e.g. through the DataFrame API) and the model calls before it.
    started: provenance::Started,
    registry: Arc<prefflow_udfs::models::ModelRegistry>,
    /// Where Hub pushes stage their part files.
    staging_root: PathBuf,
}

/// Where a sink writes.
pub(crate) enum Destination {
    Local(PathBuf),
    Hub(hub::HubTarget),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Local(p) => write!(f, "{}", p.display()),
            Destination::Hub(t) => write!(f, "{}", t.url),
        }
    }
}

/// Where pushes stage part files: `push/` in the session's cache folder.
#[derive(Debug, Clone)]
pub struct PushStaging(pub PathBuf);

impl std::fmt::Debug for TrainingSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrainingSink({} -> {})", self.format, self.target)
    }
}

impl DisplayAs for TrainingSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "TrainingSink: format={}, target={}, files={}",
            self.format,
            self.target,
            self.kind.ext()
        )?;
        if let Destination::Hub(t) = &self.target {
            write!(f, ", private={}", t.private)?;
            if let Some(n) = t.checkpoint_rows {
                write!(f, ", checkpoint_rows={n}")?;
            }
        }
        if self.validation_fraction > 0.0 {
            write!(f, ", validation_fraction={}", self.validation_fraction)?;
        }
        for (k, v) in &self.settings.options {
            write!(f, ", {k}={v}")?;
        }
        Ok(())
    }
}

impl TrainingSink {
    /// Plans the sink: options and the input schema are checked here, before a row is read.
    pub(crate) fn plan(
        registry: &Arc<prefflow_udfs::models::ModelRegistry>,
        format: &'static str,
        raw_options: &HashMap<String, String>,
        url: &str,
        input: &Schema,
        inputs: Vec<PathBuf>,
        staging_root: PathBuf,
    ) -> Result<Self> {
        let mut options = Options::new(format, raw_options);
        let statement = options.take(provenance::STATEMENT_OPTION);
        let target = if url.starts_with(crate::hf::PREFIX) {
            Destination::Hub(hub::HubTarget::parse(url, &mut options)?)
        } else {
            hub::take_checkpoint_rows(&mut options)?;
            Destination::Local(local_dir(format, url)?)
        };
        let validation_fraction = options.take_f64("validation_fraction")?.unwrap_or(0.0);
        if !(0.0..1.0).contains(&validation_fraction) {
            return Err(options.err(format!(
                "validation_fraction must be in [0, 1), got {validation_fraction}"
            )));
        }
        let kind = match options.take_choice("file_format", &["parquet", "jsonl"])? {
            Some("jsonl") => FileKind::Jsonl,
            _ => FileKind::Parquet,
        };
        let settings = card::Settings {
            format,
            validation_fraction,
            file_ext: kind.ext(),
            options: options.values.clone(),
        };
        let fmt = super::formats::plan_format(registry, format, input, &mut options)?;
        let hub_options = match &target {
            Destination::Hub(_) => format!(", {}", hub::HUB_OPTIONS),
            Destination::Local(_) => String::new(),
        };
        options.finish(&format!(
            "{COMMON_OPTIONS}, {}{hub_options}",
            options::known_options(format)
        ))?;
        Ok(Self {
            format,
            target,
            kind,
            validation_fraction,
            settings,
            inputs,
            planned: std::sync::Mutex::new(Some(fmt)),
            schema: Arc::new(input.clone()),
            started: provenance::Started::new(statement, registry),
            registry: Arc::clone(registry),
            staging_root,
        })
    }

    /// Plans a push of plain rows (`COPY … TO 'hf://…' STORED AS parquet | json`).
    pub(crate) fn plan_plain(
        registry: &Arc<prefflow_udfs::models::ModelRegistry>,
        stored_as: &str,
        raw_options: &HashMap<String, String>,
        url: &str,
        input: &Schema,
        inputs: Vec<PathBuf>,
        staging_root: PathBuf,
    ) -> Result<Self> {
        let format = match stored_as {
            "parquet" => "parquet",
            "json" | "jsonl" | "ndjson" => "json",
            other => {
                return Err(PrefflowError::Target(format!(
                    "COPY TO '{url}': the Hub takes parquet, json or a training format, not {other}"
                )));
            }
        };
        let mut raw = raw_options.clone();
        if raw
            .keys()
            .any(|k| k.trim_start_matches("format.") == "validation_fraction")
        {
            return Err(PrefflowError::Target(format!(
                "COPY TO '{url}' STORED AS {format}: validation_fraction splits by prompt and applies to the training formats (dpo, kto, sft, sharegpt, tokenized)"
            )));
        }
        if format == "json" {
            raw.insert("file_format".into(), "jsonl".into());
        }
        Self::plan(registry, format, &raw, url, input, inputs, staging_root)
    }

    /// Checks that writing the dataset destroys nothing prefflow did not write (a Hub target
    /// is checked with the Hub as the push opens).
    pub(crate) fn check_target(&self) -> Result<()> {
        match &self.target {
            Destination::Local(target) => crate::target::check(
                target,
                &Output::Dataset(self.format, self.kind.ext()),
                &self.inputs,
            ),
            Destination::Hub(_) => Ok(()),
        }
    }

    /// Checks the target, stages, writes splits and card, and commits; a failure leaves the
    /// previous output as it was.
    async fn write(&self, stream: SendableRecordBatchStream, device: String) -> Result<u64> {
        let fmt = self
            .planned
            .lock()
            .map_err(|_| DataFusionError::Execution(format!("{}: sink poisoned", self.format)))?
            .take()
            .ok_or_else(|| {
                DataFusionError::Execution(format!(
                    "{}: a planned COPY runs once; plan it again",
                    self.format
                ))
            })?;
        let target = match &self.target {
            Destination::Local(p) => p,
            Destination::Hub(t) => return self.push(t.clone(), stream, fmt, device).await,
        };
        // Again as the sink starts: another writer may have written since it was planned.
        self.check_target()?;
        let output = Output::Dataset(self.format, self.kind.ext());
        let staging = crate::target::Staged::new(temp_sibling(target), target, true)?;
        let tmp = staging.path();
        let started = self.started.clone();
        let result = async {
            let (stats, fmt) =
                files::write_splits(stream, fmt, tmp, self.kind, self.validation_fraction).await?;
            let registry = Arc::clone(&self.registry);
            let sink_model = self.settings.options.get("model").cloned();
            // Model identities may read files the first time: off the runtime.
            let provenance = tokio::task::spawn_blocking(move || {
                started.finish(&registry, &device, sink_model.as_deref())
            })
            .await
            .map_err(|e| DataFusionError::Execution(format!("sink task failed: {e}")))?;
            let name = target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "dataset".into());
            let files = card::local_files(&self.settings, &stats);
            let text = card::render(&name, &self.settings, &fmt.describe(), &stats, &files)
                + &provenance.render(stats.written());
            let path = tmp.join("README.md");
            std::fs::write(&path, text).map_err(|e| PrefflowError::io(&path, e))?;
            Ok::<_, PrefflowError>(stats)
        }
        .await;
        let stats = result?;
        staging.commit(target, &output)?;
        Ok(stats.written())
    }
}

impl TrainingSink {
    /// What identifies this job on the Hub: a run of the same statement, format and options
    /// resumes what an earlier one pushed; anything else replaces it.
    fn job(&self) -> String {
        let mut h = blake3::Hasher::new();
        let fraction = self.validation_fraction.to_string();
        let fields = [
            self.format,
            self.kind.ext(),
            fraction.as_str(),
            self.started.statement().unwrap_or(""),
        ];
        for field in fields {
            h.update(field.as_bytes());
            h.update(&[0]);
        }
        for (k, v) in &self.settings.options {
            h.update(k.as_bytes());
            h.update(&[1]);
            h.update(v.as_bytes());
            h.update(&[0]);
        }
        h.finalize().to_hex()[..32].to_string()
    }

    /// The Hub card: splits as pushed (one pattern per split that has parts), the stats so far,
    /// and the provenance.
    async fn hub_card(
        &self,
        push: &hub::Push,
        description: &str,
        stats: &Stats,
        device: &str,
        new_parts: &[hub::StagedPart],
        last: bool,
    ) -> Result<String> {
        let target = &push.target;
        let files: Vec<(&str, String)> = ["train", "validation"]
            .into_iter()
            .filter(|split| {
                push.manifest.parts.iter().any(|p| p.split == *split)
                    || new_parts.iter().any(|p| p.split == *split)
            })
            .map(|split| (split, target.split_pattern(split, self.kind)))
            .collect();
        let registry = Arc::clone(&self.registry);
        let started = self.started.clone();
        let sink_model = self.settings.options.get("model").cloned();
        let device = device.to_string();
        let provenance = tokio::task::spawn_blocking(move || {
            started.finish(&registry, &device, sink_model.as_deref())
        })
        .await
        .map_err(|e| DataFusionError::Execution(format!("sink task failed: {e}")))?;
        let mut text = card::render(&target.name, &self.settings, description, stats, &files);
        if !last {
            let pushed = push.pushed_rows() + new_parts.iter().map(|p| p.rows).sum::<u64>();
            text.push_str(&format!(
                "\n## Progress\n\nA checkpoint of a running job: {pushed} rows pushed so far; the counts above are of the rows made so far.\n"
            ));
        }
        text.push_str(&provenance.render(stats.written()));
        Ok(text)
    }

    /// Pushes to the Hub: checks first, skips the rows an earlier run of this job pushed, and
    /// commits the rest in checkpoints.
    async fn push(
        &self,
        target: hub::HubTarget,
        mut stream: SendableRecordBatchStream,
        mut fmt: Box<dyn Format>,
        device: String,
    ) -> Result<u64> {
        let every = target.checkpoint_rows;
        let mut push = hub::Push::open(target, self.job(), self.kind, &self.staging_root).await?;
        let schema = fmt.schema();
        let mut pushed = push.pushed(&schema).await?;
        let mut stats = Stats::new(&schema);
        let mut parts = hub::PartWriter::new(&push, Arc::clone(&schema), every);
        let validation_fraction = self.validation_fraction;
        let mut new_rows = 0usize;
        // Checkpoints wait until every row an earlier run of this job pushed has come again, so
        // a result that lost some (its input changed) is refused before anything is committed.
        let mut deferred: Vec<Vec<hub::StagedPart>> = Vec::new();
        let changed = |url: &str, what: String| PrefflowError::Hub {
            url: url.to_string(),
            message: format!(
                "{what} (did its input change?): nothing was committed; push to another branch (@BRANCH) or dataset"
            ),
        };
        while let Some(batch) = stream.next().await {
            let (back, out, in_validation) =
                files::convert_counted(fmt, batch?, &schema, validation_fraction, &mut stats)
                    .await?;
            fmt = back;
            // Rows an earlier run of this job pushed are counted in the card, not pushed again.
            let (out, in_validation) = match pushed.new_rows(&out)? {
                None => (out, in_validation),
                Some(keep) => {
                    let mask = match in_validation {
                        Some(m) => Some(
                            datafusion::arrow::compute::filter(&m, &keep)
                                .map_err(DataFusionError::from)?
                                .as_boolean()
                                .clone(),
                        ),
                        None => None,
                    };
                    (
                        filter_record_batch(&out, &keep).map_err(DataFusionError::from)?,
                        mask,
                    )
                }
            };
            if out.num_rows() == 0 {
                continue;
            }
            if push.finished() {
                return Err(changed(
                    &push.target.url,
                    "this statement was pushed whole before and its result now has rows that push does not".to_string(),
                ));
            }
            new_rows += out.num_rows();
            let (back, written) = tokio::task::spawn_blocking(move || {
                let r = parts.write(&out, in_validation.as_ref());
                (parts, r)
            })
            .await
            .map_err(|e| DataFusionError::Execution(format!("sink task failed: {e}")))?;
            parts = back;
            deferred.extend(written?);
            if pushed.left() == 0 {
                for checkpoint in std::mem::take(&mut deferred) {
                    let card = self
                        .hub_card(&push, &fmt.describe(), &stats, &device, &checkpoint, false)
                        .await?;
                    push.commit(checkpoint, card, false).await?;
                }
            }
        }
        let last = parts.close()?;
        if pushed.left() > 0 {
            return Err(changed(
                &push.target.url,
                format!(
                    "{} rows pushed by an earlier run of this statement are not in its result any more",
                    pushed.left()
                ),
            ));
        }
        for checkpoint in deferred {
            let card = self
                .hub_card(&push, &fmt.describe(), &stats, &device, &checkpoint, false)
                .await?;
            push.commit(checkpoint, card, false).await?;
        }
        if new_rows == 0 && push.finished() {
            // The job was pushed whole before: nothing to commit.
            push.clean();
            return Ok(stats.written());
        }
        let card = self
            .hub_card(&push, &fmt.describe(), &stats, &device, &last, true)
            .await?;
        push.commit(last, card, true).await?;
        push.clean();
        Ok(stats.written())
    }
}

#[async_trait::async_trait]
impl DataSink for TrainingSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        data: SendableRecordBatchStream,
        context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let device = prefflow_udfs::models::settings::PrefflowOptions::from_config(
            context.session_config().options(),
        )
        .0
        .device;
        Ok(self.write(data, device).await?)
    }
}

/// The target folder; a file name (`x.parquet`) is refused, since a format writes a folder.
pub(crate) fn local_dir(format: &str, url: &str) -> Result<PathBuf> {
    let path = local_path(url).ok_or_else(|| {
        DataFusionError::Plan(format!(
            "{format}: training sinks write to a local folder, got '{url}'"
        ))
    })?;
    if let Some(ext) = path.extension().and_then(|e| e.to_str())
        && ["parquet", "jsonl", "json", "ndjson", "csv"].contains(&ext)
    {
        return Err(DataFusionError::Plan(format!(
            "{format}: the target is a folder (train.parquet, validation.parquet and README.md go in it), not a .{ext} file: '{url}'"
        ))
        .into());
    }
    Ok(path)
}

/// Where the session stages Hub pushes.
pub(crate) fn push_staging(config: &datafusion::prelude::SessionConfig) -> PathBuf {
    config
        .get_extension::<PushStaging>()
        .map(|p| p.0.clone())
        .unwrap_or_else(|| crate::cache::default_dir().join("push"))
}

/// What a COPY must not write into, as its writer is planned: the files and folders its query
/// reads (`logical`, from [`route`], and the files of the physical plan) and the local folders
/// the session's tables read (`CREATE EXTERNAL TABLE … LOCATION 'dir/'`), inputs of every
/// later query (the next read would count the output).
pub(crate) async fn copy_inputs(
    state: &dyn datafusion::catalog::Session,
    logical: Option<&[PathBuf]>,
    input: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = logical.map(|l| l.to_vec()).unwrap_or_default();
    out.extend(physical_inputs(input));
    let Some(state) = state.as_any().downcast_ref::<SessionState>() else {
        return out;
    };
    let catalogs = state.catalog_list();
    for catalog in catalogs
        .catalog_names()
        .iter()
        .filter_map(|c| catalogs.catalog(c))
    {
        for schema in catalog
            .schema_names()
            .iter()
            .filter_map(|s| catalog.schema(s))
        {
            for name in schema.table_names() {
                let Ok(Some(table)) = schema.table(&name).await else {
                    continue;
                };
                if let Some(listing) = table
                    .as_ref()
                    .downcast_ref::<datafusion::datasource::listing::ListingTable>()
                {
                    out.extend(
                        listing
                            .table_paths()
                            .iter()
                            .filter_map(|u| u.get_url().to_file_path().ok())
                            .filter(|p| p.is_dir()),
                    );
                }
            }
        }
    }
    out
}

/// Local files an executable plan reads.
fn physical_inputs(plan: &Arc<dyn ExecutionPlan>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let _ = plan.apply(|node| {
        if let Some(source) = node.downcast_ref::<DataSourceExec>()
            && let Some(scan) = source.data_source().downcast_ref::<FileScanConfig>()
        {
            for group in &scan.file_groups {
                for file in group.iter() {
                    out.push(PathBuf::from("/").join(file.object_meta.location.as_ref()));
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}
