//! A sink's COPY options: the ones every format takes, and each format's own (taken out as
//! they are read, so a leftover one is an unknown option named in the error).

use std::collections::{BTreeMap, HashMap};

use datafusion::error::DataFusionError;

use crate::error::{PrefflowError, Result};

/// Options every format takes; the rest are the format's own (taken out as they are read,
/// so a leftover one is an unknown option).
pub(crate) struct Options {
    format: &'static str,
    pub(crate) values: BTreeMap<String, String>,
}

impl Options {
    /// DataFusion prefixes unqualified COPY options with `format.`; the sinks' are all plain.
    pub(crate) fn new(format: &'static str, raw: &HashMap<String, String>) -> Self {
        let values = raw
            .iter()
            .map(|(k, v)| {
                (
                    k.strip_prefix("format.").unwrap_or(k).to_string(),
                    v.clone(),
                )
            })
            .collect();
        Self { format, values }
    }

    /// A planning error naming the format.
    pub(crate) fn err(&self, message: impl std::fmt::Display) -> PrefflowError {
        DataFusionError::Plan(format!("{}: {message}", self.format)).into()
    }

    pub(crate) fn take(&mut self, key: &str) -> Option<String> {
        self.values.remove(key)
    }

    pub(crate) fn take_f64(&mut self, key: &str) -> Result<Option<f64>> {
        self.take(key)
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| self.err(format!("option {key} must be a number, got '{v}'")))
            })
            .transpose()
    }

    pub(crate) fn take_bool(&mut self, key: &str) -> Result<Option<bool>> {
        self.take(key)
            .map(|v| match v.trim().to_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(self.err(format!("option {key} must be true or false, got '{v}'"))),
            })
            .transpose()
    }

    pub(crate) fn take_choice(
        &mut self,
        key: &str,
        choices: &[&'static str],
    ) -> Result<Option<&'static str>> {
        self.take(key)
            .map(|v| {
                let v = v.trim().to_lowercase();
                choices.iter().copied().find(|c| *c == v).ok_or_else(|| {
                    self.err(format!(
                        "option {key} must be one of {}, got '{v}'",
                        choices.join(", ")
                    ))
                })
            })
            .transpose()
    }

    /// Everything not read by now is unknown.
    pub(crate) fn finish(self, known: &str) -> Result<()> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(k) => Err(self.err(format!("unknown option '{k}' (known: {known})"))),
        }
    }
}

pub(crate) const COMMON_OPTIONS: &str = "validation_fraction, file_format, checkpoint_rows";

pub(crate) fn known_options(format: &str) -> &'static str {
    match format {
        "dpo" => "style, min_margin",
        "kto" => "style",
        "sft" => "style",
        "sharegpt" | "parquet" | "json" => "(none)",
        _ => "model, max_length, chat",
    }
}
