//! The result cache on disk: one redb database (`results.redb`) in the cache folder.
//!
//! Opened on first use, in redb's multi-writer mode, so several runs (a SLURM array's shards)
//! can share one folder: each write is one transaction, committed durably before the batch it
//! belongs to is handed on. A file that is not a prefflow cache (foreign, damaged, or from an
//! incompatible redb) is reported and moved aside as `results.redb.corrupt-<time>`, and an
//! empty cache takes its place; its entries are never trusted.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use prefflow_udfs::models::result_key::{Key, ResultStore};
use redb::{
    ConcurrencyMode, Database, DatabaseError, ReadOnlyDatabase, ReadTransaction, ReadableDatabase,
    TableDefinition,
};

const RESULTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("results");
const META: TableDefinition<&str, &str> = TableDefinition::new("prefflow");
/// What META's "format" says in a prefflow result cache.
const FORMAT: &str = "prefflow-result-cache-v1";
/// The first bytes of every redb file.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// The default cache folder: `$PREFFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/prefflow`, else
/// `~/.cache/prefflow`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PREFFLOW_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("prefflow");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache").join("prefflow"),
        None => std::env::temp_dir().join("prefflow-cache"),
    }
}

/// The result cache in `dir`.
pub struct RedbStore {
    path: PathBuf,
    /// Opened to write (`--cache readwrite`, the default).
    db: OnceLock<Result<Database, String>>,
    /// Opened only to read (`--cache read`): the file is opened read-only, so a cache on a
    /// read-only mount works and its bytes stay as they are.
    reader: OnceLock<Result<ReadOnlyDatabase, String>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

/// Either handle, to read with.
enum Handle<'a> {
    Writer(&'a Database),
    Reader(&'a ReadOnlyDatabase),
}

impl Handle<'_> {
    fn begin_read(&self) -> Result<ReadTransaction, String> {
        match self {
            Handle::Writer(d) => d.begin_read(),
            Handle::Reader(d) => d.begin_read(),
        }
        .map_err(|e| e.to_string())
    }
}

impl RedbStore {
    /// The cache in `dir` (not opened until first used).
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("results.redb"),
            db: OnceLock::new(),
            reader: OnceLock::new(),
        }
    }

    /// The database to read; None when only reading and there is no cache file yet (a read
    /// never creates, renames or repairs the file: a shared cache stays as its writers left it).
    fn db(&self, writable: bool) -> Result<Option<Handle<'_>>, String> {
        if let Some(Ok(db)) = self.db.get() {
            return Ok(Some(Handle::Writer(db)));
        }
        if writable {
            return self.writer().map(|db| Some(Handle::Writer(db)));
        }
        if !self.path.exists() {
            return Ok(None);
        }
        self.reader
            .get_or_init(|| open_existing(&self.path))
            .as_ref()
            .map(|db| Some(Handle::Reader(db)))
            .map_err(Clone::clone)
    }

    /// The database opened to write (created if missing).
    fn writer(&self) -> Result<&Database, String> {
        self.db
            .get_or_init(|| open(&self.path))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Number of stored entries.
    #[cfg(test)]
    fn len(&self) -> Result<u64, String> {
        let Some(db) = self.db(false)? else {
            return Ok(0);
        };
        let tx = db.begin_read()?;
        match tx.open_table(RESULTS) {
            Ok(t) => redb::ReadableTableMetadata::len(&t).map_err(|e| e.to_string()),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl ResultStore for RedbStore {
    fn get_many(&self, keys: &[Key], writable: bool) -> Result<Vec<Option<Vec<u8>>>, String> {
        let Some(db) = self.db(writable)? else {
            return Ok(vec![None; keys.len()]);
        };
        let tx = db.begin_read()?;
        let table = match tx.open_table(RESULTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![None; keys.len()]),
            Err(e) => return Err(e.to_string().into()),
        };
        keys.iter()
            .map(|k| {
                table
                    .get(k.as_slice())
                    .map(|v| v.map(|v| v.value().to_vec()))
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    fn put_many(&self, entries: &[(Key, Vec<u8>)]) -> Result<(), String> {
        if entries.is_empty() {
            return Ok(());
        }
        let db = self.writer()?;
        let tx = db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut table = tx.open_table(RESULTS).map_err(|e| e.to_string())?;
            for (k, v) in entries {
                table
                    .insert(k.as_slice(), v.as_slice())
                    .map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

/// Opens (or creates) the cache, setting aside a file that is not one.
fn open(path: &Path) -> Result<Database, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    match try_open(path) {
        Ok(db) => Ok(db),
        Err(Unusable::Busy(e) | Unusable::OtherVersion(e)) => Err(e),
        Err(Unusable::Foreign(why)) => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let aside = path.with_extension(format!("redb.corrupt-{stamp}"));
            std::fs::rename(path, &aside).map_err(|e| {
                format!(
                    "{} is not a usable result cache ({why}) and cannot be moved aside: {e}",
                    path.display()
                )
            })?;
            eprintln!(
                "prefflow: warning: {} is not a usable result cache ({why}); moved it to {} and started an empty cache",
                path.display(),
                aside.display()
            );
            try_open(path).map_err(Unusable::message)
        }
    }
}

/// Opens an existing cache to read it, changing nothing: a file that is not a usable cache is
/// an error, never moved aside.
fn open_existing(path: &Path) -> Result<ReadOnlyDatabase, String> {
    let refused = |e: Unusable| match e {
        Unusable::Foreign(why) => format!(
            "{} is not a usable result cache ({why}); with --cache read it is left as it is: use --cache off, or another --cache-dir",
            path.display()
        ),
        other => other.message(),
    };
    check_magic(path).map_err(refused)?;
    let opened = std::panic::catch_unwind(|| {
        let mut builder = Database::builder();
        builder.set_concurrency_mode(ConcurrencyMode::MultiWriter);
        builder.open_read_only(path)
    });
    let db = classify(path, opened).map_err(refused)?;
    check_format(|| db.begin_read().map_err(|e| e.to_string()), None)
        .map_err(|e| refused(format_problem(path, e)))?;
    Ok(db)
}

enum Unusable {
    /// Locked by another process in an incompatible mode, or not permitted: an error.
    Busy(String),
    /// Not a prefflow cache: set aside.
    Foreign(String),
    /// A prefflow cache of another format (another prefflow version) or one redb must upgrade:
    /// refused, never moved, so an older binary cannot knock out a cache other jobs share.
    OtherVersion(String),
}

impl Unusable {
    fn message(self) -> String {
        match self {
            Unusable::Busy(e) | Unusable::Foreign(e) | Unusable::OtherVersion(e) => e,
        }
    }
}

/// A file that is not redb at all is recognised before redb reads it: redb reports some
/// damage with debug assertions (a panic) rather than an error.
fn check_magic(path: &Path) -> Result<(), Unusable> {
    if let Ok(mut f) = std::fs::File::open(path) {
        use std::io::Read;
        let mut head = [0u8; 9];
        let n = f.read(&mut head).unwrap_or(0);
        if n > 0 && (n < head.len() || head != REDB_MAGIC) {
            return Err(Unusable::Foreign("not a redb database".to_string()));
        }
    }
    Ok(())
}

/// What opening the file gave, as an open database or why it is unusable.
fn classify<T>(
    path: &Path,
    opened: std::thread::Result<Result<T, DatabaseError>>,
) -> Result<T, Unusable> {
    match opened {
        Err(_) => Err(Unusable::Foreign("damaged database".to_string())),
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e @ (DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch))) => {
            Err(Unusable::Busy(format!(
                "{} is in use by another program: {e}",
                path.display()
            )))
        }
        Ok(Err(DatabaseError::UpgradeRequired(v))) => Err(Unusable::OtherVersion(format!(
            "{} was written by a different redb file format (version {v}), from another prefflow version: it is left as it is; use another --cache-dir (or --cache off) with this binary",
            path.display()
        ))),
        Ok(Err(DatabaseError::Storage(redb::StorageError::Io(e))))
            if e.kind() != std::io::ErrorKind::InvalidData =>
        {
            Err(Unusable::Busy(format!(
                "cannot open {}: {e}",
                path.display()
            )))
        }
        Ok(Err(e)) => Err(Unusable::Foreign(e.to_string())),
    }
}

fn format_problem(path: &Path, e: FormatProblem) -> Unusable {
    match e {
        FormatProblem::Foreign(e) => Unusable::Foreign(e),
        FormatProblem::OtherVersion(f) => Unusable::OtherVersion(format!(
            "{} is a prefflow result cache of another format ('{f}', this prefflow writes '{FORMAT}'), from another prefflow version: it is left as it is; use another --cache-dir (or --cache off) with this binary",
            path.display()
        )),
    }
}

fn try_open(path: &Path) -> Result<Database, Unusable> {
    check_magic(path)?;
    let opened = std::panic::catch_unwind(|| {
        let mut builder = Database::builder();
        builder.set_concurrency_mode(ConcurrencyMode::MultiWriter);
        builder.create(path)
    });
    let db = classify(path, opened)?;
    check_format(|| db.begin_read().map_err(|e| e.to_string()), Some(&db))
        .map_err(|e| format_problem(path, e))?;
    Ok(db)
}

enum FormatProblem {
    Foreign(String),
    /// The format mark found.
    OtherVersion(String),
}

impl From<String> for FormatProblem {
    fn from(e: String) -> Self {
        FormatProblem::Foreign(e)
    }
}

/// A new file gets prefflow's format mark (with a `writer`); an existing one must carry it.
fn check_format(
    begin_read: impl Fn() -> Result<ReadTransaction, String>,
    writer: Option<&Database>,
) -> Result<(), FormatProblem> {
    let tx = begin_read()?;
    let format = match tx.open_table(META) {
        Ok(t) => t
            .get("format")
            .map_err(|e| e.to_string())?
            .map(|v| v.value().to_string()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.to_string().into()),
    };
    let has_results = !matches!(
        tx.open_table(RESULTS),
        Err(redb::TableError::TableDoesNotExist(_))
    );
    drop(tx);
    match format {
        Some(f) if f == FORMAT => Ok(()),
        Some(f) if f.starts_with("prefflow-result-cache-") => Err(FormatProblem::OtherVersion(f)),
        Some(f) => Err(FormatProblem::Foreign(format!(
            "format '{f}', expected '{FORMAT}'"
        ))),
        None if has_results => Err("no prefflow format mark".to_string().into()),
        None => {
            let Some(db) = writer else { return Ok(()) };
            let tx = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut t = tx.open_table(META).map_err(|e| e.to_string())?;
                t.insert("format", FORMAT).map_err(|e| e.to_string())?;
            }
            Ok(tx.commit().map_err(|e| e.to_string())?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RedbStore::new(dir.path());
            s.put_many(&[([1; 32], b"one".to_vec())]).unwrap();
        }
        let s = RedbStore::new(dir.path());
        assert_eq!(
            s.get_many(&[[1; 32], [2; 32]], true).unwrap(),
            vec![Some(b"one".to_vec()), None]
        );
        assert_eq!(s.len().unwrap(), 1);
    }

    #[test]
    fn a_foreign_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("results.redb"),
            b"definitely not a database",
        )
        .unwrap();
        let s = RedbStore::new(dir.path());
        assert_eq!(s.get_many(&[[1; 32]], true).unwrap(), vec![None]);
        s.put_many(&[([1; 32], b"x".to_vec())]).unwrap();
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("results.redb.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "the foreign file is kept aside");
        assert_eq!(
            std::fs::read(dir.path().join(&aside[0])).unwrap(),
            b"definitely not a database"
        );
    }

    #[test]
    fn a_cache_of_another_prefflow_version_is_refused_and_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(META).unwrap();
                t.insert("format", "prefflow-result-cache-v0").unwrap();
                let mut r = tx.open_table(RESULTS).unwrap();
                r.insert([1u8; 32].as_slice(), b"old".as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        for writable in [true, false] {
            let s = RedbStore::new(dir.path());
            let err = s.get_many(&[[1; 32]], writable).unwrap_err();
            assert!(err.contains("another prefflow version"), "{err}");
            assert!(s.put_many(&[([2; 32], b"x".to_vec())]).is_err());
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "nothing set aside"
        );
        // Its entries and mark are still there for the version that wrote it.
        let db = Database::open(&path).unwrap();
        let tx = db.begin_read().unwrap();
        let results = tx.open_table(RESULTS).unwrap();
        let old = results
            .get([1u8; 32].as_slice())
            .unwrap()
            .map(|v| v.value().to_vec());
        assert!(old.as_deref() == Some(b"old".as_slice()), "entries kept");
        let meta = tx.open_table(META).unwrap();
        let mark = meta.get("format").unwrap().map(|v| v.value().to_string());
        assert!(
            mark.as_deref() == Some("prefflow-result-cache-v0"),
            "mark kept"
        );
    }

    #[test]
    fn reading_never_creates_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::new(&dir.path().join("sub"));
        assert_eq!(s.get_many(&[[1; 32]], false).unwrap(), vec![None]);
        assert!(!dir.path().join("sub").exists());
    }

    #[test]
    fn a_redb_file_of_another_program_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(RESULTS).unwrap();
                t.insert([1u8; 32].as_slice(), b"stale".as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        let s = RedbStore::new(dir.path());
        assert_eq!(
            s.get_many(&[[1; 32]], true).unwrap(),
            vec![None],
            "never trusted"
        );
    }
}
