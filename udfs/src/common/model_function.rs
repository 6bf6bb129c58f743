//! What a model function is: its arguments, options and Arrow output. [`ModelCall`] runs it
//! (the DataFusion UDF traits, implemented once): it resolves the model named by the first
//! argument once per batch — for the result cache's key and, when some rows are not cached,
//! for the call — checks it can do what the function needs, and hands the rows to
//! [`ModelFunction::run`].
//!
//! [`ModelCall`]: super::call_wrapper::ModelCall

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{ReturnFieldArgs, ScalarFunctionArgs, Signature};

use super::function_args::{model_err, text_args};
use crate::models::model::{Capability, Model};
use crate::models::{ModelRegistry, ModelSpec, PrefflowOptions};

/// A model function: `name(model, ...)`.
#[async_trait::async_trait]
pub trait ModelFunction:
    std::fmt::Debug + PartialEq + Eq + std::hash::Hash + Send + Sync + 'static
{
    /// The SQL name.
    const NAME: &'static str;
    /// What the model must be able to do; None when only its tokenizer is read.
    const NEEDS: Option<Capability>;
    /// Whether results go to the result cache (not when they are cheaper to recompute).
    const CACHED: bool = true;
    /// Whether `on_error 'record'` can say which row failed (its requests map to rows).
    const RECORDS: bool = true;

    /// The arguments it takes.
    fn signature(&self) -> &Signature;

    /// Checks the arguments and options while planning (the model was checked already) and
    /// gives the output type.
    fn plan(&self, call: &Planning<'_>) -> Result<DataType>;

    /// The output for every row of the call.
    async fn run(&self, call: &Call<'_>) -> Result<ArrayRef>;
}

/// A call being planned.
pub struct Planning<'a> {
    pub function: &'static str,
    /// The declared model the first argument names.
    pub spec: ModelSpec,
    pub registry: &'a ModelRegistry,
    pub args: &'a ReturnFieldArgs<'a>,
}

impl Planning<'_> {
    /// Checks that the arguments at `positions` are text (see [`text_args`]).
    pub fn text_args(&self, positions: &[(usize, &str)]) -> Result<()> {
        text_args(self.function, self.args, positions)
    }
}

/// A call running on a batch's rows (all of them, or those the result cache lacks).
pub struct Call<'a> {
    pub spec: &'a ModelSpec,
    pub settings: &'a PrefflowOptions,
    pub registry: &'a ModelRegistry,
    pub args: &'a ScalarFunctionArgs,
    /// What the model must do (the function's [`ModelFunction::NEEDS`]).
    pub(crate) needs: Option<Capability>,
    /// The batch's model, loaded by the first call of the batch that asks for it.
    pub(crate) model: &'a tokio::sync::OnceCell<Model>,
}

impl<'a> Call<'a> {
    pub fn rows(&self) -> usize {
        self.args.number_rows
    }

    /// The batch's model, loaded (once per session) the first time a call asks for it.
    pub async fn model(&self, function: &str) -> Result<&'a Model> {
        let model: &'a tokio::sync::OnceCell<Model> = self.model;
        model
            .get_or_try_init(|| async {
                let what = self.needs.ok_or_else(|| {
                    DataFusionError::Internal(format!("{function} reads only a tokenizer"))
                })?;
                self.registry
                    .resolve(self.spec, self.settings, what)
                    .await
                    .map_err(|e| model_err(function, e))
            })
            .await
    }

    /// Generates `n` samples per prompt with the call's model (see
    /// [`crate::models::generation::generate`]); None for a NULL prompt.
    pub async fn generate(
        &self,
        function: &str,
        prompts: &dyn datafusion::arrow::array::Array,
        options: &crate::models::types::GenerateParams,
        n: usize,
    ) -> Result<Vec<Option<Vec<String>>>> {
        crate::models::generation::generate(
            function,
            self.model(function).await?,
            self.spec,
            prompts,
            options,
            n,
        )
        .await
    }
}
