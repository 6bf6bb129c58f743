//! The `prefflow` binary as a user runs it: exit codes, parameters, formats, errors.

use super::support::{prefflow, stderr, stdout};

#[test]
fn sql_with_each_format() {
    let dir = tempfile::tempdir().unwrap();
    let q = "SELECT 1 AS x, 'a' AS s UNION ALL SELECT 2, 'b' ORDER BY x";
    let o = prefflow(&["sql", q, "--format", "csv"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "x,s\n1,a\n2,b\n");

    let o = prefflow(&["sql", q, "--format", "ndjson"], dir.path());
    assert_eq!(stdout(&o), "{\"x\":1,\"s\":\"a\"}\n{\"x\":2,\"s\":\"b\"}\n");

    let o = prefflow(&["sql", q, "--format", "json"], dir.path());
    assert_eq!(
        stdout(&o).trim(),
        "[{\"x\":1,\"s\":\"a\"},{\"x\":2,\"s\":\"b\"}]"
    );

    let o = prefflow(&["sql", q, "--format", "table"], dir.path());
    assert!(stdout(&o).contains("| 2 | b |"), "{}", stdout(&o));

    // Not a terminal and no --format: JSON lines.
    let o = prefflow(&["sql", "SELECT 7 AS n"], dir.path());
    assert_eq!(stdout(&o), "{\"n\":7}\n");
}

#[test]
fn output_file_format_from_name_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let o = prefflow(
        &["sql", "SELECT 42 AS answer", "--output", "res/a.parquet"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("wrote 1 rows"));
    let o = prefflow(
        &[
            "sql",
            "SELECT answer FROM 'res/a.parquet'",
            "--format",
            "csv",
        ],
        dir.path(),
    );
    assert_eq!(stdout(&o), "answer\n42\n");

    let o = prefflow(&["sql", "SELECT 1", "--output", "x.unknown"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--format"));
}

#[test]
fn run_files_with_parameters() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.sql"),
        "-- makes a table\nCREATE TABLE t AS\n  SELECT * FROM (VALUES (1), (2), (3)) v(n);\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.sql"),
        "/* uses t from a.sql */\nSELECT count(*) AS c\nFROM t WHERE n >= ${min};\n",
    )
    .unwrap();
    let o = prefflow(
        &["run", "a.sql", "b.sql", "--param", "min=2", "-f", "csv"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "c\n2\n");

    // A parameter with no value is an error at the line that uses it, before anything runs.
    let o = prefflow(&["run", "a.sql", "b.sql"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("b.sql:2:") && err.contains("unknown parameter 'min'"),
        "{err}"
    );

    let o = prefflow(&["run", "a.sql", "--param", "novalue"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("NAME=VALUE"));
}

#[test]
fn failing_statement_names_file_and_line_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.sql"),
        "SELECT 1;\n\n-- next one fails\nSELECT no_such_column\nFROM (VALUES (1)) v(a);\n",
    )
    .unwrap();
    let o = prefflow(&["run", "bad.sql"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("prefflow: error: bad.sql:4: "), "{err}");
    assert!(err.contains("no_such_column"), "{err}");

    let o = prefflow(&["run", "missing.sql"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("missing.sql"));

    let o = prefflow(&["sql", "SELECT 1;\nSELECT * FROM nowhere"], dir.path());
    assert!(stderr(&o).contains("<sql>:2:"), "{}", stderr(&o));
}

#[test]
fn failed_runs_write_nothing_and_keep_previous_output() {
    let dir = tempfile::tempdir().unwrap();
    let ok = prefflow(&["sql", "SELECT 1 AS v", "--output", "o.jsonl"], dir.path());
    assert!(ok.status.success());
    // Fails at run time, after the writer has started.
    let bad = "SELECT CAST(x AS INT) AS v FROM (VALUES ('1'), ('oops')) t(x)";
    let o = prefflow(&["sql", bad, "--output", "o.jsonl"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("o.jsonl")).unwrap(),
        "{\"v\":1}\n"
    );

    let copy = format!("COPY ({bad}) TO 'c.parquet'");
    let o = prefflow(&["sql", &copy], dir.path());
    assert_eq!(o.status.code(), Some(1));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "o.jsonl")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn help_shows_examples() {
    let dir = tempfile::tempdir().unwrap();
    let o = prefflow(&["--help"], dir.path());
    assert!(o.status.success());
    assert!(stdout(&o).contains("Examples:"));
    assert!(stdout(&o).contains("prefflow run"));
    let o = prefflow(&["frobnicate"], dir.path());
    assert_eq!(o.status.code(), Some(2));
}
