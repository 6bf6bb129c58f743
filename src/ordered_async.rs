//! Model functions keep their input's order.
//!
//! DataFusion runs async functions (every model function) in an `AsyncFuncExec`, which passes
//! its input's rows and columns through unchanged and in order, but forgets the input's sort
//! order: it maps only the new columns into its output properties. A query over a file
//! declared `WITH ORDER (prompt_id)` then loses the order at the first model call, and
//! pairing per prompt after `unnest(ai_generate_n(...))` becomes a hash aggregate holding
//! every prompt until the input ends. This rule wraps each `AsyncFuncExec` so that the
//! input's orderings carry over to the same columns of the output; the aggregate above then
//! runs in sorted mode and emits each prompt's pair as soon as its rows are past, with one
//! group in memory at a time (`ordering_mode=Sorted` in EXPLAIN).

use std::fmt;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::projection::ProjectionMapping;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::async_func::AsyncFuncExec;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};

/// The rule: wraps every `AsyncFuncExec` in [`OrderedAsyncFunc`].
#[derive(Debug, Default)]
pub struct KeepOrderThroughModelCalls;

impl PhysicalOptimizerRule for KeepOrderThroughModelCalls {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Bottom-up, so every parent is rebuilt from its new child and recomputes its own
        // properties (an aggregate picks its sorted mode then).
        plan.transform_up(|node| {
            if node.downcast_ref::<AsyncFuncExec>().is_none() {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(
                Arc::new(OrderedAsyncFunc::new(node)?) as Arc<dyn ExecutionPlan>
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "keep_order_through_model_calls"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// An `AsyncFuncExec` whose output keeps its input's orderings on the passed-through columns.
#[derive(Debug)]
pub struct OrderedAsyncFunc {
    /// The wrapped `AsyncFuncExec`.
    inner: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl OrderedAsyncFunc {
    fn new(inner: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let input = Arc::clone(inner.children()[0]);
        let input_schema = input.schema();
        // The output starts with the input's columns, at the same positions.
        let identity = input_schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                (
                    Arc::new(Column::new(f.name(), i)) as Arc<dyn PhysicalExpr>,
                    f.name().to_string(),
                )
            })
            .collect::<Vec<_>>();
        let mapping = ProjectionMapping::try_new(identity, &input_schema)?;
        let eq = input
            .equivalence_properties()
            .project(&mapping, inner.schema());
        let base = inner.properties();
        let properties = PlanProperties::new(
            eq,
            base.output_partitioning().clone(),
            base.emission_type,
            base.boundedness,
        );
        Ok(Self {
            inner,
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for OrderedAsyncFunc {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Ordered")?;
        self.inner.fmt_as(t, f)
    }
}

impl ExecutionPlan for OrderedAsyncFunc {
    fn name(&self) -> &str {
        "ordered_async_func"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.inner.children()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let inner = Arc::clone(&self.inner).with_new_children(children)?;
        Ok(Arc::new(Self::new(inner)?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.inner.execute(partition, context)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.inner.metrics()
    }
}
