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
//! Rows travel through the format as JSON objects (the shape TRL documents its formats in),
//! and the output schema is fixed per format, so JSONL and Parquet outputs hold the same types.

pub(crate) mod card;
mod dpo;
mod kto;
mod rows;
mod sft;
mod sharegpt;
mod tokenized;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::GetExt;
use datafusion::datasource::file_format::{FileFormat, FileFormatFactory};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::dml::CopyTo;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use crate::engine::local_path;
use crate::error::{PrefflowError, Result};
use crate::target::{Output, commit, plan_inputs, remove_path, temp_sibling};

pub use card::Stats;
pub use rows::Row;

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

/// One training format: checks the input schema at planning time, then turns input rows into
/// output rows (or a reason to drop them).
pub(crate) trait Format: Send {
    /// The schema of the written files.
    fn schema(&self) -> SchemaRef;
    /// Appends the output rows for one input row to `out`; returns why the row was dropped
    /// instead, for the card.
    fn convert(&mut self, row: Row, out: &mut Vec<Row>) -> Result<Option<&'static str>>;
    /// Lines for the card describing the format and how to load it.
    fn describe(&self) -> String;
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
enum FileKind {
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
                let props = WriterProperties::builder()
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

/// Builds the format for `name` from the query's schema and the COPY options, checking both.
fn plan_format(
    ctx: &SessionContext,
    name: &'static str,
    input: &Schema,
    options: &mut Options,
) -> Result<Box<dyn Format>> {
    Ok(match name {
        "dpo" => Box::new(dpo::Dpo::plan(input, options)?),
        "kto" => Box::new(kto::Kto::plan(input, options)?),
        "sft" => Box::new(sft::Sft::plan(input, options)?),
        "sharegpt" => Box::new(sharegpt::ShareGpt::plan(input, options)?),
        "tokenized" => Box::new(tokenized::Tokenized::plan(ctx, input, options)?),
        other => return Err(options.err(format!("unknown training format {other}"))),
    })
}

const COMMON_OPTIONS: &str = "validation_fraction, file_format";

/// Runs `COPY (query) TO 'dir' STORED AS <format>`: returns the row count written, like COPY.
pub async fn write(
    ctx: &SessionContext,
    copy: &CopyTo,
    format: &'static str,
) -> Result<Vec<RecordBatch>> {
    let target = local_dir(format, &copy.output_url)?;
    let mut options = Options::new(format, &copy.options);
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
    let input_schema = copy.input.schema().as_arrow().clone();
    let fmt = plan_format(ctx, format, &input_schema, &mut options)?;
    options.finish(&format!("{COMMON_OPTIONS}, {}", known_options(format)))?;

    let output = Output::Dataset(format);
    crate::target::check(&target, &output, &plan_inputs(&copy.input))?;
    let input = copy.input.as_ref().clone();
    let tmp = temp_sibling(&target);
    crate::target::stage(&tmp, &target, true)?;
    let result = async {
        let stream = ctx
            .execute_logical_plan(input)
            .await?
            .execute_stream()
            .await?;
        let (stats, fmt) = write_splits(stream, fmt, &tmp, kind, validation_fraction).await?;
        card::write(&tmp, &target, &settings, fmt.as_ref(), &stats)?;
        Ok::<_, PrefflowError>(stats)
    }
    .await;
    match result {
        Ok(stats) => {
            commit(&tmp, &target, &output)?;
            let count = datafusion::arrow::array::UInt64Array::from(vec![stats.written()]);
            Ok(vec![
                RecordBatch::try_from_iter(vec![(
                    "count",
                    Arc::new(count) as datafusion::arrow::array::ArrayRef,
                )])
                .map_err(DataFusionError::from)?,
            ])
        }
        Err(e) => {
            remove_path(&tmp);
            Err(e)
        }
    }
}

fn known_options(format: &str) -> &'static str {
    match format {
        "dpo" => "style, min_margin",
        "kto" => "style",
        "sft" => "style",
        "sharegpt" => "(none)",
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
    mut stream: datafusion::execution::SendableRecordBatchStream,
    mut fmt: Box<dyn Format>,
    dir: &Path,
    kind: FileKind,
    validation_fraction: f64,
) -> Result<(Stats, Box<dyn Format>)> {
    let schema = fmt.schema();
    let mut stats = Stats::new(&schema);
    let mut train = Writer::create(&dir.join(format!("train.{}", kind.ext())), kind, &schema)?;
    let mut validation = if validation_fraction > 0.0 {
        Some(Writer::create(
            &dir.join(format!("validation.{}", kind.ext())),
            kind,
            &schema,
        )?)
    } else {
        None
    };
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        // Conversion (and, for `tokenized`, tokenizing) is CPU work: off the async runtime.
        let (back, converted) = tokio::task::spawn_blocking(move || {
            let r = convert_batch(fmt.as_mut(), &batch);
            (fmt, r)
        })
        .await
        .map_err(|e| DataFusionError::Execution(format!("sink task failed: {e}")))?;
        fmt = back;
        let (rows, dropped) = converted?;
        for reason in dropped {
            stats.drop(reason);
        }
        let (mut to_train, mut to_validation) = (Vec::new(), Vec::new());
        for (row, fraction) in rows {
            let validation_row = validation.is_some() && fraction < validation_fraction;
            stats.add(&row, validation_row);
            if validation_row {
                to_validation.push(row);
            } else {
                to_train.push(row);
            }
        }
        if !to_train.is_empty() {
            train.write(&rows::to_batch(&schema, &to_train)?)?;
        }
        if let Some(w) = validation.as_mut()
            && !to_validation.is_empty()
        {
            w.write(&rows::to_batch(&schema, &to_validation)?)?;
        }
    }
    train.finish()?;
    if let Some(w) = validation {
        w.finish()?;
    }
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

/// Converts one batch: its kept output rows, each with where its prompt falls in [0, 1) for
/// the split, and the reasons of the dropped ones.
#[allow(clippy::type_complexity)]
fn convert_batch(
    fmt: &mut dyn Format,
    batch: &RecordBatch,
) -> Result<(Vec<(Row, f64)>, Vec<&'static str>)> {
    let mut out = Vec::with_capacity(batch.num_rows());
    let mut dropped = Vec::new();
    let mut converted = Vec::new();
    for row in rows::from_batch(batch)? {
        let fraction = split_fraction(&split_key(&row));
        if let Some(reason) = fmt.convert(row, &mut converted)? {
            dropped.push(reason);
        }
        out.extend(converted.drain(..).map(|r| (r, fraction)));
    }
    Ok((out, dropped))
}

/// The text an input row's split is decided by: its prompt, or for a conversation every
/// message before the last, so all the answers to one prompt share a split.
fn split_key(row: &Row) -> String {
    if let Some(p) = row.get("prompt") {
        return rows::key_text(p);
    }
    let messages = row
        .get("messages")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    let n = messages.len().saturating_sub(1);
    serde_json::Value::Array(messages[..n].to_vec()).to_string()
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

/// The name after `STORED AS`; the [`crate::Engine`] intercepts these COPY statements, so
/// DataFusion's own writer is never asked for them.
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
        _format_options: &HashMap<String, String>,
    ) -> DfResult<Arc<dyn FileFormat>> {
        Err(DataFusionError::Plan(format!(
            "{}: COPY … STORED AS {} runs through prefflow's engine (prefflow::Engine or the CLI); EXPLAIN the query inside the COPY instead",
            self.0, self.0
        )))
    }

    fn default(&self) -> Arc<dyn FileFormat> {
        // Only reached when inferring a table's format from a file ending; training formats
        // are never read back under these names.
        Arc::new(datafusion::datasource::file_format::json::JsonFormat::default())
    }
}
