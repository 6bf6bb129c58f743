//! The plan node around every model-function call: it keeps the input's order, counts what
//! the calls did, and shows it in EXPLAIN / EXPLAIN ANALYZE.
//!
//! DataFusion runs async functions (every model function) in an `AsyncFuncExec`, which passes
//! its input's rows and columns through unchanged and in order, but forgets the input's sort
//! order: it maps only the new columns into its output properties. A query over a file
//! declared `WITH ORDER (prompt_id)` then loses the order at the first model call, and
//! pairing per prompt after `unnest(ai_generate_n(...))` becomes a hash aggregate holding
//! every prompt until the input ends. This rule wraps each `AsyncFuncExec` in a
//! [`ModelCallsExec`] whose output keeps the input's orderings on the same columns; the
//! aggregate above then runs in sorted mode and emits each prompt's pair as soon as its rows
//! are past, with one group in memory at a time (`ordering_mode=Sorted` in EXPLAIN).
//!
//! The node also owns the counters of its calls ([`NodeCalls`]): it makes them current while
//! it polls its input, so each function call adds to its node's rows, cache hits, tokens,
//! batches and time. EXPLAIN names each call's model and its files; EXPLAIN ANALYZE adds the
//! counts; the CLI's progress bars read the same counters while the query runs.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::projection::ProjectionMapping;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::async_func::AsyncFuncExec;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::Stream;
use prefflow_udfs::models::ModelRegistry;
use prefflow_udfs::models::call_stats::{NodeCalls, Snapshot};

/// The rule: wraps every `AsyncFuncExec` in a [`ModelCallsExec`].
#[derive(Debug)]
pub struct ModelCallsRule {
    models: Arc<ModelRegistry>,
}

impl ModelCallsRule {
    /// The rule for a session's models (EXPLAIN names their files).
    pub fn new(models: Arc<ModelRegistry>) -> Self {
        Self { models }
    }
}

impl PhysicalOptimizerRule for ModelCallsRule {
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
                Arc::new(ModelCallsExec::new(node, Arc::clone(&self.models))?)
                    as Arc<dyn ExecutionPlan>,
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "model_calls"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// One model call of a node, for display.
#[derive(Debug)]
struct CallInfo {
    /// `function(model)`.
    label: String,
    /// The model's address and local files, when the model is known.
    model: Option<String>,
}

/// An `AsyncFuncExec` that keeps its input's orderings on the passed-through columns and
/// counts its model calls.
#[derive(Debug)]
pub struct ModelCallsExec {
    /// The wrapped `AsyncFuncExec`.
    inner: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
    models: Arc<ModelRegistry>,
    infos: Vec<CallInfo>,
    calls: Arc<NodeCalls>,
    /// Partitions whose stream has not ended.
    running: Arc<AtomicUsize>,
}

impl ModelCallsExec {
    fn new(inner: Arc<dyn ExecutionPlan>, models: Arc<ModelRegistry>) -> Result<Self> {
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
        // The expected rows, for progress: the plain statistics call is enough here.
        #[allow(deprecated)]
        let total = input
            .partition_statistics(None)
            .ok()
            .and_then(|s| s.num_rows.get_value().map(|n| *n as u64));
        let infos = call_infos(&inner, &models);
        let calls = Arc::new(NodeCalls::new(
            infos.iter().map(|c| (c.label.clone(), total)),
        ));
        let partitions = base.output_partitioning().partition_count();
        Ok(Self {
            inner,
            properties: Arc::new(properties),
            models,
            infos,
            calls,
            running: Arc::new(AtomicUsize::new(partitions)),
        })
    }
}

/// `function(model)` and the model's files for each async expression of `exec`.
fn call_infos(exec: &Arc<dyn ExecutionPlan>, models: &ModelRegistry) -> Vec<CallInfo> {
    let Some(exec) = exec.downcast_ref::<AsyncFuncExec>() else {
        return Vec::new();
    };
    // The only way to the expressions without serializing the node.
    #[allow(deprecated)]
    let exprs = exec.async_exprs();
    exprs
        .iter()
        .filter_map(|e| {
            let f = e.func.downcast_ref::<ScalarFunctionExpr>()?;
            let name = f
                .args()
                .first()
                .and_then(|a| a.downcast_ref::<Literal>())
                .and_then(|l| l.value().try_as_str().flatten().map(str::to_string));
            let model = name.as_deref().and_then(|n| models.spec(n).ok()).map(|s| {
                let uri = prefflow_udfs::models::remote::redact_uri(&s.uri);
                if s.uri == s.path.display().to_string() || s.path.as_os_str().is_empty() {
                    uri
                } else {
                    format!("{uri} -> {}", s.path.display())
                }
            });
            Some(CallInfo {
                label: format!("{}({})", f.name(), name.as_deref().unwrap_or("?")),
                model,
            })
        })
        .collect()
}

/// One call's counters as EXPLAIN ANALYZE shows them.
pub fn describe(s: &Snapshot) -> String {
    let mut retries = if s.retries > 0 {
        format!(" retries={}", s.retries)
    } else {
        String::new()
    };
    if s.failed > 0 {
        retries.push_str(&format!(" failed_as_null={}", s.failed));
    }
    // Remote models: the endpoint's adaptive in-flight target, push-backs and admission waits.
    if s.in_flight_target > 0 {
        retries.push_str(&format!(
            " in_flight_target={} pushbacks={} admission_wait={:.3}s",
            s.in_flight_target,
            s.pushbacks,
            s.admission_wait.as_secs_f64()
        ));
    }
    format!(
        "calls={} cache_hits={} input_tokens={} output_tokens={} batches={}{retries} time={:.3}s",
        s.rows,
        s.cache_hits,
        s.input_tokens,
        s.output_tokens,
        s.batches,
        s.time.as_secs_f64()
    )
}

impl DisplayAs for ModelCallsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ModelCallsExec: ")?;
        let entries = self.calls.entries();
        for (i, info) in self.infos.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{}", info.label)?;
            if let Some(m) = &info.model {
                write!(f, " [model={m}]")?;
            }
            if let Some(e) = entries.iter().find(|e| e.label == info.label)
                && e.started()
            {
                write!(f, " [{}]", describe(&e.snapshot()))?;
            }
        }
        Ok(())
    }
}

impl ExecutionPlan for ModelCallsExec {
    fn name(&self) -> &str {
        "ModelCallsExec"
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
        Ok(Arc::new(Self::new(inner, Arc::clone(&self.models))?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.models.activity().register(&self.calls);
        let inner = self.inner.execute(partition, context)?;
        Ok(Box::pin(CountedStream {
            inner,
            calls: Arc::clone(&self.calls),
            running: Arc::clone(&self.running),
            done: false,
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.inner.metrics()
    }
}

/// The inner stream, polled with the node's counters current.
struct CountedStream {
    inner: SendableRecordBatchStream,
    calls: Arc<NodeCalls>,
    running: Arc<AtomicUsize>,
    done: bool,
}

impl Stream for CountedStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let calls = Arc::clone(&this.calls);
        let polled = calls.sync_scope(|| this.inner.as_mut().poll_next(cx));
        if let Poll::Ready(None) = polled
            && !this.done
        {
            this.done = true;
            if this.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                for e in this.calls.entries() {
                    e.finish();
                }
            }
        }
        polled
    }
}

impl RecordBatchStream for CountedStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}
