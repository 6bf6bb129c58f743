//! `information_schema.routines` (and so `SHOW FUNCTIONS`) with a description for every
//! prefflow function. DataFusion 55 builds that view from each function's `documentation()`,
//! but the wrapper it puts around async functions (`AsyncScalarUDF`, which every model function
//! is) does not pass it on, so `ai_generate` & co. would show NULL. This analyzer rule fills a
//! NULL description or syntax example from prefflow's one documentation table
//! (`prefflow_udfs::docs`); DataFusion's own entries are left as they are.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::logical_expr::expr::Case;
use datafusion::logical_expr::{Expr, LogicalPlan, Projection, lit};
use datafusion::optimizer::AnalyzerRule;

/// The rule (see the module docs).
#[derive(Debug, Default)]
pub struct RoutineDocs;

impl AnalyzerRule for RoutineDocs {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let LogicalPlan::TableScan(scan) = &node else {
                return Ok(Transformed::no(node));
            };
            let routines = scan.table_name.schema() == Some("information_schema")
                && scan.table_name.table() == "routines";
            let columns = scan.projected_schema.columns();
            let name = columns.iter().find(|c| c.name == "routine_name").cloned();
            let (true, Some(name)) = (routines, name) else {
                return Ok(Transformed::no(node));
            };
            let exprs = columns
                .into_iter()
                .map(|c| match c.name.as_str() {
                    "description" => filled(c, &name, |d| d.description.to_string()),
                    "syntax_example" => filled(c, &name, |d| d.syntax_example.to_string()),
                    _ => Expr::Column(c),
                })
                .collect();
            Ok(Transformed::yes(LogicalPlan::Projection(
                Projection::try_new(exprs, Arc::new(node))?,
            )))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "prefflow_routine_docs"
    }
}

/// `coalesce(column, CASE routine_name WHEN 'ai_embed' THEN '…' … END)` named as the column.
fn filled(
    column: Column,
    name: &Column,
    text: impl Fn(&datafusion::logical_expr::Documentation) -> String,
) -> Expr {
    let names = prefflow_udfs::docs::FUNCTIONS
        .iter()
        .map(|(n, ..)| *n)
        .chain(["max_by", "min_by"]);
    let when_then = names
        .filter_map(|n| {
            let doc = prefflow_udfs::docs::documentation(n)?;
            Some((Box::new(lit(n)), Box::new(lit(text(doc)))))
        })
        .collect();
    let docs = Expr::Case(Case::new(
        Some(Box::new(Expr::Column(name.clone()))),
        when_then,
        Some(Box::new(lit(ScalarValue::Utf8(None)))),
    ));
    datafusion::functions::expr_fn::coalesce(vec![Expr::Column(column.clone()), docs])
        .alias_qualified(column.relation, column.name)
}
