//! DataFusion runs async functions (the model functions) only in projections and filters. A
//! model call inside an aggregate or window argument — `sum(token_count('m', t))`,
//! `kmeans(ai_embed('m', q), 8) OVER (…)` — is moved into a projection below the aggregate or
//! window, so users write the natural SQL and the model still runs batched on its worker.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, Projection, Window};

const PREFIX: &str = "__prefflow_call_";

/// The analyzer rule the session registers, so every way of running a query (the engine,
/// `Engine::context()`, the DataFrame API) gets the rewrite.
#[derive(Debug, Default)]
pub struct HoistModelCalls;

impl datafusion::optimizer::AnalyzerRule for HoistModelCalls {
    fn analyze(
        &self,
        plan: LogicalPlan,
        _config: &datafusion::common::config::ConfigOptions,
    ) -> Result<LogicalPlan> {
        hoist_async_calls(plan)
    }

    fn name(&self) -> &str {
        "prefflow_hoist_model_calls"
    }
}

/// Rewrites every aggregate and window whose expressions call a model function.
pub fn hoist_async_calls(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| match node {
        LogicalPlan::Aggregate(agg) => {
            let calls = async_calls(agg.group_expr.iter().chain(&agg.aggr_expr))?;
            if calls.is_empty() {
                return Ok(Transformed::no(LogicalPlan::Aggregate(agg)));
            }
            let input = below(agg.input, &calls)?;
            let group = agg
                .group_expr
                .into_iter()
                .map(|e| replace(e, &calls))
                .collect::<Result<_>>()?;
            let aggr = agg
                .aggr_expr
                .into_iter()
                .map(|e| replace(e, &calls))
                .collect::<Result<_>>()?;
            Ok(Transformed::yes(LogicalPlan::Aggregate(
                Aggregate::try_new(input, group, aggr)?,
            )))
        }
        LogicalPlan::Window(window) => {
            let calls = async_calls(window.window_expr.iter())?;
            if calls.is_empty() {
                return Ok(Transformed::no(LogicalPlan::Window(window)));
            }
            let original = Arc::clone(&window.schema);
            let input = below(window.input, &calls)?;
            let exprs = window
                .window_expr
                .into_iter()
                .map(|e| replace(e, &calls))
                .collect::<Result<_>>()?;
            let rewritten = LogicalPlan::Window(Window::try_new(exprs, input)?);
            // Drop the helper columns again: the window's output looks as it did.
            let keep = original
                .columns()
                .into_iter()
                .map(Expr::Column)
                .collect::<Vec<_>>();
            Ok(Transformed::yes(LogicalPlan::Projection(
                Projection::try_new(keep, Arc::new(rewritten))?,
            )))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

/// The distinct outermost model-function calls in `exprs`, in order of appearance.
fn async_calls<'a>(exprs: impl Iterator<Item = &'a Expr>) -> Result<Vec<Expr>> {
    let mut calls: Vec<Expr> = Vec::new();
    for e in exprs {
        e.apply(|x| {
            if let Expr::ScalarFunction(f) = x
                && f.func.as_async().is_some()
            {
                if !calls.contains(x) {
                    calls.push(x.clone());
                }
                return Ok(TreeNodeRecursion::Jump);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
    }
    Ok(calls)
}

/// `input` plus one column per call, computed by a projection (where async functions run).
fn below(input: Arc<LogicalPlan>, calls: &[Expr]) -> Result<Arc<LogicalPlan>> {
    let mut exprs: Vec<Expr> = input
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    exprs.extend(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| c.clone().alias(format!("{PREFIX}{i}"))),
    );
    Ok(Arc::new(LogicalPlan::Projection(Projection::try_new(
        exprs, input,
    )?)))
}

/// `expr` with each call replaced by its column, keeping the expression's output name.
fn replace(expr: Expr, calls: &[Expr]) -> Result<Expr> {
    let name = expr.schema_name().to_string();
    let rewritten = expr.transform_down(|e| match calls.iter().position(|c| c == &e) {
        Some(i) => Ok(Transformed::new(
            Expr::Column(Column::from_name(format!("{PREFIX}{i}"))),
            true,
            TreeNodeRecursion::Jump,
        )),
        None => Ok(Transformed::no(e)),
    })?;
    Ok(match rewritten.data {
        e @ Expr::Alias(_) => e,
        e if rewritten.transformed => e.alias(name),
        e => e,
    })
}
