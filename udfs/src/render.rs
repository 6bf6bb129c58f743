//! `render(template, struct)`: fills a Jinja template (minijinja) with a row's fields.
//!
//! ```sql
//! SELECT render('Q: {{ q }}{% for s in shots %} | {{ s }}{% endfor %}',
//!               named_struct('q', question, 'shots', examples)) FROM t;
//! ```
//!
//! The struct's fields are the template's variables (nested structs and lists included). An
//! undefined variable is an error rather than an empty string, so a typo cannot silently
//! produce empty prompts. NULL template or NULL struct gives NULL.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use minijinja::{Environment, UndefinedBehavior};

use crate::common::text::{expect_args, string_arg};
use crate::models::values::to_template_value;

/// The `render` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Render {
    signature: Signature,
}

impl Render {
    /// A new `render`.
    pub fn new() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl Default for Render {
    fn default() -> Self {
        Self::new()
    }
}

/// The template environment every prefflow template renders in.
pub fn template_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    crate::models::template::bound(&mut env);
    env
}

impl ScalarUDFImpl for Render {
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        crate::docs::documentation(self.name())
    }

    fn name(&self) -> &str {
        "render"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if !matches!(
            arg_types[0],
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
        ) {
            return plan_err!(
                "render: the template must be a string, got {}",
                arg_types[0]
            );
        }
        if !matches!(arg_types[1], DataType::Struct(_) | DataType::Null) {
            return plan_err!(
                "render: the second argument must be a struct such as named_struct('name', value, ...), got {}",
                arg_types[1]
            );
        }
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        expect_args(self.name(), &args.args, 2)?;
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = if all_scalar { 1 } else { args.number_rows };
        let templates = string_arg(&args.args[0], rows)?;
        let values = args.args[1].to_array(rows)?;

        // Templates are compiled once per distinct text in the batch (usually one literal).
        let mut env = template_environment();
        let mut names: HashMap<&str, String> = HashMap::new();
        for i in 0..rows {
            if templates.is_null(i) || values.is_null(i) {
                continue;
            }
            let source = templates.value(i);
            if !names.contains_key(source) {
                let n = format!("t{}", names.len());
                if let Err(e) = env.add_template_owned(n.clone(), source.to_string()) {
                    return exec_err!("render: invalid template: {e}");
                }
                names.insert(source, n);
            }
        }
        let env = Arc::new(env);
        let mut out = StringBuilder::with_capacity(rows, rows * 64);
        for i in 0..rows {
            if templates.is_null(i) || values.is_null(i) {
                out.append_null();
                continue;
            }
            let ctx = to_template_value(values.as_ref(), i)?;
            let text = crate::models::template::render(&env, &names[templates.value(i)], ctx)
                .or_else(|e| exec_err!("render: {e}"))?;
            out.append_value(text);
        }
        let array: ArrayRef = Arc::new(out.finish());
        if all_scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &array, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(array))
        }
    }
}
