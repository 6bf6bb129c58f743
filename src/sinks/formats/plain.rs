//! The query's rows as they are, for `COPY … TO 'hf://…' STORED AS parquet | json`: the Hub
//! sink's checkpoints, resume and card, without a training format's reshaping.

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;

use crate::error::Result;
use crate::sinks::format::{Converted, Format};

pub(crate) struct Plain {
    name: &'static str,
    schema: SchemaRef,
}

impl Plain {
    pub fn plan(name: &'static str, input: &Schema) -> Self {
        Self {
            name,
            schema: Arc::new(input.clone()),
        }
    }
}

impl Format for Plain {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn convert(&mut self, batch: &RecordBatch) -> Result<Converted> {
        Ok(Converted {
            columns: batch.columns().to_vec(),
            sources: (0..batch.num_rows() as u32).collect(),
            dropped: Vec::new(),
        })
    }

    fn describe(&self) -> String {
        format!(
            "The query's rows as {} files, columns as the query named them; `datasets.load_dataset(\"<this dataset>\")` finds the splits from this card.",
            self.name
        )
    }
}
