//! Query files: splitting into statements (with the line each starts on) and `${name}`
//! parameters.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{PrefflowError, Result};

/// One SQL statement of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement text, comments blanked out, without the closing `;`.
    pub sql: String,
    /// The 1-based line on which the statement starts.
    pub line: usize,
}

/// A named list of statements: a query file or a `prefflow sql` string.
#[derive(Debug, Clone)]
pub struct Script {
    /// Shown in error locations: the file path, or `<sql>`.
    pub name: String,
    /// The statements in order.
    pub statements: Vec<Statement>,
}

impl Script {
    /// Reads and splits a query file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| PrefflowError::io(path, e))?;
        Self::parse(path.display().to_string(), &text)
    }

    /// Splits `text` into statements; `name` appears in error messages.
    pub fn parse(name: impl Into<String>, text: &str) -> Result<Self> {
        let name = name.into();
        let statements = split_statements(text)
            .map_err(|(line, msg)| PrefflowError::Script(format!("{name}:{line}: {msg}")))?;
        Ok(Self { name, statements })
    }

    /// `name:line` of a statement, for error messages.
    pub fn location(&self, statement: &Statement) -> String {
        format!("{}:{}", self.name, statement.line)
    }
}

/// Splits SQL text on top-level `;`. Quotes (`'…'` with `''` escapes, `"…"`), `--` line
/// comments and nested `/* */` comments are understood; comments are replaced by spaces so
/// line numbers and parameters inside them cannot matter.
pub fn split_statements(text: &str) -> std::result::Result<Vec<Statement>, (usize, String)> {
    #[derive(PartialEq)]
    enum State {
        Code,
        Single,
        Double,
        Line,
        Block(usize),
    }
    let chars: Vec<char> = text.chars().collect();
    let mut state = State::Code;
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start_line: Option<usize> = None;
    let mut line = 1;
    let mut quote_line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match state {
            State::Code => match c {
                ';' => {
                    if let Some(l) = start_line.take() {
                        out.push(Statement {
                            sql: current.trim().to_string(),
                            line: l,
                        });
                    }
                    current.clear();
                    i += 1;
                    continue;
                }
                '-' if next == Some('-') => {
                    state = State::Line;
                    current.push_str("  ");
                    i += 2;
                    continue;
                }
                '/' if next == Some('*') => {
                    state = State::Block(1);
                    quote_line = line;
                    current.push_str("  ");
                    i += 2;
                    continue;
                }
                '\'' => {
                    state = State::Single;
                    quote_line = line;
                }
                '"' => {
                    state = State::Double;
                    quote_line = line;
                }
                _ => {}
            },
            State::Single => {
                if c == '\'' {
                    if next == Some('\'') {
                        current.push_str("''");
                        i += 2;
                        continue;
                    }
                    state = State::Code;
                }
            }
            State::Double => {
                if c == '"' {
                    state = State::Code;
                }
            }
            State::Line => {
                if c == '\n' {
                    state = State::Code;
                } else {
                    current.push(' ');
                    i += 1;
                    continue;
                }
            }
            State::Block(depth) => {
                if c == '*' && next == Some('/') {
                    state = if depth == 1 {
                        State::Code
                    } else {
                        State::Block(depth - 1)
                    };
                    current.push_str("  ");
                    i += 2;
                    continue;
                }
                if c == '/' && next == Some('*') {
                    state = State::Block(depth + 1);
                    current.push_str("  ");
                    i += 2;
                    continue;
                }
                current.push(if c == '\n' { '\n' } else { ' ' });
                if c == '\n' {
                    line += 1;
                }
                i += 1;
                continue;
            }
        }
        if start_line.is_none() && !c.is_whitespace() {
            start_line = Some(line);
        }
        if c == '\n' {
            line += 1;
        }
        current.push(c);
        i += 1;
    }
    match state {
        State::Single | State::Double => {
            return Err((quote_line, "unterminated quoted string".to_string()));
        }
        State::Block(_) => return Err((quote_line, "unterminated /* comment".to_string())),
        _ => {}
    }
    if let Some(l) = start_line {
        out.push(Statement {
            sql: current.trim().to_string(),
            line: l,
        });
    }
    Ok(out)
}

/// Replaces `${name}` (or `${name:-default}`) with parameter values. A default may itself hold
/// parameters (`${target:-${out_dir:-out}/pairs}`). A name with neither a value nor a default
/// is an error naming it, so a typo never runs as an empty string.
/// The `--param` values `sql` uses (`${name}` with a value given), as `name='value'`, for an
/// error that a value may have caused.
pub fn used_params(sql: &str, params: &HashMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = sql;
    while let Some(at) = rest.find("${") {
        rest = &rest[at + 2..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if let Some(value) = params.get(&name) {
            let shown: String = value.chars().take(60).collect();
            let entry = format!("{name}='{shown}'");
            if !out.contains(&entry) {
                out.push(entry);
            }
        }
    }
    out
}

pub fn substitute(
    sql: &str,
    params: &HashMap<String, String>,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        // The matching brace: defaults may nest `${…}`.
        let mut depth = 0usize;
        let mut end = None;
        for (i, c) in after.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = Some(i);
                    break;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        let Some(end) = end else {
            return Err("unclosed ${ in statement".to_string());
        };
        let body = &after[..end];
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(format!("invalid parameter name '${{{body}}}'"));
        }
        match (params.get(name), default) {
            (Some(v), _) => out.push_str(v),
            (None, Some(d)) => out.push_str(&substitute(d, params)?),
            (None, None) => {
                return Err(format!(
                    "unknown parameter '{name}': pass --param {name}=VALUE or write ${{{name}:-default}}"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_with_lines_quotes_and_comments() {
        let text = "-- header; not a statement\nSELECT 1;\n\nSELECT 'a;b' /* ; */,\n  2 -- x;\n;\n/* tail */";
        let s = split_statements(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].line, 2);
        assert_eq!(s[0].sql, "SELECT 1");
        assert_eq!(s[1].line, 4);
        assert!(s[1].sql.starts_with("SELECT 'a;b'"));
        assert!(!s[1].sql.contains("x;"));
    }

    #[test]
    fn escaped_quote_and_unterminated() {
        let s = split_statements("SELECT 'it''s; ok'; SELECT 2").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            split_statements("SELECT 1;\nSELECT 'oops").unwrap_err().0,
            2
        );
    }

    #[test]
    fn parameters() {
        let p = HashMap::from([("n".to_string(), "3".to_string())]);
        assert_eq!(substitute("LIMIT ${n}", &p).unwrap(), "LIMIT 3");
        assert_eq!(
            substitute("'${out:-x.parquet}'", &p).unwrap(),
            "'x.parquet'"
        );
        assert_eq!(
            substitute("'${target:-${out:-y}/pairs}' ${target:-${n}}", &p).unwrap(),
            "'y/pairs' 3"
        );
        assert!(
            substitute("${missing}", &p)
                .unwrap_err()
                .contains("missing")
        );
    }
}

/// A SQL syntax error of a statement starting on `first_line`: the file line it is on and the
/// parser's message without its position (`Expected: …, found: … at Line: 3, Column: 5`) and
/// without Rust's Debug wrapping.
pub fn syntax_error(e: &crate::error::PrefflowError, first_line: usize) -> Option<(usize, String)> {
    use datafusion::error::DataFusionError;
    use datafusion::sql::sqlparser::parser::ParserError;
    let crate::error::PrefflowError::DataFusion(e) = e else {
        return None;
    };
    let DataFusionError::SQL(pe, _) = e.find_root() else {
        return None;
    };
    let message = match pe.as_ref() {
        ParserError::ParserError(m) | ParserError::TokenizerError(m) => m.clone(),
        ParserError::RecursionLimitExceeded => "the statement is nested too deeply".to_string(),
    };
    let (text, line) = match message.rfind(" at Line: ") {
        Some(at) => {
            let rest = &message[at + " at Line: ".len()..];
            let l = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(1);
            (message[..at].to_string(), first_line + l.max(1) - 1)
        }
        None => (message, first_line),
    };
    Some((line, format!("syntax error: {text}")))
}
