//! `apply_chat_template(model_or_template, messages [, add_generation_prompt])`: a conversation
//! rendered as the model reads it.
//!
//! ```sql
//! CREATE MODEL policy FROM 'models/smollm2-135m-instruct';
//! SELECT apply_chat_template('policy', messages) AS text FROM sft;
//! SELECT apply_chat_template('policy', question, true) AS prompt FROM questions;
//! SELECT apply_chat_template('{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}', messages);
//! ```
//!
//! The first argument names a model (its chat template from GGUF metadata, chat_template.jinja
//! or tokenizer_config.json, or CREATE MODEL OPTIONS (chat_template ...)), or is a Jinja template
//! itself. Messages are a list of {role, content} structs (more fields are passed through, as
//! Hugging Face templates see them) or text, taken as one user turn. add_generation_prompt
//! (default false, as in transformers) appends the assistant header. Only the model's small
//! metadata files are read, never its weights. NULL messages give NULL.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::common::function_args::{SharedRegistry, model_err};
use crate::models::ModelRegistry;
use crate::models::chat::ChatPrompts;
use crate::models::values::to_template_value;

const NAME: &str = "apply_chat_template";

/// The `apply_chat_template` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ApplyChatTemplate {
    registry: SharedRegistry,
    signature: Signature,
}

impl ApplyChatTemplate {
    /// `apply_chat_template` over a session's models.
    pub fn new(registry: Arc<ModelRegistry>) -> Self {
        Self {
            registry: SharedRegistry(registry),
            signature: Signature::one_of(
                vec![
                    datafusion::logical_expr::TypeSignature::Any(2),
                    datafusion::logical_expr::TypeSignature::Any(3),
                ],
                Volatility::Stable,
            ),
        }
    }

    /// The renderer for the first argument: a model's template, or the text as a template.
    fn prompts(&self, model_or_template: &str) -> Result<ChatPrompts> {
        match self.registry.0.spec(model_or_template) {
            Ok(spec) => {
                let info = self
                    .registry
                    .0
                    .decoder_info(&spec)
                    .map_err(|e| model_err(NAME, e))?;
                ChatPrompts::new(NAME, &spec, &info)
            }
            Err(_) if model_or_template.contains("{{") || model_or_template.contains("{%") => {
                ChatPrompts::from_template(NAME, model_or_template)
            }
            Err(e) => Err(DataFusionError::Execution(format!(
                "{NAME}: '{model_or_template}' is neither a declared model nor a Jinja template ({e})"
            ))),
        }
    }
}

fn literal_str(v: Option<&ScalarValue>) -> Option<Option<&str>> {
    v.map(|s| s.try_as_str().flatten())
}

impl ScalarUDFImpl for ApplyChatTemplate {
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        crate::docs::documentation(self.name())
    }

    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(
        &self,
        args: ReturnFieldArgs,
    ) -> Result<datafusion::arrow::datatypes::FieldRef> {
        // Check the model or template while planning, so a typo fails before any row is read.
        match literal_str(args.scalar_arguments[0]) {
            Some(Some(first)) => {
                self.prompts(first)
                    .map_err(|e| DataFusionError::Plan(e.message().to_string()))?;
            }
            _ => {
                return plan_err!(
                    "{NAME}: the first argument must be a literal model name or template"
                );
            }
        }
        if let Some(f) = args.arg_fields.get(2)
            && !matches!(f.data_type(), DataType::Boolean | DataType::Null)
        {
            return plan_err!(
                "{NAME}: add_generation_prompt must be a boolean, got {}",
                f.data_type()
            );
        }
        let messages = args.arg_fields[1].data_type();
        if !matches!(
            messages,
            DataType::Utf8
                | DataType::Utf8View
                | DataType::LargeUtf8
                | DataType::Null
                | DataType::List(_)
                | DataType::LargeList(_)
        ) {
            return plan_err!(
                "{NAME}: messages must be a list of {{role, content}} structs or text, got {messages}"
            );
        }
        Ok(Arc::new(datafusion::arrow::datatypes::Field::new(
            NAME,
            DataType::Utf8,
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let first = match &args.args[0] {
            ColumnarValue::Scalar(s) => s.try_as_str().flatten().map(str::to_string),
            _ => None,
        };
        let Some(first) = first else {
            return exec_err!("{NAME}: the first argument must be a literal string");
        };
        let prompts = self.prompts(&first)?;
        let rows = args.number_rows;
        let messages = args.args[1].to_array(rows)?;
        let generation = match args.args.get(2) {
            None => None,
            Some(a) => Some(a.to_array(rows)?),
        };
        let nulls = messages.logical_nulls();
        // Logical nulls: a Null-typed argument has no validity buffer but is NULL everywhere.
        let generation_nulls = generation.as_ref().and_then(|g| g.logical_nulls());
        let mut out = StringBuilder::new();
        for i in 0..rows {
            let null_flag = generation_nulls.as_ref().is_some_and(|n| n.is_null(i));
            if nulls.as_ref().is_some_and(|n| n.is_null(i)) || null_flag {
                out.append_null();
                continue;
            }
            let add = match &generation {
                Some(g) => g.as_boolean_opt().is_some_and(|b| b.value(i)),
                None => false,
            };
            let value = to_template_value(messages.as_ref(), i)?;
            out.append_value(prompts.render(NAME, value, add)?);
        }
        let array: ArrayRef = Arc::new(out.finish());
        if args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)))
        {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &array, 0,
            )?));
        }
        Ok(ColumnarValue::Array(array))
    }
}
