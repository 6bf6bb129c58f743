//! The one planning door of a COPY. Every `COPY … TO` a prefflow session plans — through
//! `Engine::sql`, `Engine::context()`, the DataFrame API (`write_parquet`, …) or the cluster
//! client — passes [`route`] before DataFusion plans it physically: the shard path is applied
//! and the query's input files are recorded, and the file type becomes a prefflow format
//! whose writer plan checks the target, runs the Hub preflight and returns the sink that runs
//! (a staged DataFusion writer, or a [`super::TrainingSink`]).
//!
//! Routing is a logical rewrite (an analyzer rule), not a physical one, because only the
//! logical plan knows the folders the query reads (`SELECT * FROM 'dir/'`): a target inside
//! one is refused, as the next read would count the output.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::file_format::{
    FileFormatFactory, file_type_to_format, format_as_file_type,
};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::dml::CopyTo;
use datafusion::optimizer::AnalyzerRule;

use crate::target::plan_inputs;

use super::TrainingFormatName;
use super::staged::StagedFormatFactory;

/// Routes every COPY of a local session's statements (see [`route`]).
#[derive(Debug, Default)]
pub struct CopyRoute;

impl AnalyzerRule for CopyRoute {
    fn analyze(&self, plan: LogicalPlan, config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up(|node| match node {
            LogicalPlan::Copy(copy) => {
                let (copy, changed) = route(copy, config)?;
                let node = LogicalPlan::Copy(copy);
                Ok(if changed {
                    Transformed::yes(node)
                } else {
                    Transformed::no(node)
                })
            }
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "prefflow_copy_route"
    }
}

/// Makes `copy` a prefflow COPY: a `--shard` writes its own files beside the other shards'
/// (the shard tag in the name), the query's input files travel with the format, and the file
/// type becomes the prefflow format that plans its sink. A COPY routed before is returned
/// as it is (with `false`), so routing twice changes nothing.
pub fn route(mut copy: CopyTo, config: &ConfigOptions) -> DfResult<(CopyTo, bool)> {
    // A file type of another kind than DataFusion's (none is registered here) is left alone.
    let Ok(factory) = file_type_to_format(&copy.file_type) else {
        return Ok((copy, false));
    };
    let training = factory.downcast_ref::<TrainingFormatName>();
    if factory.is::<StagedFormatFactory>() || training.is_some_and(|t| t.inputs.is_some()) {
        return Ok((copy, false));
    }
    if let Some(shard) = crate::shard::Shard::from_config(config)? {
        copy.output_url = crate::shard::shard_path(&copy.output_url, &shard);
    }
    let inputs = Arc::new(plan_inputs(&copy.input));
    let routed: Arc<dyn FileFormatFactory> = match training {
        Some(t) => Arc::new(TrainingFormatName {
            name: t.name,
            inputs: Some(inputs),
        }),
        None => Arc::new(StagedFormatFactory::new(Arc::clone(&factory), inputs)),
    };
    copy.file_type = format_as_file_type(routed);
    Ok((copy, true))
}
