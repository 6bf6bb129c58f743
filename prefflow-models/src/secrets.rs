//! Secrets (API keys, Hub tokens, passwords in addresses) masked in text that is shown: an
//! error body a server sends back may echo a request's headers or body, with the secret as it
//! was sent, JSON-escaped (`\/` for `/`, `\u002b` …) or URL-encoded.

/// `text` with every form of every secret replaced by `***`. Secrets shorter than 4
/// characters are left alone (masking them would garble ordinary text).
pub fn mask(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().map(|s| s.trim()).filter(|s| s.len() >= 4) {
        for form in forms(secret) {
            if !form.is_empty() {
                out = out.replace(&form, "***");
            }
        }
    }
    out
}

/// The ways a secret may appear in an echoed request: as it is, JSON-escaped (with and without
/// `\/`, and with every non-alphanumeric character as `\uXXXX`), and URL-encoded (`%XX`, `+`
/// for a space, upper and lower hex).
fn forms(secret: &str) -> Vec<String> {
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json.trim_matches('"').to_string();
    let unicode: String = secret
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_string()
            } else {
                let mut buf = [0u16; 2];
                c.encode_utf16(&mut buf)
                    .iter()
                    .map(|u| format!("\\u{u:04x}"))
                    .collect()
            }
        })
        .collect();
    let percent = |upper: bool, plus: bool| -> String {
        secret
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                b' ' if plus => "+".to_string(),
                _ if upper => format!("%{b:02X}"),
                _ => format!("%{b:02x}"),
            })
            .collect()
    };
    let mut out = vec![
        secret.to_string(),
        json.replace('/', "\\/"),
        json,
        unicode.clone(),
        unicode.to_uppercase().replace("\\U", "\\u"),
        percent(true, false),
        percent(false, false),
        percent(true, true),
    ];
    // Longest first, so a form containing another is replaced whole.
    out.sort_by_key(|f| std::cmp::Reverse(f.len()));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn every_echoed_form_is_masked() {
        let key = "sk-a/b+c d=e\"f".to_string();
        let echoed = [
            "sk-a/b+c d=e\"f",
            r#"sk-a\/b+c d=e\"f"#,
            r#"sk-a/b+c d=e\"f"#,
            "sk-a%2Fb%2Bc%20d%3De%22f",
            "sk-a%2fb%2bc%20d%3de%22f",
            "sk-a%2Fb%2Bc+d%3De%22f",
            r#"sk\u002da\u002fb\u002bc\u0020d\u003de\u0022f"#,
        ];
        for e in echoed {
            let text = format!("server said: {{\"authorization\": \"Bearer {e}\"}}");
            let masked = mask(&text, std::slice::from_ref(&key));
            assert!(masked.contains("Bearer ***"), "{e}: {masked}");
            assert!(
                !masked.contains("sk-a") && !masked.contains("sk\\u"),
                "{masked}"
            );
        }
        assert_eq!(mask("abc", &["ab".to_string()]), "abc");
    }
}
