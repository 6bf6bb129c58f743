//! Where an output may go. Every write (`COPY … TO`, the training sinks, `--output`) is checked
//! here before a row is read, and moved into place by [`commit`]: an output never deletes or
//! replaces what prefflow did not write.
//!
//! - A file never replaces a folder and a folder never replaces a file.
//! - An existing folder is replaced only when it is recognisably an earlier prefflow output of
//!   the same kind: a training dataset (its card says prefflow wrote it as this format, and it
//!   holds only its split files and card), or a folder of DataFusion part files of the same
//!   ending and nothing else. An empty folder holds nothing to lose.
//! - A target that is one of the query's own input files, contains one, lies inside an input
//!   folder, or contains the current directory is refused.
//! - Pseudo filesystems (/proc, /sys, /dev) are refused, and the staging entry is created here
//!   first, so an unwritable target fails at once with the OS's reason instead of inside a
//!   writer's retry loop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::DefaultTableSource;
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::view::ViewTable;
use datafusion::logical_expr::LogicalPlan;

use crate::error::{PrefflowError, Result};

/// What a write puts at its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// One file (`x.parquet`, `--output x.csv`).
    File,
    /// A folder of DataFusion part files with this ending (`COPY … TO 'dir/'`).
    Parts(String),
    /// A training dataset folder of this format (`STORED AS dpo`) whose split files end in
    /// this (`parquet` or `jsonl`, its `file_format`): only those are prefflow's.
    Dataset(&'static str, &'static str),
}

fn refuse(message: String) -> PrefflowError {
    PrefflowError::Target(message)
}

/// Checks that writing `kind` at `target` destroys nothing prefflow did not write; `inputs` are
/// the local files and folders the query reads.
pub fn check(target: &Path, kind: &Output, inputs: &[PathBuf]) -> Result<()> {
    let shown = target.display();
    let target_abs = absolute(target);
    for pseudo in ["/proc", "/sys", "/dev"] {
        if target_abs.starts_with(pseudo) {
            return Err(refuse(format!(
                "cannot write {shown}: {pseudo} is not a filesystem for data files"
            )));
        }
    }
    // Through symlinks: a link to a folder is a folder.
    let meta = std::fs::metadata(target).ok();
    match (kind, &meta) {
        (Output::File, Some(m)) if m.is_dir() => {
            return Err(refuse(format!(
                "{shown} is a folder: a file output never replaces a folder (name a file inside it, or move the folder away yourself)"
            )));
        }
        (Output::Parts(_) | Output::Dataset(..), Some(m)) if !m.is_dir() => {
            return Err(refuse(format!(
                "{shown} is a file: a folder output never replaces a file (choose another name, or move the file away yourself)"
            )));
        }
        _ => {}
    }
    // Paths compared as the filesystem resolves them (symlinks, `..`).
    let resolved = resolve(&target_abs);
    if let Ok(cwd) = std::env::current_dir().and_then(|d| d.canonicalize())
        && cwd.starts_with(&resolved)
    {
        return Err(refuse(format!(
            "{shown} contains the current directory: an output there would replace it"
        )));
    }
    for input in inputs {
        let input = resolve(&absolute(input));
        if input == resolved {
            return Err(refuse(format!(
                "{shown} is one of the query's own inputs: write the output somewhere else"
            )));
        }
        if input.starts_with(&resolved) {
            return Err(refuse(format!(
                "{shown} contains {}, which the query reads: write the output somewhere else",
                input.display()
            )));
        }
        if input.is_dir() && resolved.starts_with(&input) {
            return Err(refuse(format!(
                "{shown} is inside {}, a folder the query reads or a table of this session reads: the output would become part of its input",
                input.display()
            )));
        }
    }
    if let (Some(m), Output::Parts(_) | Output::Dataset(..)) = (&meta, kind)
        && m.is_dir()
    {
        let foreign = foreign_entries(target, kind);
        if !foreign.is_empty() {
            let what = match kind {
                Output::Dataset(f, ext) => format!("a prefflow {f} dataset of .{ext} files"),
                _ => "a folder of part files written by an earlier COPY".to_string(),
            };
            let mut names = foreign.clone();
            names.truncate(5);
            let more = if foreign.len() > 5 {
                format!(" and {} more", foreign.len() - 5)
            } else {
                String::new()
            };
            return Err(refuse(format!(
                "{shown} already exists and is not {what}: it holds {}{more}; prefflow replaces only its own outputs (choose a new folder, or empty this one yourself)",
                names.join(", ")
            )));
        }
    }
    Ok(())
}

/// The entries of an existing folder that the output of `kind` did not write (empty: it may be
/// replaced).
fn foreign_entries(dir: &Path, kind: &Output) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec!["(an unreadable listing)".to_string()];
    };
    let mut names: Vec<(String, bool)> = entries
        .flatten()
        .map(|e| {
            let is_file = e.file_type().is_ok_and(|t| t.is_file());
            (e.file_name().to_string_lossy().into_owned(), is_file)
        })
        .collect();
    names.sort();
    if names.is_empty() {
        return Vec::new();
    }
    // The split files the earlier run wrote (its card names their ending) are prefflow's too,
    // so a dataset may change its file_format; any other file is the user's.
    let earlier_ext = match kind {
        Output::Dataset(format, _) => std::fs::read_to_string(dir.join("README.md"))
            .ok()
            .filter(|card| written_as(card, format))
            .and_then(|card| file_format_of(&card)),
        _ => None,
    };
    let ok = |name: &str, is_file: bool| -> bool {
        if !is_file {
            return false;
        }
        match kind {
            Output::Dataset(_, ext) => {
                name == "README.md"
                    || ["train", "validation"].iter().any(|split| {
                        [Some(*ext), earlier_ext]
                            .iter()
                            .flatten()
                            .any(|ext| name == format!("{split}.{ext}"))
                    })
            }
            Output::Parts(ext) => is_part_file(name, ext),
            Output::File => false,
        }
    };
    let mut foreign: Vec<String> = names
        .iter()
        .filter(|(n, f)| !ok(n, *f))
        .map(|(n, f)| if *f { n.clone() } else { format!("{n}/") })
        .collect();
    if let Output::Dataset(format, _) = kind
        && foreign.is_empty()
        && !is_card_of(&dir.join("README.md"), format)
    {
        foreign.push("README.md (not a prefflow dataset card for this format)".to_string());
    }
    foreign
}

/// DataFusion names part files `<16 letters or digits>_<n>.<ext>`.
fn is_part_file(name: &str, ext: &str) -> bool {
    let Some(stem) = name.strip_suffix(&format!(".{ext}")) else {
        return false;
    };
    let Some((id, n)) = stem.split_once('_') else {
        return false;
    };
    id.len() == 16
        && id.chars().all(|c| c.is_ascii_alphanumeric())
        && !n.is_empty()
        && n.chars().all(|c| c.is_ascii_digit())
}

/// Does `card` say prefflow wrote its folder as `format`?
fn is_card_of(card: &Path, format: &str) -> bool {
    std::fs::read_to_string(card).is_ok_and(|text| written_as(&text, format))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The path as the filesystem would resolve it, component by component: every existing prefix
/// through its symlinks, and `..` / `.` lexically where the prefix does not exist yet (a folder
/// that does not exist cannot be a symlink, so `newdir/../in.jsonl` is `in.jsonl`).
pub(crate) fn resolve(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in p.components() {
        match part {
            Component::Prefix(_) | Component::RootDir => out.push(part.as_os_str()),
            Component::CurDir => {}
            // `out` is resolved already, so its parent is the real parent.
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => {
                out.push(name);
                if std::fs::symlink_metadata(&out).is_ok()
                    && let Ok(real) = out.canonicalize()
                {
                    out = real;
                }
            }
        }
    }
    out
}

/// The local files and folders a plan reads (through views too).
pub fn plan_inputs(plan: &LogicalPlan) -> Vec<PathBuf> {
    let mut out = Vec::new();
    collect_inputs(plan, &mut out);
    out
}

fn collect_inputs(plan: &LogicalPlan, out: &mut Vec<PathBuf>) {
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(source) = scan.source.as_ref().downcast_ref::<DefaultTableSource>()
        {
            let provider = source.table_provider.as_ref();
            if let Some(table) = provider.downcast_ref::<ListingTable>() {
                for url in table.table_paths() {
                    let Ok(path) = url.get_url().to_file_path() else {
                        continue;
                    };
                    match url.get_glob() {
                        // A glob reads the files it matches, not its whole folder.
                        Some(glob) => {
                            let pattern = path.join(glob.as_str()).display().to_string();
                            out.extend(glob::glob(&pattern).into_iter().flatten().flatten());
                        }
                        None => out.push(path),
                    }
                }
            } else if let Some(view) = provider.downcast_ref::<ViewTable>() {
                collect_inputs(view.logical_plan(), out);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
}

/// Creates the staging entry (a file, or a folder) so an unwritable place fails now, with the
/// reason in plain words.
pub fn stage(tmp: &Path, target: &Path, folder: bool) -> Result<()> {
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| cannot_write(target, &e))?;
    }
    let made = if folder {
        std::fs::create_dir(tmp)
    } else {
        std::fs::File::create(tmp).map(|_| ())
    };
    made.map_err(|e| cannot_write(target, &e))
}

fn cannot_write(target: &Path, e: &std::io::Error) -> PrefflowError {
    refuse(format!("cannot write {}: {}", target.display(), plain(e)))
}

/// An OS error in words a user can act on: plain words where the error says exactly what
/// happened, the OS's own message (not a guess at the cause) otherwise.
fn plain(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::PermissionDenied => "permission denied".to_string(),
        ErrorKind::ReadOnlyFilesystem => "the filesystem is read-only".to_string(),
        ErrorKind::StorageFull => "the disk is full".to_string(),
        ErrorKind::NotADirectory => "a part of its path is a file, not a folder".to_string(),
        _ => e.to_string(),
    }
}

/// A staging entry that is removed when dropped unless it was committed, so a statement that
/// is cancelled (its future dropped by Ctrl-C) or fails leaves no staging copy behind.
pub struct Staged {
    path: PathBuf,
    done: bool,
}

impl Staged {
    /// Stages `tmp` for `target` (see [`stage`]) and guards it.
    pub fn new(tmp: PathBuf, target: &Path, folder: bool) -> Result<Self> {
        stage(&tmp, target, folder)?;
        Ok(Self {
            path: tmp,
            done: false,
        })
    }

    /// The staging path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the staged output into place (see [`commit`]).
    pub fn commit(mut self, target: &Path, kind: &Output) -> Result<()> {
        self.done = true;
        commit(&self.path, target, kind)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            remove_path(&self.path);
        }
    }
}

/// Moves a finished output from `tmp` into place. A file is replaced by one rename (atomic); a
/// folder checked by [`check`] is swapped with two renames, the old one removed only after the
/// new one is in place. On failure the staging copy is removed and the target left as it was.
pub fn commit(tmp: &Path, target: &Path, kind: &Output) -> Result<()> {
    if !tmp.exists() {
        return Ok(());
    }
    // A symlinked target is written where the link points; the link stays.
    let real = std::fs::symlink_metadata(target)
        .is_ok_and(|m| m.file_type().is_symlink())
        .then(|| target.canonicalize().ok())
        .flatten();
    let target = real.as_deref().unwrap_or(target);
    let result = swap(tmp, target, kind);
    if result.is_err() {
        remove_path(tmp);
    }
    result
}

fn swap(tmp: &Path, target: &Path, kind: &Output) -> Result<()> {
    let fail = |e: std::io::Error| {
        refuse(format!(
            "could not move the finished output into {}: {}; the previous content is unchanged",
            target.display(),
            plain(&e)
        ))
    };
    let meta = std::fs::metadata(target).ok();
    match (kind, meta) {
        (Output::File, Some(m)) if m.is_dir() => Err(refuse(format!(
            "{} became a folder while the query ran: the output was not written",
            target.display()
        ))),
        (Output::File, _) | (_, None) => std::fs::rename(tmp, target).map_err(fail),
        (_, Some(m)) if !m.is_dir() => Err(refuse(format!(
            "{} became a file while the query ran: the output was not written",
            target.display()
        ))),
        (_, Some(_)) => {
            // Checked again: something may have been put there while the query ran.
            let foreign = foreign_entries(target, kind);
            if !foreign.is_empty() {
                return Err(refuse(format!(
                    "{} changed while the query ran (now holds {}): the output was not written",
                    target.display(),
                    foreign.join(", ")
                )));
            }
            let old = temp_sibling(target);
            std::fs::rename(target, &old).map_err(fail)?;
            if let Err(e) = std::fs::rename(tmp, target) {
                // Put the previous output back.
                let _ = std::fs::rename(&old, target);
                return Err(fail(e));
            }
            remove_path(&old);
            Ok(())
        }
    }
}

/// A hidden name beside `target`, keeping its ending so DataFusion picks the same output
/// kind (one file for `x.parquet`, a folder of parts for `x/`).
pub fn temp_sibling(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".to_string());
    let dir = target.parent().unwrap_or(Path::new(""));
    remove_orphans(dir, &name);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = format!(".prefflow-tmp-{}-{n}-{name}", std::process::id());
    dir.join(tmp)
}

/// Removes the staging copies of `name` left by runs that were killed (their process is gone),
/// so that a crash leaves nothing behind once the command is run again.
fn remove_orphans(dir: &Path, name: &str) {
    let listing = if dir.as_os_str().is_empty() {
        std::fs::read_dir(".")
    } else {
        std::fs::read_dir(dir)
    };
    let Ok(entries) = listing else { return };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(".prefflow-tmp-") else {
            continue;
        };
        let mut parts = rest.splitn(3, '-');
        let (Some(pid), Some(_), Some(rest_name)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if rest_name != name {
            continue;
        }
        if pid.parse().is_ok_and(process_gone) {
            remove_path(&entry.path());
        }
    }
}

/// Whether process `pid` has ended; false where a process's liveness cannot be seen (no
/// /proc), so nothing is removed on a guess.
pub(crate) fn process_gone(pid: u32) -> bool {
    Path::new("/proc/self").exists() && !Path::new("/proc").join(pid.to_string()).exists()
}

/// Best-effort removal of a staged output.
pub fn remove_path(p: &Path) {
    if p.is_dir() {
        let _ = std::fs::remove_dir_all(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

/// A local filesystem path for a COPY target, or None for object-store URLs.
pub(crate) fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(p) = url.strip_prefix("file://") {
        return Some(PathBuf::from(p));
    }
    (!url.contains("://")).then(|| PathBuf::from(url.trim_end_matches('/')))
}

/// The front matter's tags: how a later run recognises a folder prefflow wrote in `format`
/// (see [`written_as`]; `sinks::card` writes them).
pub(crate) fn card_tags(format: &str) -> String {
    format!("tags:\n- prefflow\n- {format}\n")
}

/// Whether a card's text says prefflow wrote its folder as `format` (so a later COPY of the same
/// format may replace it).
pub(crate) fn written_as(card: &str, format: &str) -> bool {
    card.contains(&card_tags(format)) && card.contains("Written by prefflow (`COPY")
}

/// The split files' ending a prefflow card records (`- file_format: jsonl`), if it records one.
pub(crate) fn file_format_of(card: &str) -> Option<&'static str> {
    ["parquet", "jsonl"]
        .into_iter()
        .find(|ext| card.lines().any(|l| l == format!("- file_format: {ext}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_through_missing_folders_resolve_lexically() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::write(base.join("in.jsonl"), b"{}").unwrap();
        assert_eq!(
            resolve(&base.join("newdir/../in.jsonl")),
            base.join("in.jsonl")
        );
        assert_eq!(
            resolve(&base.join("a/b/../../c/./../in.jsonl")),
            base.join("in.jsonl")
        );
        std::fs::create_dir(base.join("real")).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
        assert_eq!(resolve(&base.join("link/new/x")), base.join("real/new/x"));
        let err = check(
            &base.join("newdir/../in.jsonl"),
            &Output::File,
            &[base.join("in.jsonl")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("own inputs"), "{err}");
        assert!(!base.join("newdir").exists());
    }

    #[test]
    fn part_file_names() {
        assert!(is_part_file("AbCdEf0123456789_0.parquet", "parquet"));
        assert!(!is_part_file("notes_0.parquet", "parquet"));
        assert!(!is_part_file("AbCdEf0123456789_0.json", "parquet"));
        assert!(!is_part_file("AbCdEf0123456789_x.parquet", "parquet"));
    }

    #[test]
    fn a_file_never_replaces_a_folder_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("x.parquet");
        std::fs::create_dir(&folder).unwrap();
        let err = check(&folder, &Output::File, &[]).unwrap_err().to_string();
        assert!(err.contains("is a folder"), "{err}");
        let file = dir.path().join("pairs");
        std::fs::write(&file, b"notes").unwrap();
        let err = check(&file, &Output::Dataset("dpo", "parquet"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a file"), "{err}");
    }

    #[test]
    fn foreign_folders_are_named_with_their_content() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let err = check(dir.path(), &Output::Dataset("dpo", "parquet"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("notes.txt"), "{err}");
        let err = check(dir.path(), &Output::Parts("parquet".into()), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("notes.txt"), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join("notes.txt")).unwrap(),
            b"mine"
        );
    }
}
