//! `extract_tag(text, tag)`: the content of the first `<tag>…</tag>` in a text.
//!
//! ```sql
//! SELECT extract_tag('<think>hmm</think><response>Paris</response>', 'response');  -- 'Paris'
//! ```
//!
//! The content is trimmed. NULL when the text has no complete `<tag>…</tag>` pair (a truncated
//! generation is not an answer), or when an argument is NULL. A tag must be a non-empty name
//! without `<`, `>` or white space.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::common::text::{expect_args, map_strings};

/// The `extract_tag` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ExtractTag {
    signature: Signature,
}

impl ExtractTag {
    /// A new `extract_tag`.
    pub fn new() -> Self {
        Self {
            signature: Signature::string(2, Volatility::Immutable),
        }
    }
}

impl Default for ExtractTag {
    fn default() -> Self {
        Self::new()
    }
}

/// The trimmed content of the first complete `<tag>…</tag>` in `text`.
pub fn extract_tag<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&close)?;
    Some(text[start..start + len].trim())
}

impl ScalarUDFImpl for ExtractTag {
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        crate::docs::documentation(self.name())
    }

    fn name(&self) -> &str {
        "extract_tag"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        expect_args(self.name(), &args.args, 2)?;
        map_strings(&args.args, args.number_rows, |row| {
            let tag = row[1];
            if tag.is_empty() || tag.contains(['<', '>']) || tag.contains(char::is_whitespace) {
                return exec_err!(
                    "extract_tag: tag must be a non-empty name without '<', '>' or spaces, got {tag:?}"
                );
            }
            Ok(extract_tag(row[0], tag).map(str::to_string))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::extract_tag;

    #[test]
    fn first_complete_pair() {
        assert_eq!(extract_tag("<a> x </a><a>y</a>", "a"), Some("x"));
        assert_eq!(extract_tag("<a>unclosed", "a"), None);
        assert_eq!(extract_tag("none", "a"), None);
    }
}
