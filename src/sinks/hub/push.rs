//! An open push: its staging folder, the part files of each checkpoint, and the commits
//! (parts, card and manifest, each naming its parent).

use std::path::{Path, PathBuf};

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use hub_client::repository::{AddSource, CommitOperation, HFRepository};
use hub_client::{HFClient, HFError, RepoTypeDataset};
use serde::{Deserialize, Serialize};

use crate::error::{PrefflowError, Result};
use prefflow_udfs::models::hub::describe;

use super::client::{ATTEMPTS, Connection, Missing, connect, create_missing};
use super::target::HubTarget;
use crate::sinks::files::{FileKind, Writer};

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
    pub(super) repo: HFRepository<RepoTypeDataset>,
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
            for (split, part) in crate::sinks::files::by_split(&rows, mask.as_ref())? {
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
