//! `strip_think(text)`: the answer of a reasoning model without its thinking.
//!
//! ```sql
//! SELECT strip_think('<think>2+2 is 4</think> The answer is 4.');  -- 'The answer is 4.'
//! ```
//!
//! Rules, in order: a `</think>` with no opening tag before it (templates that pre-fill
//! `<think>` in the prompt) is stray, and everything up to the last stray `</think>` goes;
//! every complete `<think>…</think>` block in the rest is removed;
//! an unclosed `<think>` (generation stopped mid-thought) removes everything after it, leaving
//! an empty answer. The result is trimmed. NULL in, NULL out.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::common::text::{expect_args, map_strings};

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// The `strip_think` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct StripThink {
    signature: Signature,
}

impl StripThink {
    /// A new `strip_think`.
    pub fn new() -> Self {
        Self {
            signature: Signature::string(1, Volatility::Immutable),
        }
    }
}

impl Default for StripThink {
    fn default() -> Self {
        Self::new()
    }
}

/// Removes thinking from one text (see the module docs for the rules).
pub fn strip_think(text: &str) -> String {
    let rest = &text[after_last_stray_close(text)..];
    let mut rest = rest;
    let mut out = String::with_capacity(rest.len());
    while let Some(open) = rest.find(OPEN) {
        out.push_str(&rest[..open]);
        match rest[open..].find(CLOSE) {
            Some(close) => rest = &rest[open + close + CLOSE.len()..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out.trim().to_string()
}

/// The byte offset just past the last `</think>` that closes no `<think>` (0 if there is none).
/// Tags do not nest: a `<think>` inside an open block is text, the next `</think>` closes it.
fn after_last_stray_close(text: &str) -> usize {
    let mut cut = 0;
    let mut open = false;
    let mut at = 0;
    while let Some(i) = text[at..].find('<') {
        let pos = at + i;
        let tail = &text[pos..];
        if tail.starts_with(OPEN) {
            open = true;
            at = pos + OPEN.len();
        } else if tail.starts_with(CLOSE) {
            if !open {
                cut = pos + CLOSE.len();
            }
            open = false;
            at = pos + CLOSE.len();
        } else {
            at = pos + 1;
        }
    }
    cut
}

impl ScalarUDFImpl for StripThink {
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        crate::docs::documentation(self.name())
    }

    fn name(&self) -> &str {
        "strip_think"
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
            Ok(Some(strip_think(row[0])))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::strip_think;

    #[test]
    fn rules() {
        assert_eq!(strip_think("<think>a</think> b"), "b");
        assert_eq!(
            strip_think("x <think>a</think> y <think>b</think> z"),
            "x  y  z"
        );
        assert_eq!(strip_think("thought</think>\nanswer"), "answer");
        assert_eq!(strip_think("answer <think>cut off"), "answer");
        assert_eq!(strip_think("plain"), "plain");
        // Everything up to the last stray closing tag goes.
        assert_eq!(strip_think("</think>x</think>y"), "y");
        assert_eq!(strip_think("a</think>b<think>c</think>d</think>e"), "e");
        assert_eq!(strip_think("a</think>b<think>c</think>d"), "bd");
    }
}
