//! The contract every dataset format implements ([`Format`]): check the query's schema when
//! planned, then turn input batches into the written columns, saying why a row was dropped.
//! A leaf: formats, the sink loop and the Hub push import it; it imports nothing of them.

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::Result;

/// One training format: checks the input schema at planning time, then turns input batches
/// into output columns (and reasons for the rows it drops).
pub(crate) trait Format: Send {
    /// The schema of the written files.
    fn schema(&self) -> SchemaRef;
    /// The written columns for one input batch, with the input row of each written row.
    fn convert(&mut self, batch: &RecordBatch) -> Result<Converted>;
    /// Lines for the card describing the format and how to load it: fixed once planned (the
    /// sink asks once per run).
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
