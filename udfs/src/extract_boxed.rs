//! `extract_boxed(text)`: the content of the last `\boxed{…}` in a text, the usual way of
//! reading a math answer.
//!
//! ```sql
//! SELECT extract_boxed('so x = \boxed{\frac{1}{2}}');  -- '\frac{1}{2}'
//! ```
//!
//! Nested braces are matched; `\fbox{…}` counts too. NULL when there is no balanced `\boxed{…}`
//! or the input is NULL.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::common::text::{expect_args, map_strings};

/// The `extract_boxed` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ExtractBoxed {
    signature: Signature,
}

impl ExtractBoxed {
    /// A new `extract_boxed`.
    pub fn new() -> Self {
        Self {
            signature: Signature::string(1, Volatility::Immutable),
        }
    }
}

impl Default for ExtractBoxed {
    fn default() -> Self {
        Self::new()
    }
}

/// The content of the balanced brace group opening at byte `open` (which holds `{`).
fn balanced(text: &str, open: usize) -> Option<&str> {
    let mut depth = 0usize;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[open + 1..open + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The content of the last balanced `\boxed{…}` (or `\fbox{…}`) in `text`.
pub fn extract_boxed(text: &str) -> Option<&str> {
    let mut best: Option<(usize, &str)> = None;
    for macro_name in ["\\boxed", "\\fbox"] {
        for (at, _) in text.match_indices(macro_name) {
            let after = at + macro_name.len();
            let open = after + text[after..].len() - text[after..].trim_start().len();
            if !text[open..].starts_with('{') {
                continue;
            }
            if let Some(content) = balanced(text, open)
                && best.is_none_or(|(b, _)| at > b)
            {
                best = Some((at, content));
            }
        }
    }
    best.map(|(_, c)| c.trim())
}

impl ScalarUDFImpl for ExtractBoxed {
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        crate::docs::documentation(self.name())
    }

    fn name(&self) -> &str {
        "extract_boxed"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        expect_args(self.name(), &args.args, 1)?;
        map_strings(&args.args, args.number_rows, |row| {
            Ok(extract_boxed(row[0]).map(str::to_string))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::extract_boxed;

    #[test]
    fn last_balanced() {
        assert_eq!(
            extract_boxed(r"\boxed{1} then \boxed{\frac{a}{b}}"),
            Some(r"\frac{a}{b}")
        );
        assert_eq!(extract_boxed(r"\boxed{unbalanced"), None);
        assert_eq!(extract_boxed(r"\fbox{7}"), Some("7"));
        assert_eq!(extract_boxed("no box"), None);
    }
}
