//! The Hugging Face Hub as a sink: `COPY … TO 'hf://datasets/ORG/NAME[@BRANCH][/PATH]'`.
//!
//! Before a row is read (so before any model work), [`Push::open`] checks the token (present,
//! with write access), refuses a public repository when a private one was asked for, and reads
//! what an earlier run of the same statement pushed there. A missing repository (private
//! unless `private false`) or branch is created by the first commit, so a push that fails
//! before one leaves nothing behind.
//!
//! Rows go to part files (`PATH/data/train-00000.parquet`, `…-00001…`) in a staging folder;
//! every `checkpoint_rows` rows the open parts are closed and committed with the dataset card
//! and a manifest (`PATH/.prefflow/push.json`: the job, its parts, whether it finished), one
//! commit per checkpoint. A run of the same statement later (after a kill, or a failed push)
//! reads the manifest, skips the rows its parts already hold (by a hash of each written row,
//! so the order rows arrive in does not matter; model calls come from the result cache), and
//! pushes the rest; a finished job run again commits nothing. A different statement to the same
//! target replaces the files prefflow pushed there; files prefflow did not write are never
//! replaced.
//!
//! Nothing is committed that could mix two results: each run stages in a folder of its own,
//! every commit names the commit the run started from (or its own previous one) as its parent,
//! so a concurrent push to the branch is refused by the Hub instead of overwritten, a staged
//! part is checked to be a whole file before it is uploaded, and a run of the same statement
//! whose result no longer holds every row pushed before (its input changed) commits nothing:
//! its checkpoints wait until every earlier row has come again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::error::DataFusionError;
use hub_client::repository::{AddSource, CommitOperation, HFRepository};
use hub_client::{HFClient, HFError, RepoTypeDataset};
use serde::{Deserialize, Serialize};

use super::files::{FileKind, Writer};
use super::options::Options;
use crate::error::{PrefflowError, Result};
use prefflow_udfs::models::hub::describe;

/// Options a Hub target takes besides the format's own.
pub(crate) const HUB_OPTIONS: &str = "private, commit_message";

/// How long a connection may take to open, and a response to send its next bytes, before the
/// request is retried; `PREFFLOW_HUB_TIMEOUT` (seconds) overrides both.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts per request: hf-hub retries 5xx, 429, timeouts and dropped connections with
/// jittered exponential backoff (up to 2, 4, 8, … times the base delay: about half a minute
/// in all with the default base of 0.5 s; `PREFFLOW_HUB_RETRY_MS` sets the base).
const ATTEMPTS: usize = 6;

fn retry_base() -> Duration {
    std::env::var("PREFFLOW_HUB_RETRY_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_millis(500))
}

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

    fn repo_id(&self) -> String {
        format!("{}/{}", self.org, self.name)
    }

    /// A part file's path in the repository.
    fn part_path(&self, split: &str, index: u64, kind: FileKind) -> String {
        format!("{}data/{split}-{index:05}.{}", self.prefix, kind.ext())
    }

    /// The card's `data_files` pattern for a split.
    pub fn split_pattern(&self, split: &str, kind: FileKind) -> String {
        format!("{}data/{split}-*.{}", self.prefix, kind.ext())
    }

    fn manifest_path(&self) -> String {
        format!("{}.prefflow/push.json", self.prefix)
    }

    fn card_path(&self) -> String {
        format!("{}README.md", self.prefix)
    }

    fn err(&self, message: impl std::fmt::Display) -> PrefflowError {
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

/// What prefflow pushed to a target: read back by the next run of the same job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub prefflow: String,
    /// Hash of the statement, format and options: the same job resumes, another replaces.
    pub job: String,
    pub file_ext: String,
    /// Checkpoint commits so far; the next parts are numbered from here.
    pub checkpoints: u64,
    pub parts: Vec<Part>,
    pub finished: bool,
}

/// One pushed part file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Part {
    pub path: String,
    pub split: String,
    pub rows: u64,
}

impl Manifest {
    fn rows(&self) -> u64 {
        self.parts.iter().map(|p| p.rows).sum()
    }
}

/// An open push: checked, with the client, what is already there, and the staging folder.
pub(crate) struct Push {
    pub target: HubTarget,
    repo: HFRepository<RepoTypeDataset>,
    /// The manifest this run continues (same job), or a fresh one.
    pub manifest: Manifest,
    /// Files an earlier job pushed that this run replaces (deleted in its first commit).
    replaced: Vec<String>,
    /// Part files written locally, not yet pushed: this run's own folder, so a concurrent
    /// push to the same target never touches them.
    pub staging: PathBuf,
    pub kind: FileKind,
    /// The branch's commit this run started from, then its own last commit: every commit names
    /// it as its parent, so a push by someone else in between is refused, not overwritten.
    head: Option<String>,
    client: HFClient,
    /// What the first commit creates first.
    missing: Missing,
}

fn timeout() -> Duration {
    std::env::var("PREFFLOW_HUB_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(TIMEOUT)
}

impl Push {
    /// Checks the token, the repository and the branch, and reads what an earlier run of
    /// `job` pushed. Nothing is written to the Hub but a new repository or branch.
    pub async fn open(
        target: HubTarget,
        job: String,
        kind: FileKind,
        staging_root: &Path,
    ) -> Result<Self> {
        let Connection {
            client,
            repo,
            missing,
        } = connect(&target).await?;
        let fail = |what: &str, e: HFError| target.err(format!("{what}: {}", describe(&e)));
        let (head, files): (Option<String>, Vec<String>) = if missing == Missing::Nothing {
            let info = repo
                .info()
                .revision(target.branch.clone())
                .send()
                .await
                .map_err(|e| fail("cannot list the dataset's files", e))?;
            let files = info
                .siblings
                .unwrap_or_default()
                .into_iter()
                .map(|s| s.rfilename)
                .collect();
            (info.sha, files)
        } else {
            (None, Vec::new())
        };
        let manifest_path = target.manifest_path();
        let previous: Option<Manifest> = if files.contains(&manifest_path) {
            let bytes = repo
                .download_file_to_bytes()
                .filename(manifest_path.clone())
                .revision(target.branch.clone())
                .send()
                .await
                .map_err(|e| fail("cannot read the push manifest", e))?;
            Some(serde_json::from_slice(&bytes).map_err(|e| {
                target.err(format!(
                    "{manifest_path} on branch {} is not a prefflow push manifest ({e}): push to another PATH or branch",
                    target.branch
                ))
            })?)
        } else {
            None
        };
        // Files this push would write over that prefflow did not push there are refused.
        let ours: Vec<&str> = previous
            .iter()
            .flat_map(|m| m.parts.iter().map(|p| p.path.as_str()))
            .collect();
        let data = format!("{}data/", target.prefix);
        let foreign: Vec<&String> = files
            .iter()
            .filter(|f| {
                (**f == target.card_path() && previous.is_none())
                    || (f.starts_with(&data) && !ours.contains(&f.as_str()))
            })
            .collect();
        if !foreign.is_empty() {
            let mut names: Vec<&str> = foreign.iter().map(|s| s.as_str()).take(5).collect();
            if foreign.len() > 5 {
                names.push("…");
            }
            return Err(target.err(format!(
                "branch {} already holds {} that prefflow did not push: prefflow replaces only its own files (push to another PATH, branch or dataset)",
                target.branch,
                names.join(", ")
            )));
        }
        let target_dir = format!(
            "{}--{}--{}--{}",
            target.org,
            target.name,
            target.branch.replace('/', "-"),
            &blake3::hash(target.prefix.as_bytes()).to_hex()[..8]
        );
        // Parts a killed run left unpushed are made again from the result cache: its folder
        // goes once its process is gone.
        remove_dead_stagings(staging_root, &target_dir);
        let staging = staging_root.join(format!(
            "{target_dir}--{}-{}",
            std::process::id(),
            STAGINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        crate::target::remove_path(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| PrefflowError::io(&staging, e))?;
        if let Ok(mut active) = ACTIVE.lock() {
            active.push(staging.clone());
        }
        let (manifest, replaced) = match previous {
            Some(m) if m.job == job && m.file_ext == kind.ext() => (m, Vec::new()),
            other => {
                let mut replaced: Vec<String> = other
                    .map(|m| m.parts.into_iter().map(|p| p.path).collect())
                    .unwrap_or_default();
                if files.contains(&manifest_path) {
                    replaced.retain(|p| files.contains(p));
                }
                (
                    Manifest {
                        prefflow: env!("CARGO_PKG_VERSION").to_string(),
                        job,
                        file_ext: kind.ext().to_string(),
                        checkpoints: 0,
                        parts: Vec::new(),
                        finished: false,
                    },
                    replaced,
                )
            }
        };
        Ok(Self {
            target,
            repo,
            manifest,
            replaced,
            staging,
            kind,
            head,
            client,
            missing,
        })
    }

    /// Whether this job already finished on the branch (a run again pushes nothing).
    pub fn finished(&self) -> bool {
        self.manifest.finished
    }

    /// Rows already pushed.
    pub fn pushed_rows(&self) -> u64 {
        self.manifest.rows()
    }

    /// Hashes of the rows the manifest's parts hold (with their counts), read back from the Hub.
    pub async fn pushed(&self, schema: &SchemaRef) -> Result<RowSet> {
        let mut set = RowSet::new(schema)?;
        for part in &self.manifest.parts {
            let bytes = self
                .repo
                .download_file_to_bytes()
                .filename(part.path.clone())
                .revision(self.target.branch.clone())
                .send()
                .await
                .map_err(|e| {
                    self.target
                        .err(format!("cannot read back {}: {}", part.path, describe(&e)))
                })?;
            let schema = Arc::clone(schema);
            let kind = self.kind;
            let batches = tokio::task::spawn_blocking(move || read_part(bytes, kind, &schema))
                .await
                .map_err(|e| DataFusionError::Execution(format!("sink task failed: {e}")))?
                .map_err(|e| {
                    self.target
                        .err(format!("cannot read back {}: {e}", part.path))
                })?;
            for b in &batches {
                set.insert(b)?;
            }
        }
        Ok(set)
    }

    /// Commits the staged `parts` (repository path, split, rows) with the card; `last` marks
    /// the job finished. Staged files are removed once pushed.
    pub async fn commit(&mut self, parts: Vec<StagedPart>, card: String, last: bool) -> Result<()> {
        for p in &parts {
            complete_part(&p.local, p.rows, self.kind).map_err(|problem| {
                self.target.err(format!(
                    "the staged part {} is not complete ({problem}): nothing was committed; run the statement again",
                    p.local.display()
                ))
            })?;
        }
        if self.missing != Missing::Nothing {
            self.head =
                create_missing(&self.target, &self.client, &self.repo, self.missing).await?;
            self.missing = Missing::Nothing;
        }
        let mut manifest = self.manifest.clone();
        for p in &parts {
            manifest.parts.push(Part {
                path: p.path.clone(),
                split: p.split.to_string(),
                rows: p.rows,
            });
        }
        if !parts.is_empty() {
            manifest.checkpoints += 1;
        }
        manifest.finished = last;
        let mut ops: Vec<CommitOperation> = self
            .replaced
            .iter()
            .map(|p| CommitOperation::Delete {
                path_in_repo: p.clone(),
            })
            .collect();
        for p in &parts {
            ops.push(CommitOperation::Add {
                path_in_repo: p.path.clone(),
                source: AddSource::File(p.local.clone()),
            });
        }
        ops.push(CommitOperation::Add {
            path_in_repo: self.target.card_path(),
            source: AddSource::Bytes(card.into_bytes().into()),
        });
        let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(|e| {
            DataFusionError::Execution(format!("cannot write the push manifest: {e}"))
        })?;
        ops.push(CommitOperation::Add {
            path_in_repo: self.target.manifest_path(),
            source: AddSource::Bytes(manifest_json.into()),
        });
        let rows = manifest.rows();
        let message = match (&self.target.commit_message, last) {
            (Some(m), true) => m.clone(),
            (Some(m), false) => format!("{m} (checkpoint {})", manifest.checkpoints),
            (None, true) => format!("prefflow: {rows} rows"),
            (None, false) => format!("prefflow: checkpoint {}, {rows} rows", manifest.checkpoints),
        };
        let committed = self
            .repo
            .create_commit()
            .operations(ops)
            .commit_message(message)
            .revision(self.target.branch.clone())
            .maybe_parent_commit(self.head.clone())
            .send()
            .await
            .map_err(|e| {
                if moved_on(&e) {
                    return self.target.err(format!(
                        "branch {} changed since this run started (another push to it, perhaps a concurrent run): nothing of this run was committed over it; run again once the other push is done, or push to another branch (@BRANCH)",
                        self.target.branch
                    ));
                }
                let staged = parts.iter().map(|p| p.rows).sum::<u64>();
                self.target.err(format!(
                    "pushing failed after {} attempts: {}; the {staged} rows of this checkpoint are staged in {} and every computed row is in the result cache: run the same statement again to push them without recomputing",
                    ATTEMPTS + 1,
                    describe(&e),
                    self.staging.display()
                ))
            })?;
        self.head = committed.commit_oid.or_else(|| self.head.take());
        self.manifest = manifest;
        self.replaced.clear();
        for p in parts {
            let _ = std::fs::remove_file(p.local);
        }
        Ok(())
    }

    /// Removes the staging folder (after a finished push).
    pub fn clean(&self) {
        crate::target::remove_path(&self.staging);
    }
}

/// Numbers this process's staging folders.
static STAGINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The staging folders of this process's pushes that are running.
static ACTIVE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

impl Drop for Push {
    fn drop(&mut self) {
        if let Ok(mut active) = ACTIVE.lock() {
            active.retain(|p| p != &self.staging);
        }
    }
}

/// Removes staging folders of `target_dir` (`…--PID-N`) whose run is over: their process is
/// gone, or it is this one and the push ended (a failed push's parts, which a new run of the
/// same target makes again from the result cache).
fn remove_dead_stagings(root: &Path, target_dir: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let prefix = format!("{target_dir}--");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let ours_and_over = pid == std::process::id()
            && ACTIVE
                .lock()
                .is_ok_and(|active| !active.contains(&entry.path()));
        if ours_and_over || crate::target::process_gone(pid) {
            crate::target::remove_path(&entry.path());
        }
    }
}

/// The Hub's answer when a commit's parent is not the branch's head any more (HTTP 409 / 412).
fn moved_on(e: &HFError) -> bool {
    if matches!(e, HFError::Conflict { .. }) {
        return true;
    }
    let text = describe(e);
    text.contains("412") || text.contains("Precondition") || text.contains("has happened since")
}

/// Whether a staged part is a whole file of `rows` rows: a Parquet file with its footer (and
/// that row count), or JSON lines with that many lines. A part that is not is never uploaded.
fn complete_part(path: &Path, rows: u64, kind: FileKind) -> std::result::Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    match kind {
        FileKind::Parquet => {
            let reader = datafusion::parquet::file::reader::SerializedFileReader::new(
                bytes::Bytes::from(bytes),
            )
            .map_err(|e| format!("not a readable Parquet file: {e}"))?;
            use datafusion::parquet::file::reader::FileReader;
            let n = reader.metadata().file_metadata().num_rows() as u64;
            if n != rows {
                return Err(format!("{n} rows, {rows} written"));
            }
        }
        FileKind::Jsonl => {
            let n = bytes.iter().filter(|b| **b == b'\n').count() as u64;
            if n != rows || bytes.last().is_some_and(|b| *b != b'\n') {
                return Err(format!("{n} lines, {rows} rows written"));
            }
        }
    }
    Ok(())
}

/// A closed part file in the staging folder.
pub(crate) struct StagedPart {
    pub local: PathBuf,
    /// Its path in the repository.
    pub path: String,
    pub split: &'static str,
    pub rows: u64,
}

/// Writes new rows into part files, closing them every `every` rows (a checkpoint); part
/// boundaries depend only on the order of new rows, so a resumed run cuts where an
/// uninterrupted one would.
pub(crate) struct PartWriter {
    target: HubTarget,
    staging: PathBuf,
    kind: FileKind,
    schema: SchemaRef,
    every: Option<u64>,
    /// Checkpoint number of the open parts.
    index: u64,
    open: Vec<(StagedPart, Writer)>,
    rows: u64,
}

impl PartWriter {
    pub fn new(push: &Push, schema: SchemaRef, every: Option<u64>) -> Self {
        Self {
            target: push.target.clone(),
            staging: push.staging.clone(),
            kind: push.kind,
            schema,
            every,
            index: push.manifest.checkpoints,
            open: Vec::new(),
            rows: 0,
        }
    }

    /// Writes rows (those marked by `validation` to the validation split); returns the
    /// checkpoints completed.
    pub fn write(
        &mut self,
        out: &RecordBatch,
        validation: Option<&BooleanArray>,
    ) -> Result<Vec<Vec<StagedPart>>> {
        let mut closed = Vec::new();
        let mut offset = 0;
        while offset < out.num_rows() {
            let left = (out.num_rows() - offset) as u64;
            let room = self.every.map_or(left, |n| n - self.rows).min(left) as usize;
            let rows = out.slice(offset, room);
            let mask = validation.map(|m| m.slice(offset, room));
            for (split, part) in super::files::by_split(&rows, mask.as_ref())? {
                self.write_split(split, &part)?;
            }
            offset += room;
            self.rows += room as u64;
            if self.every == Some(self.rows) {
                closed.push(self.close()?);
            }
        }
        Ok(closed)
    }

    fn write_split(&mut self, split: &'static str, rows: &RecordBatch) -> Result<()> {
        if rows.num_rows() == 0 {
            return Ok(());
        }
        let i = match self.open.iter().position(|(p, _)| p.split == split) {
            Some(i) => i,
            None => {
                let path = self.target.part_path(split, self.index, self.kind);
                let local = self.staging.join(&path);
                if let Some(dir) = local.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| PrefflowError::io(dir, e))?;
                }
                let writer = Writer::create(&local, self.kind, &self.schema)?;
                self.open.push((
                    StagedPart {
                        local,
                        path,
                        split,
                        rows: 0,
                    },
                    writer,
                ));
                self.open.len() - 1
            }
        };
        let (part, writer) = &mut self.open[i];
        writer.write(rows)?;
        part.rows += rows.num_rows() as u64;
        Ok(())
    }

    /// Closes the open parts (train first): the files of one checkpoint.
    pub fn close(&mut self) -> Result<Vec<StagedPart>> {
        let mut open = std::mem::take(&mut self.open);
        open.sort_by_key(|(p, _)| p.split != "train");
        let mut parts = Vec::with_capacity(open.len());
        for (part, writer) in open {
            writer.finish()?;
            parts.push(part);
        }
        if !parts.is_empty() {
            self.index += 1;
        }
        self.rows = 0;
        Ok(parts)
    }
}

/// Checks a push before anything runs: the token (present, with write access), the
/// repository (created if missing; a public one refused when a private one is asked for) and
/// the branch (created if missing). Returns the repository's client.
async fn connect(target: &HubTarget) -> Result<Connection> {
    let token = prefflow_udfs::models::hub::token().ok_or_else(|| {
        target.err(
            "no Hub token: set HF_TOKEN to a token with write access (or log in with `huggingface-cli login`) before pushing",
        )
    })?;
    let http = hub_http::Client::builder()
        .connect_timeout(timeout())
        .read_timeout(timeout())
        .user_agent(concat!("prefflow/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| target.err(format!("cannot set up the Hub client: {e}")))?;
    let client = HFClient::builder()
        .token(token.clone())
        .client(http.clone())
        .retry_max_attempts(ATTEMPTS)
        .retry_base_delay(retry_base())
        .build()
        .map_err(|e| target.err(format!("cannot set up the Hub client: {}", describe(&e))))?;
    check_write_access(target, &http, client.endpoint(), &token).await?;
    let repo = client.dataset(target.org.clone(), target.name.clone());
    let fail = |what: &str, e: HFError| target.err(format!("{what}: {}", describe(&e)));
    let missing = match repo.info().send().await {
        Ok(info) => {
            if target.private && info.private == Some(false) {
                return Err(target.err(format!(
                    "dataset {} is public and this COPY asks for a private one (private is the default): add OPTIONS (private false) to push to a public dataset, or choose another",
                    target.repo_id()
                )));
            }
            if target.branch != "main"
                && !repo
                    .revision_exists()
                    .revision(&target.branch)
                    .send()
                    .await
                    .map_err(|e| fail("cannot read the branch", e))?
            {
                Missing::Branch
            } else {
                Missing::Nothing
            }
        }
        Err(HFError::RepoNotFound { .. }) => Missing::Repository,
        Err(e) => return Err(fail("cannot read the dataset repository", e)),
    };
    Ok(Connection {
        client,
        repo,
        missing,
    })
}

/// A checked Hub target. What does not exist yet is created by the first commit, so a push
/// that fails before it (a bad query, a model error) leaves no empty repository or branch.
struct Connection {
    client: HFClient,
    repo: HFRepository<RepoTypeDataset>,
    missing: Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    Nothing,
    Repository,
    Branch,
}

/// Creates what `missing` says is not there yet; returns the branch's head commit.
async fn create_missing(
    target: &HubTarget,
    client: &HFClient,
    repo: &HFRepository<RepoTypeDataset>,
    missing: Missing,
) -> Result<Option<String>> {
    let fail = |what: &str, e: HFError| target.err(format!("{what}: {}", describe(&e)));
    if missing == Missing::Repository {
        client
            .create_repository()
            .repo_id(&target.repo_id())
            .repo_type(RepoTypeDataset)
            .private(target.private)
            .exist_ok(true)
            .send()
            .await
            .map_err(|e| fail("cannot create the dataset repository", e))?;
    }
    if missing != Missing::Nothing && target.branch != "main" {
        repo.create_branch()
            .branch(&target.branch)
            .send()
            .await
            .map_err(|e| fail(&format!("cannot create branch {}", target.branch), e))?;
    }
    let info = repo
        .info()
        .revision(target.branch.clone())
        .send()
        .await
        .map_err(|e| fail("cannot read the new branch", e))?;
    Ok(info.sha)
}

/// The checks of [`connect`] for a planned `COPY … TO 'hf://…'`, run by the engine before the
/// query starts (so a bad token fails before any model work).
pub(crate) async fn preflight(url: &str, options: &HashMap<String, String>) -> Result<()> {
    let mut options = Options::new("COPY", options);
    let target = HubTarget::parse(url, &mut options)?;
    connect(&target).await.map(|_| ())
}

/// Checks the token with `whoami-v2` before any work: a read-only token is refused. (hf-hub's
/// `whoami` does not expose the token's role.)
async fn check_write_access(
    target: &HubTarget,
    http: &hub_http::Client,
    endpoint: &str,
    token: &str,
) -> Result<()> {
    let url = format!("{}/api/whoami-v2", endpoint.trim_end_matches('/'));
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(retry_base() * (2u32 << (attempt - 1).min(5))).await;
        }
        let response = match http.get(&url).bearer_auth(token).send().await {
            Ok(r) => r,
            Err(e) => {
                last = format!("cannot reach the Hub at {endpoint}: {}", e.without_url());
                continue;
            }
        };
        let status = response.status();
        if status.as_u16() == 401 {
            return Err(target.err(
                "the Hub refused the token (401): set HF_TOKEN to a valid token with write access",
            ));
        }
        if status.is_server_error() || status.as_u16() == 429 {
            last = format!("the Hub answered {status} to whoami");
            continue;
        }
        if !status.is_success() {
            return Err(target.err(format!("the Hub answered {status} to whoami")));
        }
        let body: serde_json::Value = match response.json().await {
            Ok(b) => b,
            Err(e) => {
                last = format!("unreadable whoami answer: {}", e.without_url());
                continue;
            }
        };
        let role = body
            .pointer("/auth/accessToken/role")
            .and_then(|r| r.as_str());
        if role == Some("read") {
            return Err(target.err(
                "the token is read-only: pushing needs a token with write access (HF_TOKEN)",
            ));
        }
        return Ok(());
    }
    Err(target.err(last))
}

/// A pushed part's rows, in the format's schema.
fn read_part(bytes: bytes::Bytes, kind: FileKind, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let batches: Vec<RecordBatch> = match kind {
        FileKind::Parquet => {
            datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                bytes,
            )
            .and_then(|b| b.build())
            .map_err(DataFusionError::from)?
            .collect::<std::result::Result<_, _>>()
            .map_err(DataFusionError::from)?
        }
        FileKind::Jsonl => datafusion::arrow::json::ReaderBuilder::new(Arc::clone(schema))
            .build(std::io::Cursor::new(bytes))
            .map_err(DataFusionError::from)?
            .collect::<std::result::Result<_, _>>()
            .map_err(DataFusionError::from)?,
    };
    batches
        .into_iter()
        .map(|b| {
            if b.num_columns() != schema.fields().len() {
                return Err(DataFusionError::Execution(format!(
                    "{} columns where the format writes {}",
                    b.num_columns(),
                    schema.fields().len()
                ))
                .into());
            }
            let columns = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| {
                    if c.data_type() == f.data_type() {
                        Ok(Arc::clone(c))
                    } else {
                        cast(c, f.data_type())
                    }
                })
                .collect::<std::result::Result<Vec<ArrayRef>, _>>()
                .map_err(DataFusionError::from)?;
            Ok(RecordBatch::try_new(Arc::clone(schema), columns).map_err(DataFusionError::from)?)
        })
        .collect()
}

/// A multiset of row hashes: the rows already pushed, each skipped once when it comes again.
pub(crate) struct RowSet {
    converter: RowConverter,
    counts: HashMap<[u8; 16], u64>,
    left: u64,
}

impl RowSet {
    pub fn new(schema: &SchemaRef) -> Result<Self> {
        let fields = schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(Self {
            converter: RowConverter::new(fields).map_err(DataFusionError::from)?,
            counts: HashMap::new(),
            left: 0,
        })
    }

    fn hashes(&self, batch: &RecordBatch) -> Result<Vec<[u8; 16]>> {
        let rows = self
            .converter
            .convert_columns(batch.columns())
            .map_err(DataFusionError::from)?;
        Ok(rows
            .iter()
            .map(|r| {
                let h = blake3::hash(r.as_ref());
                let mut out = [0u8; 16];
                out.copy_from_slice(&h.as_bytes()[..16]);
                out
            })
            .collect())
    }

    fn insert(&mut self, batch: &RecordBatch) -> Result<()> {
        for h in self.hashes(batch)? {
            *self.counts.entry(h).or_default() += 1;
            self.left += 1;
        }
        Ok(())
    }

    /// Which rows of `batch` are new (None: all are); pushed ones are counted off.
    pub fn new_rows(&mut self, batch: &RecordBatch) -> Result<Option<BooleanArray>> {
        if self.left == 0 {
            return Ok(None);
        }
        let keep: BooleanArray = self
            .hashes(batch)?
            .into_iter()
            .map(|h| match self.counts.get_mut(&h) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    self.left -= 1;
                    Some(false)
                }
                _ => Some(true),
            })
            .collect();
        Ok(Some(keep))
    }

    /// Pushed rows the query did not give again.
    pub fn left(&self) -> u64 {
        self.left
    }
}
