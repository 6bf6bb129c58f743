//! The training sink DataFusion runs for `COPY … STORED AS <format>` (and for a plain
//! `hf://` push). One loop — convert a batch, mark its validation rows, hand it to the
//! destination, which writes and checkpoints — runs over two destinations: a local folder
//! (staged in a hidden sibling, its card written and the folder swapped into place at the
//! end) and a Hub push (skipping what an earlier run of the job pushed, committing every
//! `checkpoint_rows`, the card with each commit).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
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
    target: Target,
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
pub(crate) enum Target {
    Local(PathBuf),
    Hub(hub::HubTarget),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Local(p) => write!(f, "{}", p.display()),
            Target::Hub(t) => write!(f, "{}", t.url),
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
        if let Target::Hub(t) = &self.target {
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
            Target::Hub(hub::HubTarget::parse(url, &mut options)?)
        } else {
            hub::take_checkpoint_rows(&mut options)?;
            Target::Local(local_dir(format, url)?)
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
            Target::Hub(_) => format!(", {}", hub::HUB_OPTIONS),
            Target::Local(_) => String::new(),
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
        // (validation_fraction was refused by the plain format's writer plan.)
        let mut raw = raw_options.clone();
        if format == "json" {
            raw.insert("file_format".into(), "jsonl".into());
        }
        Self::plan(registry, format, &raw, url, input, inputs, staging_root)
    }

    /// Checks that writing the dataset destroys nothing prefflow did not write (a Hub target
    /// is checked with the Hub as the push opens).
    pub(crate) fn check_target(&self) -> Result<()> {
        match &self.target {
            Target::Local(target) => crate::target::check(
                target,
                &Output::Dataset(self.format, self.kind.ext()),
                &self.inputs,
            ),
            Target::Hub(_) => Ok(()),
        }
    }

    /// The sink loop: converts each batch, marks its validation rows, and hands them to the
    /// destination (a local folder, or a Hub push, which checkpoints), then commits. A failure
    /// leaves the previous output as it was.
    async fn write(&self, mut stream: SendableRecordBatchStream, device: String) -> Result<u64> {
        let mut fmt = self
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
        let schema = fmt.schema();
        let mut destination: Box<dyn Destination + '_> = match &self.target {
            Target::Local(dir) => Box::new(LocalFolder::open(self, dir, &schema, device)?),
            Target::Hub(t) => Box::new(HubPush::open(self, t.clone(), &schema, device).await?),
        };
        let mut stats = Stats::new(&schema);
        // The card's description of the format: fixed when it was planned.
        let description = fmt.describe();
        while let Some(batch) = stream.next().await {
            let (back, out, in_validation) =
                files::convert_counted(fmt, batch?, &schema, self.validation_fraction, &mut stats)
                    .await?;
            fmt = back;
            if out.num_rows() > 0 {
                destination
                    .write(out, in_validation, &stats, &description)
                    .await?;
            }
        }
        destination.commit(&stats, &description).await?;
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
        let provenance = self.provenance(device).await?;
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

    /// The card's provenance: the statement and the model calls of this run (model
    /// identities may read files the first time: off the runtime).
    async fn provenance(&self, device: &str) -> Result<provenance::Provenance> {
        let registry = Arc::clone(&self.registry);
        let started = self.started.clone();
        let sink_model = self.settings.options.get("model").cloned();
        let device = device.to_string();
        tokio::task::spawn_blocking(move || {
            started.finish(&registry, &device, sink_model.as_deref())
        })
        .await
        .map_err(|e| DataFusionError::Execution(format!("sink task failed: {e}")).into())
    }
}

/// An open destination of the sink loop.
#[async_trait::async_trait]
trait Destination: Send {
    /// Takes one batch of converted rows (those marked by `validation` go to the validation
    /// split); `stats` and `description` are the dataset's so far, for a checkpoint's card.
    async fn write(
        &mut self,
        out: RecordBatch,
        validation: Option<BooleanArray>,
        stats: &Stats,
        description: &str,
    ) -> Result<()>;

    /// After the last batch: writes the card and commits.
    async fn commit(self: Box<Self>, stats: &Stats, description: &str) -> Result<()>;
}

/// A local dataset folder, staged in a hidden sibling and swapped into place by the commit.
struct LocalFolder<'a> {
    sink: &'a TrainingSink,
    target: PathBuf,
    staging: crate::target::Staged,
    files: files::SplitFiles,
    device: String,
}

impl<'a> LocalFolder<'a> {
    fn open(
        sink: &'a TrainingSink,
        target: &Path,
        schema: &SchemaRef,
        device: String,
    ) -> Result<Self> {
        // Again as the sink starts: another writer may have written since it was planned.
        sink.check_target()?;
        let staging = crate::target::Staged::new(temp_sibling(target), target, true)?;
        let files = files::SplitFiles::create(
            staging.path(),
            sink.kind,
            schema,
            sink.validation_fraction > 0.0,
        )?;
        Ok(Self {
            sink,
            target: target.to_path_buf(),
            staging,
            files,
            device,
        })
    }
}

#[async_trait::async_trait]
impl Destination for LocalFolder<'_> {
    async fn write(
        &mut self,
        out: RecordBatch,
        validation: Option<BooleanArray>,
        _stats: &Stats,
        _description: &str,
    ) -> Result<()> {
        self.files.write(out, validation).await
    }

    async fn commit(self: Box<Self>, stats: &Stats, description: &str) -> Result<()> {
        let this = *self;
        let sink = this.sink;
        this.files.finish(stats).await?;
        let provenance = sink.provenance(&this.device).await?;
        let name = this
            .target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dataset".into());
        let files = card::local_files(&sink.settings, stats);
        let text = card::render(&name, &sink.settings, description, stats, &files)
            + &provenance.render(stats.written());
        let path = this.staging.path().join("README.md");
        std::fs::write(&path, text).map_err(|e| PrefflowError::io(&path, e))?;
        this.staging
            .commit(&this.target, &Output::Dataset(sink.format, sink.kind.ext()))
    }
}

/// A push to the Hub: skips the rows an earlier run of this job pushed, and commits the rest
/// in checkpoints.
struct HubPush<'a> {
    sink: &'a TrainingSink,
    push: hub::Push,
    pushed: hub::RowSet,
    /// Part files being written, on a blocking thread while they encode (hence the Option).
    parts: Option<hub::PartWriter>,
    /// Checkpoints wait until every row an earlier run of this job pushed has come again, so
    /// a result that lost some (its input changed) is refused before anything is committed.
    deferred: Vec<Vec<hub::StagedPart>>,
    new_rows: usize,
    device: String,
}

impl<'a> HubPush<'a> {
    /// Checks first (token, repository, branch) and reads what an earlier run pushed.
    async fn open(
        sink: &'a TrainingSink,
        target: hub::HubTarget,
        schema: &SchemaRef,
        device: String,
    ) -> Result<Self> {
        let every = target.checkpoint_rows;
        let push = hub::Push::open(target, sink.job(), sink.kind, &sink.staging_root).await?;
        let pushed = push.pushed(schema).await?;
        let parts = hub::PartWriter::new(&push, Arc::clone(schema), every);
        Ok(Self {
            sink,
            push,
            pushed,
            parts: Some(parts),
            deferred: Vec::new(),
            new_rows: 0,
            device,
        })
    }

    fn changed(&self, what: String) -> PrefflowError {
        PrefflowError::Hub {
            url: self.push.target.url.clone(),
            message: format!(
                "{what} (did its input change?): nothing was committed; push to another branch (@BRANCH) or dataset"
            ),
        }
    }

    async fn checkpoint(
        &mut self,
        parts: Vec<hub::StagedPart>,
        stats: &Stats,
        description: &str,
        last: bool,
    ) -> Result<()> {
        let card = self
            .sink
            .hub_card(&self.push, description, stats, &self.device, &parts, last)
            .await?;
        self.push.commit(parts, card, last).await
    }
}

#[async_trait::async_trait]
impl Destination for HubPush<'_> {
    async fn write(
        &mut self,
        out: RecordBatch,
        validation: Option<BooleanArray>,
        stats: &Stats,
        description: &str,
    ) -> Result<()> {
        // Rows an earlier run of this job pushed are counted in the card, not pushed again.
        let (out, validation) = match self.pushed.new_rows(&out)? {
            None => (out, validation),
            Some(keep) => {
                let mask = match validation {
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
            return Ok(());
        }
        if self.push.finished() {
            return Err(self.changed(
                "this statement was pushed whole before and its result now has rows that push does not".to_string(),
            ));
        }
        self.new_rows += out.num_rows();
        let mut parts = self.parts.take().ok_or_else(|| {
            DataFusionError::Execution("the part writer failed before".to_string())
        })?;
        let (back, written) = tokio::task::spawn_blocking(move || {
            let r = parts.write(&out, validation.as_ref());
            (parts, r)
        })
        .await
        .map_err(|e| DataFusionError::Execution(format!("sink task failed: {e}")))?;
        self.parts = Some(back);
        self.deferred.extend(written?);
        if self.pushed.left() == 0 {
            for checkpoint in std::mem::take(&mut self.deferred) {
                self.checkpoint(checkpoint, stats, description, false)
                    .await?;
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>, stats: &Stats, description: &str) -> Result<()> {
        let last = match self.parts.take() {
            Some(mut parts) => parts.close()?,
            None => Vec::new(),
        };
        if self.pushed.left() > 0 {
            return Err(self.changed(format!(
                "{} rows pushed by an earlier run of this statement are not in its result any more",
                self.pushed.left()
            )));
        }
        for checkpoint in std::mem::take(&mut self.deferred) {
            self.checkpoint(checkpoint, stats, description, false)
                .await?;
        }
        if self.new_rows > 0 || !self.push.finished() {
            self.checkpoint(last, stats, description, true).await?;
        }
        // Pushed whole (now or before: then nothing was committed).
        self.push.clean();
        Ok(())
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
