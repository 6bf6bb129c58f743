//! The model statements DataFusion's SQL does not know: CREATE [OR REPLACE] MODEL,
//! DROP MODEL and SHOW MODELS. They are recognised by their first words and parsed with
//! DataFusion's own SQL tokenizer, so quoting works as everywhere else.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// A parsed model statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelStatement {
    /// `CREATE [OR REPLACE] MODEL [IF NOT EXISTS] name FROM 'uri' [OPTIONS (k 'v', …)]`
    Create {
        /// The model's name.
        name: String,
        /// Where its files are.
        uri: String,
        /// OPTIONS, keys lower-cased.
        options: BTreeMap<String, String>,
        /// OR REPLACE was given.
        or_replace: bool,
        /// IF NOT EXISTS was given.
        if_not_exists: bool,
    },
    /// `DROP MODEL [IF EXISTS] name`
    Drop {
        /// The model's name.
        name: String,
        /// IF EXISTS was given.
        if_exists: bool,
    },
    /// `SHOW MODELS`
    Show,
}

fn tokens(sql: &str) -> Option<Vec<Token>> {
    let dialect = GenericDialect {};
    let all = Tokenizer::new(&dialect, sql).tokenize().ok()?;
    Some(
        all.into_iter()
            .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
            .collect(),
    )
}

fn keyword(t: Option<&Token>, kw: &str) -> bool {
    matches!(t, Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
}

/// Parses `sql` if it is a model statement: None when it is not one (plain SQL), Some(Err)
/// when it starts like one but is malformed.
pub fn parse(sql: &str) -> Option<Result<ModelStatement, String>> {
    let t = tokens(sql)?;
    let mut i = 0;
    let at = |i: usize| t.get(i);
    if keyword(at(0), "show") && keyword(at(1), "models") {
        return Some(if t.len() == 2 {
            Ok(ModelStatement::Show)
        } else {
            Err("SHOW MODELS takes no arguments".to_string())
        });
    }
    if keyword(at(0), "drop") && keyword(at(1), "model") {
        i = 2;
        let if_exists = keyword(at(i), "if") && keyword(at(i + 1), "exists");
        if if_exists {
            i += 2;
        }
        return Some(match (at(i), t.len() == i + 1) {
            (Some(Token::Word(w)), true) => Ok(ModelStatement::Drop {
                name: w.value.clone(),
                if_exists,
            }),
            _ => Err("expected DROP MODEL [IF EXISTS] name".to_string()),
        });
    }
    if !keyword(at(0), "create") {
        return None;
    }
    i += 1;
    let or_replace = keyword(at(i), "or") && keyword(at(i + 1), "replace");
    if or_replace {
        i += 2;
    }
    if !keyword(at(i), "model") {
        return None;
    }
    i += 1;
    Some(parse_create(&t, i, or_replace))
}

fn parse_create(t: &[Token], mut i: usize, or_replace: bool) -> Result<ModelStatement, String> {
    const USAGE: &str = "expected CREATE [OR REPLACE] MODEL [IF NOT EXISTS] name FROM 'uri' [OPTIONS (key 'value', ...)]";
    let at = |i: usize| t.get(i);
    let if_not_exists =
        keyword(at(i), "if") && keyword(at(i + 1), "not") && keyword(at(i + 2), "exists");
    if if_not_exists {
        i += 3;
    }
    let name = match at(i) {
        Some(Token::Word(w)) => w.value.clone(),
        _ => return Err(format!("{USAGE}: missing model name")),
    };
    i += 1;
    if !keyword(at(i), "from") {
        return Err(format!("{USAGE}: missing FROM after the name"));
    }
    i += 1;
    let uri = match at(i) {
        Some(Token::SingleQuotedString(s)) => s.clone(),
        _ => return Err(format!("{USAGE}: FROM takes a quoted address")),
    };
    i += 1;
    let mut options = BTreeMap::new();
    if keyword(at(i), "options") {
        i += 1;
        if at(i) != Some(&Token::LParen) {
            return Err(format!("{USAGE}: OPTIONS needs parentheses"));
        }
        i += 1;
        loop {
            if at(i) == Some(&Token::RParen) {
                i += 1;
                break;
            }
            let key = match at(i) {
                Some(Token::Word(w)) => w.value.to_ascii_lowercase(),
                Some(Token::SingleQuotedString(s)) => s.to_ascii_lowercase(),
                _ => return Err(format!("{USAGE}: bad option name")),
            };
            let value = match at(i + 1) {
                Some(Token::SingleQuotedString(s)) => s.clone(),
                Some(Token::Number(n, _)) => n.clone(),
                Some(Token::Word(w)) => w.value.clone(),
                _ => return Err(format!("{USAGE}: option '{key}' needs a value")),
            };
            options.insert(key, value);
            i += 2;
            match at(i) {
                Some(Token::Comma) => i += 1,
                Some(Token::RParen) => {}
                _ => return Err(format!("{USAGE}: expected ',' or ')' in OPTIONS")),
            }
        }
    }
    if i != t.len() {
        return Err(format!("{USAGE}: unexpected text after the statement"));
    }
    Ok(ModelStatement::Create {
        name,
        uri,
        options,
        or_replace,
        if_not_exists,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_model_statements() {
        assert_eq!(parse("SELECT 1"), None);
        assert_eq!(parse("CREATE TABLE t AS SELECT 1"), None);
        assert_eq!(parse("show models"), Some(Ok(ModelStatement::Show)));
        let Some(Ok(ModelStatement::Create {
            name,
            uri,
            options,
            or_replace,
            ..
        })) = parse(
            "CREATE OR REPLACE MODEL policy FROM 'models/x' OPTIONS (dtype 'f32', label 'LABEL_1', n 3)",
        )
        else {
            panic!()
        };
        assert_eq!(
            (name.as_str(), uri.as_str(), or_replace),
            ("policy", "models/x", true)
        );
        assert_eq!(options["dtype"], "f32");
        assert_eq!(options["n"], "3");
        assert_eq!(
            parse("DROP MODEL IF EXISTS m"),
            Some(Ok(ModelStatement::Drop {
                name: "m".into(),
                if_exists: true
            }))
        );
        assert!(parse("CREATE MODEL m 'x'").unwrap().is_err());
        assert!(
            parse("CREATE MODEL m FROM 'x' OPTIONS (a)")
                .unwrap()
                .is_err()
        );
    }
}
