//! `hf://datasets/ORG/NAME[@REV]/PATH` addresses, fetched through hf-hub into the Hugging
//! Face cache (HF_HOME) from HF_ENDPOINT, with HF_TOKEN (or the cached login token).
//!
//! PATH may be a file, a folder or a glob; the files are downloaded once and then read from the
//! local snapshot, so a second run works offline.

use std::path::{Path, PathBuf};

use hf_hub::api::tokio::Api;
use hf_hub::{Repo, RepoType};

use crate::error::{PrefflowError, Result};

/// The scheme prefix of Hub addresses.
pub const PREFIX: &str = "hf://";

/// A parsed `hf://` dataset address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfPath {
    /// `ORG/NAME`.
    pub repo_id: String,
    /// Branch, tag or commit; `main` when not given.
    pub revision: String,
    /// File, folder or glob inside the repository; empty for the whole repository.
    pub path: String,
}

/// Parses `hf://datasets/ORG/NAME[@REV][/PATH]`.
pub fn parse(url: &str) -> Result<HfPath> {
    let bad = |why: &str| PrefflowError::Hub {
        url: url.to_string(),
        message: format!("{why}; expected hf://datasets/ORG/NAME[@REVISION]/PATH"),
    };
    let rest = url
        .strip_prefix(PREFIX)
        .ok_or_else(|| bad("not an hf:// address"))?;
    let rest = rest
        .strip_prefix("datasets/")
        .ok_or_else(|| bad("only datasets can be read as tables"))?;
    let mut parts = rest.splitn(3, '/');
    let org = parts
        .next()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("missing ORG"))?;
    let name_rev = parts
        .next()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("missing NAME"))?;
    let path = parts.next().unwrap_or("").trim_matches('/').to_string();
    let (name, revision) = match name_rev.split_once('@') {
        // Revisions such as refs/convert/parquet are written URL-encoded.
        Some((n, r)) if !r.is_empty() => (n, r.replace("%2F", "/").replace("%2f", "/")),
        Some(_) => return Err(bad("empty revision after @")),
        None => (name_rev, "main".to_string()),
    };
    Ok(HfPath {
        repo_id: format!("{org}/{name}"),
        revision,
        path,
    })
}

fn api() -> Result<Api> {
    prefflow_udfs::models::hub::api().map_err(|e| PrefflowError::Hub {
        url: PREFIX.to_string(),
        message: format!("cannot set up the Hub client: {e}"),
    })
}

fn is_glob(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

/// Downloads what `url` names and returns the local path to read: a file, or the snapshot
/// folder (joined with the glob, if any) holding the files.
pub async fn resolve(url: &str) -> Result<String> {
    let hf = parse(url)?;
    let api = api()?;
    let fail = |e: hf_hub::api::tokio::ApiError| PrefflowError::Hub {
        url: url.to_string(),
        message: prefflow_udfs::models::hub::describe(&e),
    };
    // A branch is resolved to its current commit when the Hub answers, as huggingface_hub
    // does, so a dataset that changed is read anew (hf-hub serves a cached file for a branch
    // without asking); offline, the cached copy of the branch is read.
    let branch = api.repo(Repo::with_revision(
        hf.repo_id.clone(),
        RepoType::Dataset,
        hf.revision.clone(),
    ));
    let info = branch.info().await;
    let revision = match &info {
        Ok(i) if !i.sha.is_empty() => {
            // The branch now points at this commit in the cache too, so a later offline read
            // of the branch finds these files.
            let _ = hf_hub::Cache::from_env()
                .repo(Repo::with_revision(
                    hf.repo_id.clone(),
                    RepoType::Dataset,
                    hf.revision.clone(),
                ))
                .create_ref(&i.sha);
            i.sha.clone()
        }
        _ => hf.revision.clone(),
    };
    let repo = api.repo(Repo::with_revision(
        hf.repo_id.clone(),
        RepoType::Dataset,
        revision,
    ));
    let single_file = !hf.path.is_empty() && !is_glob(&hf.path) && has_extension(&hf.path);
    if single_file {
        let local = repo.get(&hf.path).await.map_err(fail)?;
        return Ok(local.display().to_string());
    }
    let files = matching_files(info, &hf).await.map_err(|e| match e {
        Ok(api_err) => fail(api_err),
        Err(message) => PrefflowError::Hub {
            url: url.to_string(),
            message,
        },
    })?;
    let mut root: Option<PathBuf> = None;
    for file in &files {
        let local = repo.get(file).await.map_err(fail)?;
        root.get_or_insert_with(|| snapshot_root(&local, file));
    }
    let root = root.expect("matching_files returns at least one file");
    Ok(if hf.path.is_empty() {
        root.display().to_string()
    } else {
        root.join(&hf.path).display().to_string()
    })
}

fn has_extension(path: &str) -> bool {
    Path::new(path).extension().is_some()
}

/// Files of the repository under a folder or matching a glob.
async fn matching_files(
    info: std::result::Result<hf_hub::api::RepoInfo, hf_hub::api::tokio::ApiError>,
    hf: &HfPath,
) -> std::result::Result<Vec<String>, std::result::Result<hf_hub::api::tokio::ApiError, String>> {
    let info = info.map_err(Ok)?;
    let pattern = if is_glob(&hf.path) {
        Some(glob::Pattern::new(&hf.path).map_err(|e| Err(format!("bad glob: {e}")))?)
    } else {
        None
    };
    let prefix = format!("{}/", hf.path);
    let files: Vec<String> = info
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .filter(|f| match &pattern {
            // Shell rules, as for local globs: `*` within a folder, `**` across folders.
            Some(p) => p.matches_with(
                f,
                glob::MatchOptions {
                    case_sensitive: true,
                    require_literal_separator: true,
                    require_literal_leading_dot: true,
                },
            ),
            None => hf.path.is_empty() || f.starts_with(&prefix),
        })
        // Repository metadata is not data.
        .filter(|f| !f.starts_with('.') && !f.ends_with(".md"))
        .collect();
    if files.is_empty() {
        return Err(Err(format!(
            "no files match '{}' in dataset {}@{}",
            hf.path, hf.repo_id, hf.revision
        )));
    }
    Ok(files)
}

/// The snapshot folder: the downloaded file's path without the repository-relative part.
fn snapshot_root(local: &Path, rfilename: &str) -> PathBuf {
    let mut root = local.to_path_buf();
    for _ in Path::new(rfilename).components() {
        root.pop();
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let p = parse("hf://datasets/org/name@v1.0/data/train.jsonl").unwrap();
        assert_eq!(p.repo_id, "org/name");
        assert_eq!(p.revision, "v1.0");
        assert_eq!(p.path, "data/train.jsonl");
        let p = parse("hf://datasets/org/name@refs%2Fconvert%2Fparquet").unwrap();
        assert_eq!(p.revision, "refs/convert/parquet");
        assert_eq!(p.path, "");
        assert!(parse("hf://org/model").is_err());
        assert!(parse("hf://datasets/org").is_err());
    }
}
