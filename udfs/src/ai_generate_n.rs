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
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, Signature, TypeSignature, Volatility};

use crate::common::generate_options::parse_options;
use crate::common::model_function::{Call, ModelFunction, Planning};
use crate::models::model::Capability;
use crate::models::types::GenerateParams;

/// Most samples per prompt; a larger n is almost certainly a typo.
const MAX_N: i64 = 1024;

/// The `ai_generate_n` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AiGenerateN {
    signature: Signature,
}

impl Default for AiGenerateN {
    fn default() -> Self {
        Self {
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

#[async_trait::async_trait]
impl ModelFunction for AiGenerateN {
    const NAME: &'static str = "ai_generate_n";
    const NEEDS: Option<Capability> = Some(Capability::Generate);

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn plan(&self, call: &Planning<'_>) -> Result<DataType> {
        let args = call.args;
        match args.scalar_arguments.get(2).copied().flatten() {
            Some(n) => {
                check_n(n).map_err(DataFusionError::Plan)?;
            }
            None => return plan_err!("ai_generate_n: n must be a literal whole number"),
        }
        if let Some(Some(options)) = args.scalar_arguments.get(3) {
            parse_options(Self::NAME, Some(options)).map_err(DataFusionError::Plan)?;
        }
        Ok(list_type())
    }

    async fn run(&self, call: &Call<'_>) -> Result<ArrayRef> {
        let name = Self::NAME;
        let args = call.args;
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
        let rows = call.generate(name, prompts.as_ref(), &options, n).await?;
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
        Ok(Arc::new(out.finish()))
    }
}
