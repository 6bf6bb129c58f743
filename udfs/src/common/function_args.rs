//! What every model function shares: reading the model argument, the session's settings,
//! tokenizing off the async runtime, and naming the function in every error.

pub use crate::models::boundary::{FunctionError, blocking, model_err};

use std::sync::Arc;

use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, ReturnFieldArgs};

use crate::models::{ModelRegistry, ModelSpec};

/// The model named by a literal first argument, at planning time.
pub fn planned_model(
    function: &str,
    registry: &ModelRegistry,
    args: &ReturnFieldArgs,
    what: Option<crate::models::model::Capability>,
) -> Result<ModelSpec> {
    let plan = |e: crate::models::ModelError| DataFusionError::Plan(format!("{function}: {e}"));
    match args.scalar_arguments.first().copied().flatten() {
        Some(s) => match s.try_as_str().flatten() {
            Some(name) => {
                let spec = registry.spec(name).map_err(plan)?;
                // A model that cannot do what the function asks (a decoder given to ai_embed)
                // is refused while planning, before any row is read.
                if let Some(what) = what
                    && !spec.kind.can(what)
                {
                    return Err(plan(spec.kind.cannot(&spec.name, what)));
                }
                Ok(spec)
            }
            None => plan_err!(
                "{function}: the model must be a string naming a declared model or a model path"
            ),
        },
        None => plan_err!(
            "{function}: the model must be a literal (a name from CREATE MODEL, or a model path), not a column"
        ),
    }
}

/// The model named by the first argument, at execution time.
pub fn executed_model(
    function: &str,
    registry: &ModelRegistry,
    arg: &ColumnarValue,
) -> Result<ModelSpec> {
    match arg {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(s)))
        | ColumnarValue::Scalar(ScalarValue::Utf8View(Some(s)))
        | ColumnarValue::Scalar(ScalarValue::LargeUtf8(Some(s))) => {
            registry.spec(s).map_err(|e| model_err(function, e))
        }
        _ => exec_err!("{function}: the model must be a literal string"),
    }
}

/// The registry shared by a session's model functions; compared by identity.
#[derive(Debug, Clone)]
pub struct SharedRegistry(pub Arc<ModelRegistry>);

impl PartialEq for SharedRegistry {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedRegistry {}

impl std::hash::Hash for SharedRegistry {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state)
    }
}

/// Checks that the arguments at `positions` are strings (text of any Arrow string type, or
/// NULL). Model functions take `Signature::any` rather than `Signature::string`: coercing
/// every argument to one string type would wrap the model name in a CAST next to a Utf8View
/// column, and it would no longer be the literal the planner needs.
pub fn text_args(
    function: &str,
    args: &ReturnFieldArgs,
    positions: &[(usize, &str)],
) -> Result<()> {
    use datafusion::arrow::datatypes::DataType;
    for (i, what) in positions {
        let t = args.arg_fields[*i].data_type();
        if !matches!(
            t,
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null
        ) {
            return plan_err!("{function}: {what} must be text, got {t}");
        }
    }
    Ok(())
}
