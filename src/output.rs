//! Writing a query's result: a table on a terminal, CSV, JSON, JSON lines or Parquet, to
//! standard output or atomically to a file.

use std::io::{IsTerminal, Write};
use std::path::Path;

use datafusion::arrow::csv::WriterBuilder as CsvWriterBuilder;
use datafusion::arrow::json::{ArrayWriter, LineDelimitedWriter};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches_with_schema;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::parquet::arrow::ArrowWriter;
use futures::StreamExt;

use crate::datasets::with_plan_json_diagnostics;

use crate::error::{PrefflowError, Result};
use crate::target::{Output, temp_sibling};

/// How a result is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// Comma-separated values with a header.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// The format a file name implies.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            "jsonl" | "ndjson" => Some(Format::Ndjson),
            "parquet" => Some(Format::Parquet),
            "txt" => Some(Format::Table),
            _ => None,
        }
    }

    /// The format when none is given: from the output file's name, else a table on a
    /// terminal and JSON lines in a pipe (nested columns survive it, unlike CSV).
    pub fn choose(explicit: Option<Format>, output: Option<&Path>) -> Result<Self> {
        if let Some(f) = explicit {
            return Ok(f);
        }
        match output {
            Some(p) => Format::from_path(p).ok_or_else(|| {
                PrefflowError::Usage(format!(
                    "cannot tell the format of {} from its name: pass --format",
                    p.display()
                ))
            }),
            None if std::io::stdout().is_terminal() => Ok(Format::Table),
            None => Ok(Format::Ndjson),
        }
    }
}

/// Runs `df` and writes its rows; returns how many. With `output`, the file appears only
/// when everything was written (a failed query leaves the previous file as it was).
pub async fn write_result(df: DataFrame, format: Format, output: Option<&Path>) -> Result<usize> {
    match output {
        None => {
            if format == Format::Parquet && std::io::stdout().is_terminal() {
                return Err(PrefflowError::Usage(
                    "Parquet is binary: pass --output FILE or pipe standard output".to_string(),
                ));
            }
            write_to(df, format, std::io::BufWriter::new(std::io::stdout())).await
        }
        Some(path) => {
            let inputs = crate::target::plan_inputs(df.logical_plan());
            crate::target::check(path, &Output::File, &inputs)?;
            let staging = crate::target::Staged::new(temp_sibling(path), path, false)?;
            let file =
                std::fs::File::create(staging.path()).map_err(|e| PrefflowError::io(path, e))?;
            let rows = write_to(df, format, std::io::BufWriter::new(file)).await?;
            staging.commit(path, &Output::File)?;
            Ok(rows)
        }
    }
}

async fn write_to<W: Write + Send>(df: DataFrame, format: Format, mut out: W) -> Result<usize> {
    let plan = df.logical_plan().clone();
    let schema = df.schema().as_arrow().clone().into();
    let diagnose =
        |e: DataFusionError| -> PrefflowError { with_plan_json_diagnostics(e, &plan).into() };
    let mut stream = df.execute_stream().await.map_err(diagnose)?;
    let mut rows = 0;
    let arrow =
        |e: datafusion::arrow::error::ArrowError| PrefflowError::from(DataFusionError::from(e));
    match format {
        Format::Table => {
            let mut batches: Vec<RecordBatch> = Vec::new();
            while let Some(b) = stream.next().await {
                let b = b.map_err(diagnose)?;
                rows += b.num_rows();
                batches.push(b);
            }
            let table = pretty_format_batches_with_schema(schema, &batches).map_err(arrow)?;
            writeln!(out, "{table}").map_err(|e| PrefflowError::io("<output>", e))?;
        }
        Format::Csv => {
            let mut w = CsvWriterBuilder::new().with_header(true).build(&mut out);
            while let Some(b) = stream.next().await {
                let b = b.map_err(diagnose)?;
                rows += b.num_rows();
                w.write(&b).map_err(arrow)?;
            }
        }
        Format::Json => {
            let mut w = ArrayWriter::new(&mut out);
            while let Some(b) = stream.next().await {
                let b = b.map_err(diagnose)?;
                rows += b.num_rows();
                w.write(&b).map_err(arrow)?;
            }
            w.finish().map_err(arrow)?;
            if rows == 0 {
                write!(out, "[]").map_err(|e| PrefflowError::io("<output>", e))?;
            }
            writeln!(out).map_err(|e| PrefflowError::io("<output>", e))?;
        }
        Format::Ndjson => {
            let mut w = LineDelimitedWriter::new(&mut out);
            while let Some(b) = stream.next().await {
                let b = b.map_err(diagnose)?;
                rows += b.num_rows();
                w.write(&b).map_err(arrow)?;
            }
            w.finish().map_err(arrow)?;
        }
        Format::Parquet => {
            let props = parquet_properties().build();
            let mut w = ArrowWriter::try_new(&mut out, schema, Some(props))
                .map_err(DataFusionError::from)?;
            while let Some(b) = stream.next().await {
                let b = b.map_err(diagnose)?;
                rows += b.num_rows();
                w.write(&b).map_err(DataFusionError::from)?;
            }
            w.close().map_err(DataFusionError::from)?;
        }
    }
    out.flush().map_err(|e| PrefflowError::io("<output>", e))?;
    Ok(rows)
}

/// How prefflow writes Parquet itself (`--output x.parquet`, the training sinks): Snappy, the
/// codec pyarrow and `datasets` write by default. Uncompressed files of text are several times
/// larger, and writing them cost more than compressing (measured on the pairing benchmark:
/// dpo sink 1.42 s uncompressed, see README).
pub(crate) fn parquet_properties() -> datafusion::parquet::file::properties::WriterPropertiesBuilder
{
    datafusion::parquet::file::properties::WriterProperties::builder()
        .set_compression(datafusion::parquet::basic::Compression::SNAPPY)
}
