//! `ai_generate(model, prompt [, options])`: text from a decoder model.
//!
//! ```sql
//! CREATE MODEL policy FROM 'models/smollm2-135m-instruct';
//! SELECT ai_generate('policy', question, named_struct('max_tokens', 64)) FROM prompts;
//! SELECT ai_generate('policy', [named_struct('role', 'system', 'content', 'Be brief.'),
//!                              named_struct('role', 'user', 'content', q)]) FROM t;
//! ```
//!
//! A text prompt is a user turn; a list of {role, content} structs is a conversation. Either is
//! rendered with the model's chat template (GGUF metadata, or CREATE MODEL OPTIONS
//! (chat_template '...')), unless the options say `chat` false (raw completion). Options, a
//! struct literal: temperature (0 = greedy, the default; at most 2), top_p, top_k, max_tokens
//! (default 256), stop (a string or list of strings), seed (default 0), chat (default true),
//! truncate (default false: a prompt over the model's context is an error naming the row; true
//! keeps the prompt's last tokens so that prompt and max_tokens fit). An unknown option is an
//! error. Each row samples with a seed made from its prompt text, the
//! sample index and the run seed, so results do not depend on batch size, partitions or
//! restarts. Generation stops at the model's end-of-turn tokens, max_tokens or a stop string
//! (not included). NULL prompt gives NULL.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, exec_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, Signature, TypeSignature, Volatility};

pub use crate::common::generate_options::{parse_options, parse_options_with};
use crate::common::model_function::{Call, ModelFunction, Planning};
use crate::models::model::Capability;
use crate::models::types::GenerateParams;

/// The `ai_generate` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AiGenerate {
    signature: Signature,
}

impl Default for AiGenerate {
    fn default() -> Self {
        Self {
            signature: Signature::one_of(
                vec![TypeSignature::Any(2), TypeSignature::Any(3)],
                Volatility::Volatile,
            ),
        }
    }
}

fn is_prompt_type(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null => true,
        DataType::List(f) | DataType::LargeList(f) => matches!(f.data_type(), DataType::Struct(_)),
        _ => false,
    }
}

#[async_trait::async_trait]
impl ModelFunction for AiGenerate {
    const NAME: &'static str = "ai_generate";
    const NEEDS: Option<Capability> = Some(Capability::Generate);

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn plan(&self, call: &Planning<'_>) -> Result<DataType> {
        let args = call.args;
        let prompt = args.arg_fields[1].data_type();
        if !is_prompt_type(prompt) {
            return plan_err!(
                "ai_generate: the prompt must be text or a list of {{role, content}} structs, got {prompt}"
            );
        }
        // named_struct(...) is folded to a literal after this point; a literal is checked now,
        // anything else when it runs.
        if let Some(Some(options)) = args.scalar_arguments.get(2) {
            parse_options(Self::NAME, Some(options)).map_err(DataFusionError::Plan)?;
        }
        if let Some(f) = args.arg_fields.get(2)
            && !matches!(f.data_type(), DataType::Struct(_))
        {
            return plan_err!(
                "ai_generate: options must be a struct such as named_struct('temperature', 0.7), got {}",
                f.data_type()
            );
        }
        Ok(DataType::Utf8)
    }

    async fn run(&self, call: &Call<'_>) -> Result<ArrayRef> {
        let name = Self::NAME;
        let rows = call.rows();
        let options = match call.args.args.get(2) {
            Some(ColumnarValue::Scalar(s)) => {
                parse_options(name, Some(s)).map_err(DataFusionError::Execution)?
            }
            Some(_) => return exec_err!("ai_generate: options must be a literal"),
            None => GenerateParams::default(),
        };
        let prompts: ArrayRef = call.args.args[1].to_array(rows)?;
        let samples = call.generate(name, prompts.as_ref(), &options, 1).await?;
        let mut out = StringBuilder::with_capacity(rows, rows * 64);
        for row in samples {
            match row {
                Some(mut texts) => out.append_value(texts.remove(0)),
                None => out.append_null(),
            }
        }
        Ok(Arc::new(out.finish()))
    }
}
