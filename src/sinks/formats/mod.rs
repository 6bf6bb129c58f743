//! The dataset formats (one file each) and the plain Parquet / JSON push, built from the
//! query's schema and the COPY options.

mod dpo;
mod kto;
mod plain;
pub(crate) mod rows;
pub(crate) mod sft;
mod sharegpt;
mod tokenized;

use datafusion::arrow::datatypes::Schema;

use super::format::Format;
use super::options::Options;
use crate::error::Result;

/// Builds the format for `name` from the query's schema and the COPY options, checking both.
pub(crate) fn plan_format(
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
