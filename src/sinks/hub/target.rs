//! A Hub target: `hf://datasets/ORG/NAME[@BRANCH][/PATH]` and the options of a push.

use std::path::Path;

use crate::error::{PrefflowError, Result};

use crate::sinks::files::FileKind;
use crate::sinks::options::Options;

/// Options a Hub target takes besides the format's own.
pub(crate) const HUB_OPTIONS: &str = "private, commit_message";

/// Where and how a COPY pushes.
#[derive(Debug, Clone)]
pub(crate) struct HubTarget {
    /// The address as written.
    pub url: String,
    pub org: String,
    pub name: String,
    pub branch: String,
    /// `PATH/` inside the repository, or empty.
    pub prefix: String,
    pub private: bool,
    pub checkpoint_rows: Option<u64>,
    pub commit_message: Option<String>,
}

impl HubTarget {
    /// Parses the address and takes the Hub options out of `options`.
    pub fn parse(url: &str, options: &mut Options) -> Result<Self> {
        let hf = crate::hf::parse(url)?;
        let (org, name) = hf
            .repo_id
            .split_once('/')
            .map(|(o, n)| (o.to_string(), n.to_string()))
            .expect("parse gives ORG/NAME");
        let private = options.take_bool("private")?.unwrap_or(true);
        let checkpoint_rows = take_checkpoint_rows(options)?;
        let file_like = Path::new(&hf.path)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["parquet", "json", "jsonl", "csv", "ndjson"].contains(&e));
        if file_like || hf.path.contains(['*', '?', '[']) || hf.path.split('/').any(|s| s == "..") {
            return Err(options.err(format!(
                "'{url}': PATH names a folder in the repository (no file name, glob or ..): the part files go in PATH/data/"
            )));
        }
        Ok(Self {
            url: url.to_string(),
            org,
            name,
            branch: hf.revision,
            prefix: if hf.path.is_empty() {
                String::new()
            } else {
                format!("{}/", hf.path)
            },
            private,
            checkpoint_rows,
            commit_message: options.take("commit_message"),
        })
    }

    pub(super) fn repo_id(&self) -> String {
        format!("{}/{}", self.org, self.name)
    }

    /// A part file's path in the repository.
    pub(super) fn part_path(&self, split: &str, index: u64, kind: FileKind) -> String {
        format!("{}data/{split}-{index:05}.{}", self.prefix, kind.ext())
    }

    /// The card's `data_files` pattern for a split.
    pub fn split_pattern(&self, split: &str, kind: FileKind) -> String {
        format!("{}data/{split}-*.{}", self.prefix, kind.ext())
    }

    pub(super) fn manifest_path(&self) -> String {
        format!("{}.prefflow/push.json", self.prefix)
    }

    pub(super) fn card_path(&self) -> String {
        format!("{}README.md", self.prefix)
    }

    pub(super) fn err(&self, message: impl std::fmt::Display) -> PrefflowError {
        PrefflowError::Hub {
            url: self.url.clone(),
            message: message.to_string(),
        }
    }
}

/// `checkpoint_rows`: a positive whole number. A local dataset takes it too (and is written
/// once, atomically), so one query file serves a local and a Hub target.
pub(crate) fn take_checkpoint_rows(options: &mut Options) -> Result<Option<u64>> {
    match options.take("checkpoint_rows") {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| {
                options.err(format!(
                    "option checkpoint_rows must be a positive whole number, got '{v}'"
                ))
            }),
    }
}
