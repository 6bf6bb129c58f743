//! The card's provenance section: how a dataset was made, so a reader can make it again.
//!
//! prefflow's version, the COPY statement as it ran, every model the query called (address,
//! the identity of its files and options, its CREATE MODEL options), the `seed` options the
//! query passes, and what the model calls did (rows, cache hits, tokens in and out), with the
//! written rows and wall time. Never a secret: keys are named by environment variable in
//! prefflow's SQL, and user:password@ in any address is replaced before anything is written.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prefflow_udfs::models::ModelRegistry;
use prefflow_udfs::models::call_stats::Snapshot;
use prefflow_udfs::models::remote::redact_uri;

/// The COPY option the engine passes the statement's text in (taken out before the format's
/// own options are read, so it never shows as an option).
pub const STATEMENT_OPTION: &str = "prefflow.statement";

/// What is known when the sink is planned (before its input runs: model-call nodes register
/// their counters when they start); [`Started::finish`] adds what the run did.
#[derive(Clone)]
pub struct Started {
    statement: Option<String>,
    /// Model activity nodes registered before this COPY ran.
    nodes_before: usize,
    at: Instant,
}

/// One model the query called.
struct ModelLine {
    name: String,
    uri: String,
    identity: Option<String>,
    options: BTreeMap<String, String>,
}

/// The provenance of one written dataset.
pub struct Provenance {
    statement: Option<String>,
    seeds: Vec<String>,
    models: Vec<ModelLine>,
    calls: Vec<(String, Snapshot)>,
    wall: Duration,
}

impl Started {
    pub fn new(statement: Option<String>, registry: &ModelRegistry) -> Self {
        Self {
            statement: statement.map(|s| redact_text(s.trim())),
            nodes_before: registry.activity().node_count(),
            at: Instant::now(),
        }
    }

    /// The statement's text (passwords in addresses masked), when the engine passed it.
    pub fn statement(&self) -> Option<&str> {
        self.statement.as_deref()
    }

    /// The provenance after the run: the model calls this COPY made, and their models (with
    /// `sink_model`, the model a sink itself used, such as `tokenized`'s tokenizer).
    /// Reads model identities (memoized after the run loaded the models; blocking).
    pub fn finish(
        self,
        registry: &Arc<ModelRegistry>,
        device: &str,
        sink_model: Option<&str>,
    ) -> Provenance {
        let calls: Vec<(String, Snapshot)> = registry
            .activity()
            .entries_since(self.nodes_before)
            .iter()
            .map(|c| (c.label.clone(), c.snapshot()))
            .collect();
        let mut names: Vec<String> = calls
            .iter()
            .filter_map(|(label, _)| model_of(label))
            .chain(sink_model)
            .map(str::to_string)
            .collect();
        names.sort();
        names.dedup();
        let models = names
            .into_iter()
            .filter_map(|name| {
                let spec = registry.spec(&name).ok()?;
                let identity = registry
                    .identity(&spec, device, false)
                    .ok()
                    .map(|k| k.iter().map(|b| format!("{b:02x}")).collect());
                Some(ModelLine {
                    name: spec.name.clone(),
                    uri: redact_uri(&spec.uri),
                    identity,
                    options: spec.options.clone(),
                })
            })
            .collect();
        let seeds = self.statement.as_deref().map(seeds).unwrap_or_default();
        Provenance {
            statement: self.statement,
            seeds,
            models,
            calls,
            wall: self.at.elapsed(),
        }
    }
}

/// The model of a call label `function(model)`.
fn model_of(label: &str) -> Option<&str> {
    label.split_once('(')?.1.strip_suffix(')')
}

/// The values of `'seed'` options in the statement (`named_struct('seed', 7)`).
fn seeds(statement: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lower = statement.to_ascii_lowercase();
    for (i, _) in lower.match_indices("'seed'") {
        let rest = statement[i + 6..].trim_start();
        let rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
        let value: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if !value.is_empty() && !out.contains(&value) {
            out.push(value);
        }
    }
    out
}

/// The text with every `scheme://user:password@` reduced to `scheme://***@`.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == '\'' || c == '"' || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&tail[at..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

impl Provenance {
    /// The card's `## Provenance` section.
    pub fn render(&self, rows: u64) -> String {
        let mut s = String::from("\n## Provenance\n\n");
        let _ = writeln!(s, "- prefflow {}", env!("CARGO_PKG_VERSION"));
        let _ = writeln!(
            s,
            "- {rows} rows written in {:.1} s (wall time of the COPY)",
            self.wall.as_secs_f64()
        );
        if self.calls.is_empty() {
            // No model calls: nothing was sampled.
        } else if self.seeds.is_empty() {
            s.push_str("- seeds: every sampled row is seeded from its own content and the call's `seed` option (0 where the query sets none)\n");
        } else {
            let _ = writeln!(
                s,
                "- seeds: `seed` options in the query: {} (calls without one use 0); each sampled row is seeded from its own content and its call's seed",
                self.seeds.join(", ")
            );
        }
        if !self.models.is_empty() {
            s.push_str("\n| model | address | identity (files, options, device) | options |\n|---|---|---|---|\n");
            for m in &self.models {
                let options = m
                    .options
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    cell(&m.name),
                    cell(&m.uri),
                    m.identity.as_deref().unwrap_or("unknown"),
                    cell(&options)
                );
            }
        }
        if !self.calls.is_empty() {
            s.push_str(
                "\n| call | rows | cache hits | tokens in | tokens out |\n|---|---|---|---|---|\n",
            );
            for (label, c) in &self.calls {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    cell(label),
                    c.rows,
                    c.cache_hits,
                    c.input_tokens,
                    c.output_tokens
                );
            }
        }
        if let Some(statement) = &self.statement {
            let fence = if statement.contains("```") {
                "~~~~"
            } else {
                "```"
            };
            let _ = writeln!(s, "\nThe statement:\n\n{fence}sql\n{statement}\n{fence}");
        }
        s
    }
}

/// Text safe inside a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_any_address() {
        assert_eq!(
            redact_text("FROM 'https://me:s3cret@host:8000/v1' AND 'hf://datasets/a/b'"),
            "FROM 'https://***@host:8000/v1' AND 'hf://datasets/a/b'"
        );
    }

    #[test]
    fn finds_seed_options() {
        assert_eq!(
            seeds(
                "ai_generate('m', p, named_struct('seed', 7, 'temperature', 0.7)), named_struct('SEED',12)"
            ),
            vec!["7", "12"]
        );
    }
}
