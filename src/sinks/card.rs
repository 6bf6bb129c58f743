//! The dataset card (README.md) written beside a training set: what it is, how to load it,
//! rows per split, what was dropped and why, score margins and lengths. Kept in running
//! sums, so a streaming run's memory does not grow with the dataset.

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int8Type, SchemaRef};
use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::formats::rows;
use crate::target::card_tags as tags;

/// Running min / mean / max.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Summary {
    fn add(&mut self, x: f64) {
        if self.count == 0 {
            self.min = x;
            self.max = x;
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        self.count += 1;
        self.sum += x;
    }

    fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
}

/// What a run wrote and dropped.
#[derive(Debug, Clone)]
pub struct Stats {
    train: u64,
    validation: u64,
    dropped: BTreeMap<&'static str, u64>,
    margin: Summary,
    lengths: Vec<(String, Summary)>,
    labels: BTreeMap<String, u64>,
}

impl Stats {
    /// Empty statistics for rows of `schema`: lengths are kept for its text, conversation and
    /// token-id columns.
    pub fn new(schema: &SchemaRef) -> Self {
        let lengths = schema
            .fields()
            .iter()
            .filter(|f| matches!(f.data_type(), DataType::Utf8 | DataType::List(_)))
            .filter(|f| {
                f.name() != "prompt_id"
                    && !f.name().ends_with("attention_mask")
                    && !f.name().ends_with("labels")
            })
            .map(|f| (f.name().clone(), Summary::default()))
            .collect();
        Self {
            train: 0,
            validation: 0,
            dropped: BTreeMap::new(),
            margin: Summary::default(),
            lengths,
            labels: BTreeMap::new(),
        }
    }

    /// Counts a dropped input row.
    pub fn drop(&mut self, reason: &'static str) {
        *self.dropped.entry(reason).or_default() += 1;
    }

    /// Counts the written rows of a batch; `validation` marks those in the validation split.
    pub fn add(&mut self, batch: &RecordBatch, validation: Option<&BooleanArray>) {
        let n = batch.num_rows() as u64;
        let in_validation = validation.map_or(0, |m| m.true_count() as u64);
        self.validation += in_validation;
        self.train += n - in_validation;
        let score = |name| {
            batch
                .column_by_name(name)
                .and_then(|a| a.as_primitive_opt::<Float64Type>())
        };
        if let (Some(c), Some(r)) = (score("score_chosen"), score("score_rejected")) {
            for i in 0..batch.num_rows() {
                if c.is_valid(i) && r.is_valid(i) {
                    self.margin.add(c.value(i) - r.value(i));
                }
            }
        }
        for (name, summary) in &mut self.lengths {
            if let Some(a) = batch.column_by_name(name) {
                for n in rows::lengths(a.as_ref()).into_iter().flatten() {
                    summary.add(n as f64);
                }
            }
        }
        if let Some(labels) = batch.column_by_name("label") {
            let text = |i: usize| match labels.data_type() {
                DataType::Boolean => labels.as_boolean().value(i).to_string(),
                _ => labels.as_primitive::<Int8Type>().value(i).to_string(),
            };
            for i in (0..labels.len()).filter(|&i| labels.is_valid(i)) {
                *self.labels.entry(text(i)).or_default() += 1;
            }
        }
    }

    /// Rows in the train and validation splits.
    pub fn split_rows(&self) -> (u64, u64) {
        (self.train, self.validation)
    }

    /// Rows written in all splits.
    pub fn written(&self) -> u64 {
        self.train + self.validation
    }
}

/// What the card says about how the set was made.
pub struct Settings {
    pub format: &'static str,
    pub validation_fraction: f64,
    pub file_ext: &'static str,
    pub options: BTreeMap<String, String>,
}

/// Writes README.md into `dir`, for a dataset that will live at `target`.
/// The split files of a local dataset: each split with rows (train when nothing was written).
pub(crate) fn local_files(s: &Settings, stats: &Stats) -> Vec<(&'static str, String)> {
    let mut splits = vec![("train", stats.train)];
    if s.validation_fraction > 0.0 {
        splits.push(("validation", stats.validation));
    }
    splits
        .into_iter()
        .filter(|(split, n)| *n > 0 || (*split == "train" && stats.written() == 0))
        .map(|(split, _)| (split, format!("{split}.{}", s.file_ext)))
        .collect()
}

/// The card for a dataset named `name`, whose splits are in `files` (split, path or pattern);
/// the provenance section follows it.
pub(crate) fn render(
    name: &str,
    s: &Settings,
    description: &str,
    stats: &Stats,
    files: &[(&str, String)],
) -> String {
    let mut splits = vec![("train", stats.train)];
    if s.validation_fraction > 0.0 {
        splits.push(("validation", stats.validation));
    }
    let mut out = String::new();
    // Front matter: the Hub and `datasets.load_dataset` read the splits from here. An empty
    // split is left out (its file is not kept, see `write_splits`): `datasets` refuses to
    // load a split with no data.
    out.push_str("---\nconfigs:\n- config_name: default\n  data_files:\n");
    for (split, path) in files {
        let _ = writeln!(out, "  - split: {split}\n    path: {path}");
    }
    let _ = writeln!(out, "{}---\n", tags(s.format));
    let _ = writeln!(out, "# {name}\n");
    let _ = writeln!(
        out,
        "Written by prefflow (`COPY (…) TO '{name}' STORED AS {}`).\n",
        s.format
    );
    out.push_str(description);
    out.push_str("\n\n## Splits\n\n| split | rows |\n|---|---|\n");
    for (split, n) in &splits {
        let _ = writeln!(out, "| {split} | {n} |");
    }
    for (split, n) in &splits {
        if *n == 0 && stats.written() > 0 {
            let _ = writeln!(
                out,
                "\nNo row fell in the {split} split, so no {split} file was written."
            );
        }
    }
    let _ = writeln!(
        out,
        "\nValidation rows are the prompts whose hash (FNV-1a, mixed) falls below validation_fraction = {}: every row of one prompt is in the same split, and reruns split the same way.",
        s.validation_fraction
    );
    out.push_str("\n## Dropped rows\n\n");
    if stats.dropped.is_empty() {
        out.push_str("None.\n");
    } else {
        out.push_str("| reason | rows |\n|---|---|\n");
        for (reason, n) in &stats.dropped {
            let _ = writeln!(out, "| {reason} | {n} |");
        }
    }
    if stats.margin.count > 0 {
        let m = &stats.margin;
        let _ = writeln!(
            out,
            "\n## Score margins\n\nscore_chosen - score_rejected over {} pairs: min {:.4}, mean {:.4}, max {:.4}.",
            m.count,
            m.min,
            m.mean(),
            m.max
        );
    }
    if !stats.labels.is_empty() {
        out.push_str("\n## Labels\n\n| label | rows |\n|---|---|\n");
        for (label, n) in &stats.labels {
            let _ = writeln!(out, "| {label} | {n} |");
        }
    }
    let lengths: Vec<_> = stats.lengths.iter().filter(|(_, l)| l.count > 0).collect();
    if !lengths.is_empty() {
        let unit = if s.format == "tokenized" {
            "tokens"
        } else {
            "characters (of every message's content for conversations)"
        };
        let _ = writeln!(
            out,
            "\n## Lengths\n\nIn {unit}.\n\n| column | min | mean | max |\n|---|---|---|---|"
        );
        for (column, l) in lengths {
            let _ = writeln!(
                out,
                "| {column} | {} | {:.1} | {} |",
                l.min,
                l.mean(),
                l.max
            );
        }
    }
    out.push_str("\n## Options\n\n");
    let _ = writeln!(
        out,
        "- validation_fraction: {}\n- file_format: {}",
        s.validation_fraction, s.file_ext
    );
    for (k, v) in &s.options {
        let _ = writeln!(out, "- {k}: {v}");
    }
    out
}
