//! Resuming a push: the rows an earlier run of the same job pushed, read back from the Hub
//! and skipped when they come again.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::error::DataFusionError;
use prefflow_udfs::models::hub::describe;

use crate::error::Result;

use super::push::Push;
use crate::sinks::files::FileKind;

impl Push {
    /// Hashes of the rows the manifest's parts hold (with their counts), read back from the Hub.
    pub async fn pushed(&self, schema: &SchemaRef) -> Result<RowSet> {
        let mut set = RowSet::new(schema)?;
        for part in &self.manifest.parts {
            let bytes = self
                .repo
                .download_file_to_bytes()
                .filename(part.path.clone())
                .revision(self.target.branch.clone())
                .send()
                .await
                .map_err(|e| {
                    self.target
                        .err(format!("cannot read back {}: {}", part.path, describe(&e)))
                })?;
            let schema = Arc::clone(schema);
            let kind = self.kind;
            let batches = tokio::task::spawn_blocking(move || read_part(bytes, kind, &schema))
                .await
                .map_err(|e| DataFusionError::Execution(format!("sink task failed: {e}")))?
                .map_err(|e| {
                    self.target
                        .err(format!("cannot read back {}: {e}", part.path))
                })?;
            for b in &batches {
                set.insert(b)?;
            }
        }
        Ok(set)
    }
}

/// A pushed part's rows, in the format's schema.
fn read_part(bytes: bytes::Bytes, kind: FileKind, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let batches: Vec<RecordBatch> = match kind {
        FileKind::Parquet => {
            datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                bytes,
            )
            .and_then(|b| b.build())
            .map_err(DataFusionError::from)?
            .collect::<std::result::Result<_, _>>()
            .map_err(DataFusionError::from)?
        }
        FileKind::Jsonl => datafusion::arrow::json::ReaderBuilder::new(Arc::clone(schema))
            .build(std::io::Cursor::new(bytes))
            .map_err(DataFusionError::from)?
            .collect::<std::result::Result<_, _>>()
            .map_err(DataFusionError::from)?,
    };
    batches
        .into_iter()
        .map(|b| {
            if b.num_columns() != schema.fields().len() {
                return Err(DataFusionError::Execution(format!(
                    "{} columns where the format writes {}",
                    b.num_columns(),
                    schema.fields().len()
                ))
                .into());
            }
            let columns = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| {
                    if c.data_type() == f.data_type() {
                        Ok(Arc::clone(c))
                    } else {
                        cast(c, f.data_type())
                    }
                })
                .collect::<std::result::Result<Vec<ArrayRef>, _>>()
                .map_err(DataFusionError::from)?;
            Ok(RecordBatch::try_new(Arc::clone(schema), columns).map_err(DataFusionError::from)?)
        })
        .collect()
}

/// A multiset of row hashes: the rows already pushed, each skipped once when it comes again.
pub(crate) struct RowSet {
    converter: RowConverter,
    counts: HashMap<[u8; 16], u64>,
    left: u64,
}

impl RowSet {
    pub fn new(schema: &SchemaRef) -> Result<Self> {
        let fields = schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(Self {
            converter: RowConverter::new(fields).map_err(DataFusionError::from)?,
            counts: HashMap::new(),
            left: 0,
        })
    }

    fn hashes(&self, batch: &RecordBatch) -> Result<Vec<[u8; 16]>> {
        let rows = self
            .converter
            .convert_columns(batch.columns())
            .map_err(DataFusionError::from)?;
        Ok(rows
            .iter()
            .map(|r| {
                let h = blake3::hash(r.as_ref());
                let mut out = [0u8; 16];
                out.copy_from_slice(&h.as_bytes()[..16]);
                out
            })
            .collect())
    }

    fn insert(&mut self, batch: &RecordBatch) -> Result<()> {
        for h in self.hashes(batch)? {
            *self.counts.entry(h).or_default() += 1;
            self.left += 1;
        }
        Ok(())
    }

    /// Which rows of `batch` are new (None: all are); pushed ones are counted off.
    pub fn new_rows(&mut self, batch: &RecordBatch) -> Result<Option<BooleanArray>> {
        if self.left == 0 {
            return Ok(None);
        }
        let keep: BooleanArray = self
            .hashes(batch)?
            .into_iter()
            .map(|h| match self.counts.get_mut(&h) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    self.left -= 1;
                    Some(false)
                }
                _ => Some(true),
            })
            .collect();
        Ok(Some(keep))
    }

    /// Pushed rows the query did not give again.
    pub fn left(&self) -> u64 {
        self.left
    }
}
