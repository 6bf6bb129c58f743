//! Local split files: the open train / validation files of a dataset (Parquet or JSONL) and
//! their writer thread, the split of each prompt (a stable hash), and the conversion of one
//! batch that the sink loop (`dataset`) runs.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::parquet::arrow::ArrowWriter;

use crate::error::{PrefflowError, Result};

use super::Stats;
use super::format::{Converted, Format};
use super::formats::rows;

/// Output file kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Parquet,
    Jsonl,
}

impl FileKind {
    pub(crate) fn ext(self) -> &'static str {
        match self {
            FileKind::Parquet => "parquet",
            FileKind::Jsonl => "jsonl",
        }
    }
}

/// A split's open output file.
pub(crate) enum Writer {
    Parquet(ArrowWriter<File>),
    Jsonl(LineDelimitedWriter<File>),
}

impl Writer {
    pub(crate) fn create(path: &Path, kind: FileKind, schema: &SchemaRef) -> Result<Self> {
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

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match self {
            Writer::Parquet(w) => w.write(batch).map_err(DataFusionError::from)?,
            Writer::Jsonl(w) => w.write(batch).map_err(DataFusionError::from)?,
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<()> {
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
pub(crate) struct Splits {
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

/// A dataset's split files in a folder, written on a thread of their own: encoding the files
/// overlaps converting the next batch (the sink's two halves take about the same time) and
/// stays off the async runtime.
pub(crate) struct SplitFiles {
    dir: std::path::PathBuf,
    kind: FileKind,
    tx: Option<tokio::sync::mpsc::Sender<(RecordBatch, Option<BooleanArray>)>>,
    writer: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl SplitFiles {
    /// Creates `train` (and `validation`) in `dir`.
    pub(crate) fn create(
        dir: &Path,
        kind: FileKind,
        schema: &SchemaRef,
        validation: bool,
    ) -> Result<Self> {
        let splits = Splits::create(dir, kind, schema, validation)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(RecordBatch, Option<BooleanArray>)>(2);
        let writer = tokio::task::spawn_blocking(move || {
            let mut splits = splits;
            while let Some((out, mask)) = rx.blocking_recv() {
                splits.write(&out, mask.as_ref())?;
            }
            splits.finish()
        });
        Ok(Self {
            dir: dir.to_path_buf(),
            kind,
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// Writes rows, those marked by `validation` to the validation split.
    pub(crate) async fn write(
        &mut self,
        out: RecordBatch,
        validation: Option<BooleanArray>,
    ) -> Result<()> {
        let sent = match &self.tx {
            Some(tx) => tx.send((out, validation)).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The writer stopped: its error is the one to report.
        self.tx = None;
        self.wait().await?;
        Err(DataFusionError::Execution("the split writer stopped".to_string()).into())
    }

    async fn wait(&mut self) -> Result<()> {
        match self.writer.take() {
            Some(w) => w
                .await
                .map_err(|e| DataFusionError::Execution(format!("sink writer failed: {e}")))?,
            None => Ok(()),
        }
    }

    /// Closes the files. `datasets` refuses a split with no data: an empty split's file goes
    /// (the card says so), unless nothing was written at all.
    pub(crate) async fn finish(mut self, stats: &Stats) -> Result<()> {
        self.tx = None;
        self.wait().await?;
        let (train_rows, validation_rows) = stats.split_rows();
        for (split, n) in [("train", train_rows), ("validation", validation_rows)] {
            let file = self.dir.join(format!("{split}.{}", self.kind.ext()));
            if n == 0 && train_rows + validation_rows > 0 && file.exists() {
                std::fs::remove_file(&file).map_err(|e| PrefflowError::io(&file, e))?;
            }
        }
        Ok(())
    }
}

/// Converts one batch off the async runtime (conversion, and for `tokenized` tokenizing, is
/// CPU work) and counts it in `stats`: the written rows and which fall in the validation split.
pub(crate) async fn convert_counted(
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
pub(crate) fn convert_batch(
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
pub(crate) fn split_fractions(batch: &RecordBatch) -> Result<Vec<f64>> {
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
    let mut h = prefflow_udfs::models::stable_hash::fnv1a(key.as_bytes());
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}
