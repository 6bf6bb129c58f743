//! Datasets in: file paths and `hf://` addresses used directly in FROM, `CREATE EXTERNAL
//! TABLE` (also `STORED AS JSONL` / `NDJSON`, and hf:// locations), and errors that name the
//! file and line of a malformed JSONL record.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory, UrlTableFactory};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{plan_datafusion_err, plan_err};
use datafusion::datasource::DefaultTableSource;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::listing_table_factory::ListingTableFactory;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{CreateExternalTable, LogicalPlan};
use datafusion_session::SessionStore;

use crate::hf;

/// A file format recognised from a path's ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recognised {
    /// The DataFusion file format name: parquet, csv or json.
    pub format: &'static str,
    /// The ending to list files by, compression included (".jsonl.gz").
    pub extension: String,
    /// Options for the format factory (compression, delimiter).
    pub options: HashMap<String, String>,
}

const COMPRESSIONS: [(&str, &str); 4] = [
    ("gz", "gzip"),
    ("bz2", "bzip2"),
    ("xz", "xz"),
    ("zst", "zstd"),
];

/// The format of a file from its name: .parquet, .csv, .tsv, .json, .jsonl, .ndjson, the
/// text ones optionally compressed (.gz, .bz2, .xz, .zst).
pub fn recognise(path: &str) -> Option<Recognised> {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    let mut options = HashMap::new();
    let mut stem = name.as_str();
    let mut compression = "";
    for (ending, kind) in COMPRESSIONS {
        if let Some(s) = stem.strip_suffix(&format!(".{ending}")) {
            options.insert("format.compression".to_string(), kind.to_string());
            stem = s;
            compression = ending;
        }
    }
    let (format, ext) = match stem.rsplit_once('.')?.1 {
        "parquet" if compression.is_empty() => ("parquet", "parquet"),
        "csv" => ("csv", "csv"),
        "tsv" => {
            options.insert("format.delimiter".to_string(), "\t".to_string());
            ("csv", "tsv")
        }
        "json" => ("json", "json"),
        "jsonl" => ("json", "jsonl"),
        "ndjson" => ("json", "ndjson"),
        _ => return None,
    };
    let extension = if compression.is_empty() {
        format!(".{ext}")
    } else {
        format!(".{ext}.{compression}")
    };
    Some(Recognised {
        format,
        extension,
        options,
    })
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The files a local glob matches, by shell rules (`*` within a segment, `**` across folders,
/// no hidden files unless the pattern names a dot), sorted; none is an error.
pub(crate) fn shell_glob(pattern: &str) -> Result<Vec<PathBuf>> {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let mut files: Vec<PathBuf> = glob::glob_with(pattern, options)
        .map_err(|e| plan_datafusion_err!("{pattern}: not a valid glob: {e}"))?
        .flatten()
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(plan_datafusion_err!(
            "{pattern}: no file matches this pattern"
        ));
    }
    Ok(files)
}

/// Local files under `root` (recursively), sorted, so a folder's format is found the same way
/// every time.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Builds a listing table over a local (already resolved) location: a file, folder or glob.
async fn listing_table(state: &SessionState, location: &str) -> Result<Arc<dyn TableProvider>> {
    let recognised = if Path::new(location).is_dir() {
        walk(Path::new(location))
            .iter()
            .find_map(|p| recognise(&p.display().to_string()))
            .ok_or_else(|| {
                plan_datafusion_err!(
                    "{location}: no .parquet, .csv, .json, .jsonl or .ndjson files in this folder"
                )
            })?
    } else {
        let r = recognise(location).ok_or_else(|| {
            plan_datafusion_err!(
                "{location}: unknown file type (use .parquet, .csv, .tsv, .json, .jsonl or .ndjson)"
            )
        })?;
        if !is_glob(location) && !Path::new(location).exists() && !location.contains("://") {
            return Err(plan_datafusion_err!("{location}: no such file"));
        }
        r
    };
    // The local files, listed once for the checks below and a glob's table paths.
    let files = if location.contains("://") {
        Vec::new()
    } else if is_glob(location) {
        shell_glob(location)?
    } else {
        local_files(location)
    };
    if recognised.format == "parquet" {
        check_parquet_files(&files)?;
    }
    if recognised.format == "csv" {
        check_csv_headers(&files, recognised.options.get("format.delimiter"))?;
    }
    let mut options = recognised.options.clone();
    if recognised.extension == ".json"
        && !is_glob(location)
        && Path::new(location).is_file()
        && json_array_file(Path::new(location))
    {
        // Hub datasets often ship one JSON array instead of JSON lines.
        options.insert("format.newline_delimited".to_string(), "false".to_string());
    }
    let format = state
        .get_file_format_factory(recognised.format)
        .ok_or_else(|| plan_datafusion_err!("file format {} is not registered", recognised.format))?
        .create(state, &options)?;
    let listing = ListingOptions::new(format).with_file_extension(recognised.extension.clone());
    let config = if is_glob(location) && !location.contains("://") {
        // A glob means what it means in a shell: `*` and `?` match within one path segment,
        // `**` any number of folders (DataFusion's own matching lets `*` cross folders, or
        // sees only the top level).
        let urls = files
            .iter()
            .map(|f| ListingTableUrl::parse(f.display().to_string()))
            .collect::<Result<Vec<_>>>()?;
        ListingTableConfig::new_with_multi_paths(urls).with_listing_options(listing)
    } else {
        ListingTableConfig::new(ListingTableUrl::parse(location)?).with_listing_options(listing)
    };
    let listing = config.options.clone();
    let config = config.infer_partitions_from_path(state).await?;
    let config = match config.infer_schema(state).await {
        Ok(c) => c,
        Err(e) => {
            let e = with_json_diagnostics(e, &[location.to_string()]);
            return Err(name_conflicting_files(e, state, location, listing).await);
        }
    };
    Ok(Arc::new(ListingTable::try_new(config)?))
}

/// A schema that does not merge across the files of one table (`x` is Int32 in one Parquet
/// file and Int64 in another, a number here and text there) is reported with two files that
/// disagree; Arrow's message names neither.
async fn name_conflicting_files(
    e: DataFusionError,
    state: &SessionState,
    location: &str,
    listing: Option<ListingOptions>,
) -> DataFusionError {
    let message = e.to_string();
    let (Some(field), Some(listing)) = (
        message
            .split("Fail to merge schema field '")
            .nth(1)
            .and_then(|r| r.split('\'').next()),
        listing,
    ) else {
        return e;
    };
    let mut first: Option<(PathBuf, DataType)> = None;
    for file in local_files(location) {
        if !file
            .display()
            .to_string()
            .ends_with(&listing.file_extension)
        {
            continue;
        }
        let Ok(url) = ListingTableUrl::parse(file.display().to_string()) else {
            continue;
        };
        let Ok(config) = ListingTableConfig::new(url)
            .with_listing_options(listing.clone())
            .infer_schema(state)
            .await
        else {
            continue;
        };
        let Some(t) = config
            .file_schema
            .as_ref()
            .and_then(|s| s.field_with_name(field).ok().map(|f| f.data_type().clone()))
        else {
            continue;
        };
        match &first {
            None => first = Some((file, t)),
            Some((f0, t0)) if *t0 != t => {
                return DataFusionError::Plan(format!(
                    "column '{field}' is {t0} in {} but {t} in {}: the files of one table must agree (cast them to one type with a query per file, or read them as separate tables)",
                    f0.display(),
                    file.display()
                ));
            }
            Some(_) => {}
        }
    }
    e
}

/// The CSV files of one table must have one header: DataFusion reads columns by position, so
/// two files with the same columns in another order would swap values silently. A header
/// with a name twice is refused too (which column would a query mean?). Compressed files are
/// not opened here.
fn check_csv_headers(files: &[PathBuf], delimiter: Option<&String>) -> Result<()> {
    use std::io::BufRead;
    let delimiter = delimiter.map_or(",", |d| d.as_str());
    let mut first: Option<(PathBuf, Vec<String>)> = None;
    for file in files {
        let name = file.display().to_string();
        if recognise(&name)
            .is_none_or(|r| r.format != "csv" || r.options.contains_key("format.compression"))
        {
            continue;
        }
        let Ok(f) = std::fs::File::open(&file) else {
            continue;
        };
        let mut line = String::new();
        if std::io::BufReader::new(f).read_line(&mut line).is_err() || line.trim().is_empty() {
            continue;
        }
        let header: Vec<String> = line
            .trim_end_matches(['\r', '\n'])
            .trim_start_matches('\u{feff}')
            .split(delimiter)
            .map(|c| c.trim().trim_matches('"').to_string())
            .collect();
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = header.iter().find(|c| !seen.insert(c.as_str())) {
            return Err(plan_datafusion_err!(
                "{name}: the header names column '{dup}' twice: rename one"
            ));
        }
        match &first {
            None => first = Some((file.to_path_buf(), header)),
            Some((f0, h0)) if *h0 != header => {
                let same_names = {
                    let (mut a, mut b) = (h0.clone(), header.clone());
                    a.sort();
                    b.sort();
                    a == b
                };
                let what = if same_names {
                    "the same columns in another order"
                } else {
                    "other columns"
                };
                return Err(plan_datafusion_err!(
                    "{} and {name} have {what} ({} vs {}): CSV columns are read by position, so read them as separate tables (or rewrite one with the other's header order)",
                    f0.display(),
                    h0.join(","),
                    header.join(",")
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Every local Parquet file of a table (a file, folder or glob's files) must start and end with
/// Parquet's magic bytes: an empty or truncated file (an interrupted copy) is an error naming
/// it, never an empty table or a file silently skipped.
fn check_parquet_files(files: &[PathBuf]) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    for file in files {
        if recognise(&file.display().to_string()).is_none_or(|r| r.format != "parquet") {
            continue;
        }
        let bad = |why: &str| {
            plan_datafusion_err!("{}: not a readable Parquet file ({why})", file.display())
        };
        let mut f = std::fs::File::open(&file).map_err(|e| bad(&e.to_string()))?;
        let len = f.metadata().map_err(|e| bad(&e.to_string()))?.len();
        if len == 0 {
            return Err(bad("0 bytes"));
        }
        let (mut head, mut tail) = ([0u8; 4], [0u8; 4]);
        let read = len >= 12
            && f.read_exact(&mut head).is_ok()
            && f.seek(SeekFrom::End(-4)).is_ok()
            && f.read_exact(&mut tail).is_ok();
        if !read || &head != b"PAR1" {
            return Err(bad("it does not start like a Parquet file"));
        }
        if &tail != b"PAR1" {
            return Err(bad(
                "truncated: its footer is missing, as after an interrupted copy",
            ));
        }
    }
    Ok(())
}

/// Does this `.json` file hold one JSON array (rather than JSON lines)?
fn json_array_file(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut buf = [0u8; 256];
    let Ok(n) = BufReader::new(file).read(&mut buf) else {
        return false;
    };
    buf[..n].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// Resolves hf:// addresses to local paths; other locations pass through.
pub async fn resolve_location(location: &str) -> Result<String> {
    if location.starts_with(hf::PREFIX) {
        Ok(hf::resolve(location).await.map_err(DataFusionError::from)?)
    } else {
        Ok(location.to_string())
    }
}

/// Does a table name in FROM look like a dataset address rather than a missing table?
fn looks_like_location(name: &str) -> bool {
    name.starts_with(hf::PREFIX)
        || recognise(name).is_some()
        || name.contains('/')
        || name.starts_with('.')
        // A folder named bare (or a symlink to one) is a folder.
        || Path::new(name).is_dir()
}

/// `SELECT … FROM 'data/x.jsonl'` and `FROM 'hf://datasets/…'`.
#[derive(Debug, Default)]
pub struct PathTables {
    session: SessionStore,
}

impl PathTables {
    /// A factory; call [`PathTables::session_store`]`.with_state(..)` once the session exists.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where the factory finds the session it plans in.
    pub fn session_store(&self) -> &SessionStore {
        &self.session
    }
}

#[async_trait]
impl UrlTableFactory for PathTables {
    async fn try_new(&self, url: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if !looks_like_location(url) {
            return Ok(None);
        }
        let state = self
            .session
            .get_session()
            .upgrade()
            .and_then(|s| s.read().as_any().downcast_ref::<SessionState>().cloned())
            .ok_or_else(|| plan_datafusion_err!("the session behind {url} is gone"))?;
        // On a cluster (the engine sets the client's version), a bare file name with a dot
        // does not survive Ballista's plan serialization: its column qualifier `x.jsonl` is
        // read back as schema `x`, table `jsonl`.
        let on_cluster =
            !prefflow_udfs::models::settings::PrefflowOptions::from_config(state.config_options())
                .0
                .client_version
                .is_empty();
        if on_cluster && !url.contains(['/', '\\']) && url.contains('.') {
            return plan_err!(
                "on a cluster, name the file with its folder: './{url}' (a bare file name with a dot does not survive the plan's trip to the scheduler)"
            );
        }
        let location = resolve_location(url).await?;
        listing_table(&state, &location).await.map(Some)
    }
}

/// `CREATE EXTERNAL TABLE … STORED AS PARQUET | CSV | JSON | JSONL | NDJSON LOCATION '…'`
/// with hf:// locations resolved first.
#[derive(Debug, Default)]
pub struct ExternalTables {
    inner: ListingTableFactory,
}

#[async_trait]
impl TableProviderFactory for ExternalTables {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let mut cmd = cmd.clone();
        let mut locations = Vec::with_capacity(cmd.locations.len());
        for l in &cmd.locations {
            let local = resolve_location(l).await?;
            // DataFusion reads a folder as `folder/*.<STORED AS type>`, which misses .jsonl
            // and .ndjson files; glob for the ending the folder's files really have.
            let dir = Path::new(&local);
            let found = dir
                .is_dir()
                .then(|| {
                    walk(dir)
                        .iter()
                        .find_map(|p| recognise(&p.display().to_string()))
                })
                .flatten();
            match found {
                Some(r) => {
                    locations.push(format!("{}/*{}", local.trim_end_matches('/'), r.extension));
                    for (k, v) in r.options {
                        cmd.options.entry(k).or_insert(v);
                    }
                }
                None => locations.push(local),
            }
        }
        cmd.locations = locations;
        if cmd.file_type.eq_ignore_ascii_case("parquet") {
            for l in &cmd.locations {
                check_parquet_files(&local_files(l))?;
            }
        }
        if matches!(
            cmd.file_type.to_ascii_uppercase().as_str(),
            "JSONL" | "NDJSON"
        ) {
            cmd.file_type = "JSON".to_string();
        }
        let locations = cmd.locations.clone();
        self.inner
            .create(state, &cmd)
            .await
            .map_err(|e| with_json_diagnostics(e, &locations))
    }
}

/// The file types `CREATE EXTERNAL TABLE` accepts through [`ExternalTables`].
pub const EXTERNAL_TABLE_TYPES: [&str; 5] = ["PARQUET", "CSV", "JSON", "JSONL", "NDJSON"];

fn is_json_error(e: &DataFusionError) -> bool {
    let msg = e.to_string();
    msg.contains("Json error")
        || msg.contains("JSON") && msg.contains("pars")
        || msg.contains("Fail to merge schema field")
}

/// If `e` is a JSON parse error, finds the first malformed line in the JSON-lines files of
/// `locations` and names it (Arrow's reader only reports the byte it choked on).
pub fn with_json_diagnostics(e: DataFusionError, locations: &[String]) -> DataFusionError {
    if !is_json_error(&e) {
        return e;
    }
    let found = locations
        .iter()
        .find_map(|l| first_bad_line(&local_files(l)));
    match found {
        Some(detail) => DataFusionError::Execution(format!("malformed JSON: {detail}")),
        None => e,
    }
}

/// Same as [`with_json_diagnostics`] for the JSON tables a logical plan scans.
pub fn with_plan_json_diagnostics(e: DataFusionError, plan: &LogicalPlan) -> DataFusionError {
    if !is_json_error(&e) {
        return e;
    }
    let mut locations = Vec::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(source) = scan.source.as_ref().downcast_ref::<DefaultTableSource>()
            && let Some(table) = source
                .table_provider
                .as_ref()
                .downcast_ref::<ListingTable>()
        {
            for url in table.table_paths() {
                if let Ok(path) = url.get_url().to_file_path() {
                    let mut s = path.display().to_string();
                    if let Some(glob) = url.get_glob() {
                        s = format!("{}/{}", s.trim_end_matches('/'), glob.as_str());
                    }
                    locations.push(s);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    with_json_diagnostics(e, &locations)
}

fn local_files(location: &str) -> Vec<PathBuf> {
    let p = Path::new(location);
    if p.is_file() {
        vec![p.to_path_buf()]
    } else if p.is_dir() {
        walk(p)
    } else if is_glob(location) {
        shell_glob(location).unwrap_or_default()
    } else {
        Vec::new()
    }
}

/// `file:line: reason` of the first line of a JSON-lines file that is not one JSON value.
fn first_bad_line(files: &[PathBuf]) -> Option<String> {
    let mut kinds = FieldKinds::default();
    for file in files {
        let name = file.display().to_string();
        let Some(r) = recognise(&name) else { continue };
        if r.format != "json"
            || r.options.contains_key("format.compression")
            || json_array_file(file)
        {
            continue;
        }
        let Ok(f) = std::fs::File::open(file) else {
            continue;
        };
        for (n, line) in BufReader::new(f).lines().enumerate() {
            let Ok(line) = line else {
                return Some(format!("{name}:{}: not valid UTF-8", n + 1));
            };
            if line.trim().is_empty() {
                continue;
            }
            let line = if n == 0 {
                line.trim_start_matches('\u{feff}')
            } else {
                &line
            };
            match serde_json::from_str::<serde_json::Value>(line) {
                Err(err) => return Some(format!("{name}:{}: {err}", n + 1)),
                Ok(record) => {
                    if let Some(conflict) = kinds.conflict(&record, &name, n + 1) {
                        return Some(format!("{name}:{}: {conflict}", n + 1));
                    }
                }
            }
        }
    }
    None
}

/// The kind of value each field (nested ones as `a.b`, list items as `a[]`) held where it
/// was first seen, in any file of the table, to name the record where a field changes kind
/// (Arrow's reader names neither file nor line).
#[derive(Default)]
struct FieldKinds(HashMap<String, (&'static str, String, usize)>);

impl FieldKinds {
    fn kind(v: &serde_json::Value) -> Option<&'static str> {
        match v {
            serde_json::Value::Null => None,
            serde_json::Value::Bool(_) => Some("a boolean"),
            serde_json::Value::Number(_) => Some("a number"),
            serde_json::Value::String(_) => Some("text"),
            serde_json::Value::Array(_) => Some("a list"),
            serde_json::Value::Object(_) => Some("an object"),
        }
    }

    /// Records `record`'s field kinds; describes the first field whose kind changed.
    fn conflict(&mut self, record: &serde_json::Value, file: &str, line: usize) -> Option<String> {
        self.visit("", record, file, line)
    }

    fn visit(
        &mut self,
        path: &str,
        value: &serde_json::Value,
        file: &str,
        line: usize,
    ) -> Option<String> {
        let children: Vec<(String, &serde_json::Value)> = match value {
            serde_json::Value::Object(o) => o
                .iter()
                .map(|(k, v)| {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    (p, v)
                })
                .collect(),
            serde_json::Value::Array(a) => a.iter().map(|v| (format!("{path}[]"), v)).collect(),
            _ => return None,
        };
        for (field, v) in children {
            if let Some(kind) = Self::kind(v) {
                match self.0.get(&field) {
                    None => {
                        self.0.insert(field.clone(), (kind, file.to_string(), line));
                    }
                    Some((first, at_file, at)) if *first != kind => {
                        let place = if at_file == file {
                            format!("line {at}")
                        } else {
                            format!("{at_file}:{at}")
                        };
                        return Some(format!(
                            "field '{field}' is {kind} here but {first} on {place}"
                        ));
                    }
                    Some(_) => {}
                }
            }
            if let Some(c) = self.visit(&field, v, file, line) {
                return Some(c);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::recognise;

    #[test]
    fn recognises_endings() {
        assert_eq!(recognise("a/b.parquet").unwrap().format, "parquet");
        assert_eq!(recognise("x.JSONL").unwrap().extension, ".jsonl");
        let gz = recognise("x.jsonl.gz").unwrap();
        assert_eq!(gz.extension, ".jsonl.gz");
        assert_eq!(gz.options["format.compression"], "gzip");
        assert_eq!(
            recognise("x.tsv").unwrap().options["format.delimiter"],
            "\t"
        );
        assert!(recognise("table_name").is_none());
        assert!(recognise("x.txt").is_none());
    }
}
