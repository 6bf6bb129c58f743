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

pub(crate) mod card;
mod dpo;
pub(crate) mod hub;
mod kto;
mod plain;
pub(crate) mod provenance;
mod rows;
mod sft;
mod sharegpt;
mod tokenized;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, UInt32Array};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::GetExt;
use datafusion::common::Statistics;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::{FileFormat, FileFormatFactory};
use datafusion::datasource::physical_plan::{FileScanConfig, FileSinkConfig, FileSource};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::CopyTo;
use datafusion::object_store::{ObjectMeta, ObjectStore};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::physical_expr_common::sort_expr::LexRequirement;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;

use crate::error::{PrefflowError, Result};
use crate::target::{Output, local_path, plan_inputs, temp_sibling};

pub use card::Stats;

/// The training formats, as written after `STORED AS`.
pub const FORMATS: [&str; 5] = ["dpo", "kto", "sft", "sharegpt", "tokenized"];

/// Registers the formats so `COPY … STORED AS dpo` plans; [`crate::Engine`] runs them.
pub fn register(state: &mut datafusion::execution::session_state::SessionState) -> DfResult<()> {
    for name in FORMATS {
        state.register_file_format(Arc::new(TrainingFormatName(name)), false)?;
    }
    Ok(())
}

/// The training format a planned COPY writes, if it is one.
pub fn format_of(copy: &CopyTo) -> Option<&'static str> {
    let ext = copy.file_type.get_ext();
    FORMATS.into_iter().find(|f| *f == ext)
}

/// One training format: checks the input schema at planning time, then turns input batches
/// into output columns (and reasons for the rows it drops).
pub(crate) trait Format: Send {
    /// The schema of the written files.
    fn schema(&self) -> SchemaRef;
    /// The written columns for one input batch, with the input row of each written row.
    fn convert(&mut self, batch: &RecordBatch) -> Result<Converted>;
    /// Lines for the card describing the format and how to load it.
    fn describe(&self) -> String;
}

/// A format's output for one input batch.
pub(crate) struct Converted {
    /// The written columns, in the order of [`Format::schema`].
    pub columns: Vec<ArrayRef>,
    /// For each written row, the input row it came from: its split follows that row's prompt.
    pub sources: Vec<u32>,
    /// Why each dropped input row was dropped, for the card.
    pub dropped: Vec<&'static str>,
}

/// The input rows a format keeps (in output order; one may repeat) and the reasons of those
/// it drops.
#[derive(Default)]
pub(crate) struct Picks {
    pub rows: Vec<u32>,
    pub dropped: Vec<&'static str>,
}

impl Picks {
    pub fn keep(&mut self, i: usize) {
        self.rows.push(i as u32);
    }

    pub fn drop(&mut self, reason: &'static str) {
        self.dropped.push(reason);
    }

    /// The kept rows as `take` indices.
    pub fn indices(&self) -> UInt32Array {
        UInt32Array::from(self.rows.clone())
    }

    /// The written columns: the kept rows' prompt_id first where the format writes one (every
    /// format puts it first), then the format's own `columns` in schema order.
    pub fn into_converted(
        self,
        batch: &RecordBatch,
        format: &str,
        schema: &SchemaRef,
        columns: impl IntoIterator<Item = ArrayRef>,
    ) -> Result<Converted> {
        let mut all = Vec::with_capacity(schema.fields().len());
        if let Some(field) = schema.fields().first().filter(|f| f.name() == "prompt_id") {
            all.push(take_column(batch, format, field, &self.indices())?);
        }
        all.extend(columns);
        Ok(Converted {
            columns: all,
            sources: self.rows,
            dropped: self.dropped,
        })
    }
}

/// The kept rows of an input column, cast to its written type.
pub(crate) fn take_column(
    batch: &RecordBatch,
    format: &str,
    field: &datafusion::arrow::datatypes::Field,
    rows: &UInt32Array,
) -> Result<ArrayRef> {
    let a = rows::cast_column(batch, format, field.name(), field.data_type())?;
    Ok(datafusion::arrow::compute::take(&a, rows, None).map_err(DataFusionError::from)?)
}

/// Options every format takes; the rest are the format's own (taken out as they are read,
/// so a leftover one is an unknown option).
pub(crate) struct Options {
    format: &'static str,
    values: BTreeMap<String, String>,
}

impl Options {
    /// DataFusion prefixes unqualified COPY options with `format.`; the sinks' are all plain.
    fn new(format: &'static str, raw: &HashMap<String, String>) -> Self {
        let values = raw
            .iter()
            .map(|(k, v)| {
                (
                    k.strip_prefix("format.").unwrap_or(k).to_string(),
                    v.clone(),
                )
            })
            .collect();
        Self { format, values }
    }

    /// A planning error naming the format.
    pub(crate) fn err(&self, message: impl std::fmt::Display) -> PrefflowError {
        DataFusionError::Plan(format!("{}: {message}", self.format)).into()
    }

    pub(crate) fn take(&mut self, key: &str) -> Option<String> {
        self.values.remove(key)
    }

    pub(crate) fn take_f64(&mut self, key: &str) -> Result<Option<f64>> {
        self.take(key)
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| self.err(format!("option {key} must be a number, got '{v}'")))
            })
            .transpose()
    }

    pub(crate) fn take_bool(&mut self, key: &str) -> Result<Option<bool>> {
        self.take(key)
            .map(|v| match v.trim().to_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(self.err(format!("option {key} must be true or false, got '{v}'"))),
            })
            .transpose()
    }

    pub(crate) fn take_choice(
        &mut self,
        key: &str,
        choices: &[&'static str],
    ) -> Result<Option<&'static str>> {
        self.take(key)
            .map(|v| {
                let v = v.trim().to_lowercase();
                choices.iter().copied().find(|c| *c == v).ok_or_else(|| {
                    self.err(format!(
                        "option {key} must be one of {}, got '{v}'",
                        choices.join(", ")
                    ))
                })
            })
            .transpose()
    }

    /// Everything not read by now is unknown.
    fn finish(self, known: &str) -> Result<()> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(k) => Err(self.err(format!("unknown option '{k}' (known: {known})"))),
        }
    }
}

/// Output file kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Parquet,
    Jsonl,
}

impl FileKind {
    fn ext(self) -> &'static str {
        match self {
            FileKind::Parquet => "parquet",
            FileKind::Jsonl => "jsonl",
        }
    }
}

/// A split's open output file.
enum Writer {
    Parquet(ArrowWriter<File>),
    Jsonl(LineDelimitedWriter<File>),
}

impl Writer {
    fn create(path: &Path, kind: FileKind, schema: &SchemaRef) -> Result<Self> {
        let file = File::create(path).map_err(|e| PrefflowError::io(path, e))?;
        Ok(match kind {
            FileKind::Parquet => {
                // Small row groups keep the writer's buffer, and so a streaming run's memory,
                // bounded however large the dataset.
                let props = crate::output::parquet_properties()
                    .set_max_row_group_row_count(Some(16 * 1024))
                    .build();
                Writer::Parquet(
                    ArrowWriter::try_new(file, Arc::clone(schema), Some(props))
                        .map_err(DataFusionError::from)?,
                )
            }
            FileKind::Jsonl => Writer::Jsonl(LineDelimitedWriter::new(file)),
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match self {
            Writer::Parquet(w) => w.write(batch).map_err(DataFusionError::from)?,
            Writer::Jsonl(w) => w.write(batch).map_err(DataFusionError::from)?,
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        match self {
            Writer::Parquet(w) => {
                w.close().map_err(DataFusionError::from)?;
            }
            Writer::Jsonl(mut w) => w.finish().map_err(DataFusionError::from)?,
        }
        Ok(())
    }
}

/// The open split files.
struct Splits {
    train: Writer,
    validation: Option<Writer>,
}

impl Splits {
    fn create(dir: &Path, kind: FileKind, schema: &SchemaRef, validation: bool) -> Result<Self> {
        let open = |split: &str| {
            Writer::create(&dir.join(format!("{split}.{}", kind.ext())), kind, schema)
        };
        Ok(Self {
            train: open("train")?,
            validation: if validation {
                Some(open("validation")?)
            } else {
                None
            },
        })
    }

    /// Writes a batch's rows, those marked by `validation` to the validation split.
    fn write(&mut self, out: &RecordBatch, validation: Option<&BooleanArray>) -> Result<()> {
        for (split, rows) in by_split(out, validation)? {
            match (split, self.validation.as_mut()) {
                ("validation", Some(w)) => w.write(&rows)?,
                _ => self.train.write(&rows)?,
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        self.train.finish()?;
        if let Some(w) = self.validation {
            w.finish()?;
        }
        Ok(())
    }
}

/// A batch's rows per split, those marked by `validation` in the validation split; a split
/// with no rows is left out.
pub(crate) fn by_split(
    out: &RecordBatch,
    validation: Option<&BooleanArray>,
) -> Result<Vec<(&'static str, RecordBatch)>> {
    let Some(mask) = validation else {
        return Ok(vec![("train", out.clone())]);
    };
    let not = datafusion::arrow::compute::not(mask).map_err(DataFusionError::from)?;
    let mut splits = Vec::with_capacity(2);
    for (split, m) in [("train", &not), ("validation", mask)] {
        let rows = filter_record_batch(out, m).map_err(DataFusionError::from)?;
        if rows.num_rows() > 0 {
            splits.push((split, rows));
        }
    }
    Ok(splits)
}

/// Builds the format for `name` from the query's schema and the COPY options, checking both.
fn plan_format(
    registry: &prefflow_udfs::models::ModelRegistry,
    name: &'static str,
    input: &Schema,
    options: &mut Options,
) -> Result<Box<dyn Format>> {
    Ok(match name {
        "dpo" => Box::new(dpo::Dpo::plan(input, options)?),
        "kto" => Box::new(kto::Kto::plan(input, options)?),
        "sft" => Box::new(sft::Sft::plan(input, options)?),
        "sharegpt" => Box::new(sharegpt::ShareGpt::plan(input, options)?),
        "tokenized" => Box::new(tokenized::Tokenized::plan(registry, input, options)?),
        "parquet" | "json" => Box::new(plain::Plain::plan(name, input)),
        other => return Err(options.err(format!("unknown training format {other}"))),
    })
}

const COMMON_OPTIONS: &str = "validation_fraction, file_format, checkpoint_rows";

/// Checks a `COPY … STORED AS <format>` before anything runs: the target, against `inputs`
/// (what the query and the session's tables read, so a target inside an input folder is
/// refused too).
pub fn check_copy(copy: &CopyTo, format: &'static str, inputs: &[PathBuf]) -> Result<()> {
    if copy.output_url.starts_with(crate::hf::PREFIX) {
        // Checked with the Hub when the sink starts, before its input runs.
        return Ok(());
    }
    let target = local_dir(format, &copy.output_url)?;
    let ext = Options::new(format, &copy.options)
        .take_choice("file_format", &["parquet", "jsonl"])?
        .unwrap_or("parquet");
    crate::target::check(&target, &Output::Dataset(format, ext), inputs)
}

/// A planned training sink: the format (checked against the query's schema), its settings and
/// the target folder. Written once, by [`DataSink::write_all`].
pub struct TrainingSink {
    format: &'static str,
    target: Destination,
    kind: FileKind,
    validation_fraction: f64,
    settings: card::Settings,
    /// Input files found in the physical plan, which the output must not touch.
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
enum Destination {
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
    fn plan(
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
        let fmt = plan_format(registry, format, input, &mut options)?;
        let hub_options = match &target {
            Destination::Hub(_) => format!(", {}", hub::HUB_OPTIONS),
            Destination::Local(_) => String::new(),
        };
        options.finish(&format!(
            "{COMMON_OPTIONS}, {}{hub_options}",
            known_options(format)
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
        copy: &CopyTo,
        staging_root: PathBuf,
    ) -> Result<Self> {
        let format = match copy.file_type.get_ext().as_str() {
            "parquet" => "parquet",
            "json" => "json",
            other => {
                return Err(PrefflowError::Target(format!(
                    "COPY TO '{}': the Hub takes parquet, json or a training format, not {other}",
                    copy.output_url
                )));
            }
        };
        let mut raw = copy.options.clone();
        if raw
            .keys()
            .any(|k| k.trim_start_matches("format.") == "validation_fraction")
        {
            return Err(PrefflowError::Target(format!(
                "COPY TO '{}' STORED AS {format}: validation_fraction splits by prompt and applies to the training formats (dpo, kto, sft, sharegpt, tokenized)",
                copy.output_url
            )));
        }
        if format == "json" {
            raw.insert("file_format".into(), "jsonl".into());
        }
        let copy = CopyTo {
            options: raw,
            ..copy.clone()
        };
        Self::plan_copy(registry, &copy, format, staging_root)
    }

    /// Plans the sink of a `COPY … STORED AS <format>` outside DataFusion's physical planning
    /// (the engine's path on a cluster, where the query runs remotely and the sink here).
    pub(crate) fn plan_copy(
        registry: &Arc<prefflow_udfs::models::ModelRegistry>,
        copy: &CopyTo,
        format: &'static str,
        staging_root: PathBuf,
    ) -> Result<Self> {
        let schema = copy.input.schema().as_arrow().clone();
        Self::plan(
            registry,
            format,
            &copy.options,
            &copy.output_url,
            &schema,
            plan_inputs(&copy.input),
            staging_root,
        )
    }

    /// Runs a planned sink over `stream` (the engine's path for plain pushes).
    pub(crate) async fn run(
        &self,
        stream: SendableRecordBatchStream,
        device: String,
    ) -> Result<u64> {
        self.write(stream, device).await
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
        let output = Output::Dataset(self.format, self.kind.ext());
        crate::target::check(target, &output, &self.inputs)?;
        let staging = crate::target::Staged::new(temp_sibling(target), target, true)?;
        let tmp = staging.path();
        let started = self.started.clone();
        let result = async {
            let (stats, fmt) =
                write_splits(stream, fmt, tmp, self.kind, self.validation_fraction).await?;
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
                convert_counted(fmt, batch?, &schema, validation_fraction, &mut stats).await?;
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

fn known_options(format: &str) -> &'static str {
    match format {
        "dpo" => "style, min_margin",
        "kto" => "style",
        "sft" => "style",
        "sharegpt" | "parquet" | "json" => "(none)",
        _ => "model, max_length, chat",
    }
}

/// The target folder; a file name (`x.parquet`) is refused, since a format writes a folder.
fn local_dir(format: &str, url: &str) -> Result<PathBuf> {
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

/// Reads the query's batches, converts their rows, and writes each to its split; hands the
/// format back for the card.
async fn write_splits(
    mut stream: SendableRecordBatchStream,
    mut fmt: Box<dyn Format>,
    dir: &Path,
    kind: FileKind,
    validation_fraction: f64,
) -> Result<(Stats, Box<dyn Format>)> {
    let schema = fmt.schema();
    let mut stats = Stats::new(&schema);
    let splits = Splits::create(dir, kind, &schema, validation_fraction > 0.0)?;
    // Encoding the files runs on its own thread, so it overlaps converting the next batch
    // (the sink's two halves take about the same time) and stays off the async runtime.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(RecordBatch, Option<BooleanArray>)>(2);
    let writer = tokio::task::spawn_blocking(move || {
        let mut splits = splits;
        while let Some((out, mask)) = rx.blocking_recv() {
            splits.write(&out, mask.as_ref())?;
        }
        splits.finish()
    });
    let sent = async {
        while let Some(batch) = stream.next().await {
            let (back, out, in_validation) =
                convert_counted(fmt, batch?, &schema, validation_fraction, &mut stats).await?;
            fmt = back;
            if out.num_rows() > 0 && tx.send((out, in_validation)).await.is_err() {
                // The writer stopped: its error is the one to report.
                break;
            }
        }
        Ok::<_, PrefflowError>(fmt)
    }
    .await;
    drop(tx);
    let written = writer
        .await
        .map_err(|e| DataFusionError::Execution(format!("sink writer failed: {e}")))?;
    let fmt = sent?;
    written?;
    // `datasets` refuses a split with no data: an empty split's file goes (the card says so),
    // unless nothing was written at all.
    let (train_rows, validation_rows) = stats.split_rows();
    for (split, n) in [("train", train_rows), ("validation", validation_rows)] {
        let file = dir.join(format!("{split}.{}", kind.ext()));
        if n == 0 && train_rows + validation_rows > 0 && file.exists() {
            std::fs::remove_file(&file).map_err(|e| PrefflowError::io(&file, e))?;
        }
    }
    Ok((stats, fmt))
}

/// Converts one batch off the async runtime (conversion, and for `tokenized` tokenizing, is
/// CPU work) and counts it in `stats`: the written rows and which fall in the validation split.
async fn convert_counted(
    mut fmt: Box<dyn Format>,
    batch: RecordBatch,
    schema: &SchemaRef,
    validation_fraction: f64,
    stats: &mut Stats,
) -> Result<(Box<dyn Format>, RecordBatch, Option<BooleanArray>)> {
    let (fmt, converted) = tokio::task::spawn_blocking(move || {
        let r = convert_batch(fmt.as_mut(), &batch, validation_fraction);
        (fmt, r)
    })
    .await
    .map_err(|e| DataFusionError::Execution(format!("sink task failed: {e}")))?;
    let (out, in_validation) = converted?;
    for reason in &out.dropped {
        stats.drop(reason);
    }
    let out =
        RecordBatch::try_new(Arc::clone(schema), out.columns).map_err(DataFusionError::from)?;
    stats.add(&out, in_validation.as_ref());
    Ok((fmt, out, in_validation))
}

/// Converts one batch: the format's output, and which written rows fall in the validation
/// split (None when no row does).
fn convert_batch(
    fmt: &mut dyn Format,
    batch: &RecordBatch,
    validation_fraction: f64,
) -> Result<(Converted, Option<BooleanArray>)> {
    let out = fmt.convert(batch)?;
    if validation_fraction <= 0.0 || out.sources.is_empty() {
        return Ok((out, None));
    }
    let fractions = split_fractions(batch)?;
    let mask: BooleanArray = out
        .sources
        .iter()
        .map(|&i| Some(fractions[i as usize] < validation_fraction))
        .collect();
    Ok((out, Some(mask)))
}

/// Where each input row's prompt falls in [0, 1), for the split. The key is the prompt's text,
/// or for a conversation every message before the last (as JSON), so all the answers to one
/// prompt share a split.
fn split_fractions(batch: &RecordBatch) -> Result<Vec<f64>> {
    let n = batch.num_rows();
    if let Some(p) = batch.column_by_name("prompt") {
        if matches!(
            p.data_type(),
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
        ) {
            let p = datafusion::arrow::compute::cast(p, &DataType::Utf8)
                .map_err(DataFusionError::from)?;
            let p = p.as_string::<i32>();
            return Ok((0..n)
                .map(|i| split_fraction(if p.is_null(i) { "null" } else { p.value(i) }))
                .collect());
        }
        return Ok(rows::json_values(batch, "prompt")?
            .iter()
            .map(|v| match v {
                serde_json::Value::String(s) => split_fraction(s),
                other => split_fraction(&other.to_string()),
            })
            .collect());
    }
    Ok(rows::json_values(batch, "messages")?
        .into_iter()
        .map(|v| {
            let mut messages = match v {
                serde_json::Value::Array(a) => a,
                _ => Vec::new(),
            };
            messages.truncate(messages.len().saturating_sub(1));
            split_fraction(&serde_json::Value::Array(messages).to_string())
        })
        .collect())
}

/// Where a prompt falls in [0, 1): FNV-1a of its text, mixed (splitmix64's finaliser) so
/// prompts differing in their last bytes spread evenly. Stable across builds and machines.
pub(crate) fn split_fraction(key: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The name after `STORED AS`: DataFusion asks it for the format when it plans the COPY.
#[derive(Debug)]
struct TrainingFormatName(&'static str);

impl GetExt for TrainingFormatName {
    fn get_ext(&self) -> String {
        self.0.to_string()
    }
}

impl FileFormatFactory for TrainingFormatName {
    fn create(
        &self,
        _state: &dyn datafusion::catalog::Session,
        format_options: &HashMap<String, String>,
    ) -> DfResult<Arc<dyn FileFormat>> {
        Ok(Arc::new(TrainingFormat {
            name: self.0,
            options: format_options.clone(),
        }))
    }

    fn default(&self) -> Arc<dyn FileFormat> {
        Arc::new(TrainingFormat {
            name: self.0,
            options: HashMap::new(),
        })
    }
}

/// A training format with its COPY options: written, never read.
#[derive(Debug)]
struct TrainingFormat {
    name: &'static str,
    options: HashMap<String, String>,
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
        let registry = state
            .config()
            .get_extension::<prefflow_udfs::models::ModelRegistry>()
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "{}: the session has no model registry; build it with prefflow::build_session",
                    self.name
                ))
            })?;
        let sink = TrainingSink::plan(
            &registry,
            self.name,
            &self.options,
            &conf.original_url,
            &conf.output_schema,
            physical_inputs(&input),
            push_staging(state.config()),
        )?;
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

/// Where the session stages Hub pushes.
pub(crate) fn push_staging(config: &datafusion::prelude::SessionConfig) -> PathBuf {
    config
        .get_extension::<PushStaging>()
        .map(|p| p.0.clone())
        .unwrap_or_else(|| crate::cache::default_dir().join("push"))
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
