//! TRL's dataset-format rules (its "Dataset formats and types" guide), checked on what a
//! training sink wrote: the files the card lists exist and hold its row counts, required
//! columns are present and never NULL, every row has the same shape (standard strings or
//! conversational {role, content} lists), and each kind's own rules hold.

use std::path::Path;

use prefflow::Engine;
use serde_json::Value;

/// Rows of one written file, as JSON objects.
pub async fn rows(engine: &Engine, file: &Path) -> Vec<serde_json::Map<String, Value>> {
    let batches = engine
        .query(&format!("SELECT * FROM '{}'", file.display()))
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut w = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    for b in &batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
    let bytes = w.into_inner();
    if bytes.is_empty() {
        return Vec::new();
    }
    serde_json::from_slice(&bytes).unwrap()
}

/// Text, or a conversation: a non-empty list of {role, content} with known roles.
fn shape(v: &Value, what: &str) -> &'static str {
    match v {
        Value::String(_) => "standard",
        Value::Array(messages) => {
            assert!(!messages.is_empty(), "{what}: empty conversation");
            for m in messages {
                let role = m["role"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: message without role: {m}"));
                assert!(
                    ["system", "user", "assistant", "tool"].contains(&role),
                    "{what}: role {role}"
                );
                assert!(
                    m["content"].is_string(),
                    "{what}: message without content: {m}"
                );
            }
            "conversational"
        }
        other => panic!("{what}: neither text nor conversation: {other}"),
    }
}

/// Checks a folder written by `STORED AS kind`; returns the rows of every split.
pub async fn check(engine: &Engine, dir: &Path, kind: &str) -> Vec<serde_json::Map<String, Value>> {
    let card = std::fs::read_to_string(dir.join("README.md")).expect("a dataset card");
    assert!(
        card.starts_with("---\nconfigs:"),
        "card front matter: {card}"
    );
    let mut all = Vec::new();
    for line in card.lines().filter_map(|l| l.trim().strip_prefix("path: ")) {
        let split = line.split('.').next().unwrap();
        let rows = rows(engine, &dir.join(line)).await;
        let count = format!("| {split} | {} |", rows.len());
        assert!(card.contains(&count), "card must say {count}: {card}");
        all.extend(rows);
    }
    let mut shapes = std::collections::BTreeSet::new();
    for (i, row) in all.iter().enumerate() {
        let field = |name: &str| -> &Value {
            row.get(name)
                .filter(|v| !v.is_null())
                .unwrap_or_else(|| panic!("{kind} row {i}: missing {name}: {row:?}"))
        };
        match kind {
            "dpo" => {
                for c in ["prompt", "chosen", "rejected"] {
                    shapes.insert(shape(field(c), c));
                }
                assert_ne!(field("chosen"), field("rejected"), "row {i}");
                if let Value::Array(p) = field("prompt") {
                    assert_eq!(
                        p.last().unwrap()["role"],
                        "user",
                        "row {i}: a prompt ends with the user's turn"
                    );
                    for c in ["chosen", "rejected"] {
                        assert!(
                            field(c)
                                .as_array()
                                .unwrap()
                                .iter()
                                .all(|m| m["role"] == "assistant")
                        );
                    }
                }
                if let (Some(c), Some(r)) = (row.get("score_chosen"), row.get("score_rejected")) {
                    assert!(c.as_f64().unwrap() > r.as_f64().unwrap(), "row {i}: margin");
                }
            }
            "kto" => {
                shapes.insert(shape(field("prompt"), "prompt"));
                shapes.insert(shape(field("completion"), "completion"));
                let label = field("label");
                assert!(
                    label.is_boolean() || label == &Value::from(1) || label == &Value::from(-1),
                    "row {i}: label {label}"
                );
            }
            "sft" => {
                if let Some(m) = row.get("messages") {
                    shapes.insert(shape(m, "messages"));
                } else {
                    shapes.insert(shape(field("prompt"), "prompt"));
                    shapes.insert(shape(field("completion"), "completion"));
                }
            }
            "sharegpt" => {
                let turns = field("conversations").as_array().unwrap();
                let mut expect_human = true;
                for t in turns {
                    let from = t["from"].as_str().unwrap();
                    assert!(t["value"].is_string());
                    match from {
                        "system" => {}
                        "human" | "observation" => {
                            assert!(expect_human, "row {i}: human turns alternate with gpt");
                            expect_human = false;
                        }
                        "gpt" => {
                            assert!(!expect_human, "row {i}: gpt answers a human turn");
                            expect_human = true;
                        }
                        other => panic!("row {i}: from {other}"),
                    }
                }
            }
            "tokenized" => {
                let prefixes: &[&str] = if row.contains_key("chosen_input_ids") {
                    &["chosen_", "rejected_"]
                } else {
                    &[""]
                };
                for p in prefixes {
                    let ids = field(&format!("{p}input_ids")).as_array().unwrap();
                    let mask = field(&format!("{p}attention_mask")).as_array().unwrap();
                    let labels = field(&format!("{p}labels")).as_array().unwrap();
                    assert_eq!(ids.len(), mask.len());
                    assert_eq!(ids.len(), labels.len());
                    assert!(mask.iter().all(|m| m == 1));
                    let prompt = labels.iter().take_while(|l| *l == -100).count();
                    assert!(
                        prompt > 0 && prompt < ids.len(),
                        "row {i}: prompt masked, answer kept"
                    );
                    assert_eq!(
                        &labels[prompt..],
                        &ids[prompt..],
                        "row {i}: labels are the answer's ids"
                    );
                }
            }
            other => panic!("unknown kind {other}"),
        }
    }
    assert!(
        shapes.len() <= 1,
        "{kind}: every column and row in one shape, got {shapes:?}"
    );
    all
}
