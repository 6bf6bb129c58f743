//! `ai_generate_n(model, prompt, n [, options])`: n samples per prompt sharing one prefill.
//!
//! ```sql
//! SELECT prompt, unnest(ai_generate_n('policy', prompt, 4, named_struct('temperature', 0.8, 'seed', 1)))
//!        AS response
//! FROM prompts;
//! ```
//!
//! Returns List<Utf8> of n texts. The prompt is processed once and every sample continues from
//! it; sample k of a row is seeded from (prompt text, k, run seed), so samples differ from each
//! other and reproduce exactly on a rerun. Prompt and options work as in ai_generate (with
//! temperature 0 all n samples are the same greedy text). NULL prompt gives NULL.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, ListBuilder, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, internal_err, plan_err};
use datafusion::logical_expr::async_udf::AsyncScalarUDFImpl;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};

use crate::ai_generate::{generate_for_call, parse_options};
use crate::common::function_args::{SharedRegistry, planned_model};
use crate::models::ModelRegistry;
use crate::models::types::GenerateParams;

/// Most samples per prompt; a larger n is almost certainly a typo.
const MAX_N: i64 = 1024;

/// The `ai_generate_n` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AiGenerateN {
    registry: SharedRegistry,
    signature: Signature,
}

impl AiGenerateN {
    /// `ai_generate_n` over a session's models.
    pub fn new(registry: Arc<ModelRegistry>) -> Self {
        Self {
            registry: SharedRegistry(registry),
            signature: Signature::one_of(
                vec![TypeSignature::Any(3), TypeSignature::Any(4)],
                Volatility::Volatile,
            ),
        }
    }
}

fn check_n(value: &ScalarValue) -> Result<usize, String> {
    match value.cast_to(&DataType::Int64) {
        Ok(ScalarValue::Int64(Some(n))) if (1..=MAX_N).contains(&n) => Ok(n as usize),
        _ => Err(format!(
            "ai_generate_n: n must be a whole number from 1 to {MAX_N}, got {value}"
        )),
    }
}

fn list_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

impl ScalarUDFImpl for AiGenerateN {
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        crate::docs::documentation(self.name())
    }

    fn name(&self) -> &str {
        "ai_generate_n"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(list_type())
    }

    fn return_field_from_args(
        &self,
        args: ReturnFieldArgs,
    ) -> Result<datafusion::arrow::datatypes::FieldRef> {
        planned_model(
            self.name(),
            &self.registry.0,
            &args,
            Some(crate::models::model::Capability::Generate),
        )?;
        match args.scalar_arguments.get(2).copied().flatten() {
            Some(n) => {
                check_n(n).map_err(DataFusionError::Plan)?;
            }
            None => return plan_err!("ai_generate_n: n must be a literal whole number"),
        }
        if let Some(Some(options)) = args.scalar_arguments.get(3) {
            parse_options(self.name(), Some(options)).map_err(DataFusionError::Plan)?;
        }
        Ok(Arc::new(Field::new(self.name(), list_type(), true)))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        internal_err!("ai_generate_n runs asynchronously")
    }
}

#[async_trait::async_trait]
impl AsyncScalarUDFImpl for AiGenerateN {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let n = match &args.args[2] {
            ColumnarValue::Scalar(v) => check_n(v).map_err(DataFusionError::Execution)?,
            _ => return exec_err!("ai_generate_n: n must be a literal whole number"),
        };
        let options = match args.args.get(3) {
            Some(ColumnarValue::Scalar(s)) => {
                parse_options(name, Some(s)).map_err(DataFusionError::Execution)?
            }
            Some(_) => return exec_err!("ai_generate_n: options must be a literal"),
            None => GenerateParams::default(),
        };
        let prompts: ArrayRef = args.args[1].to_array(args.number_rows)?;
        let rows =
            generate_for_call(name, &self.registry.0, &args, prompts.as_ref(), &options, n).await?;
        let mut out = ListBuilder::new(StringBuilder::new());
        for row in rows {
            match row {
                Some(texts) => {
                    for t in texts {
                        out.values().append_value(t);
                    }
                    out.append(true);
                }
                None => out.append(false),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
