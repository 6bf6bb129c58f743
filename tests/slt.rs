//! Runs every tests/slt/*.slt file against a fresh prefflow session (sqllogictest format:
//! `query <types>` + expected rows, `statement ok`, `query error <regex>`).
//!
//! Usage: `cargo test --test slt [-- FILTER]` runs the files whose name contains FILTER and
//! reports every failing record of each; `cargo test --test slt -- --complete [FILTER]`
//! rewrites those files' expected results with what prefflow gives now (review the diff).

use std::path::PathBuf;
use std::process::ExitCode;

use async_trait::async_trait;
use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use prefflow::{Engine, PrefflowError, SessionOptions};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};

struct Db {
    engine: Engine,
}

#[async_trait]
impl AsyncDB for Db {
    type Error = PrefflowError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        let df = self.engine.sql(sql).await?;
        let schema = df.schema().as_arrow().clone();
        let batches = prefflow::engine::collect(df).await?;
        if schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        let types = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                t if t.is_integer() => DefaultColumnType::Integer,
                t if t.is_floating() || matches!(t, DataType::Decimal128(_, _)) => {
                    DefaultColumnType::FloatingPoint
                }
                DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
                    DefaultColumnType::Text
                }
                _ => DefaultColumnType::Any,
            })
            .collect();
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for batch in &batches {
            let formatters = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(datafusion::error::DataFusionError::from)?;
            for i in 0..batch.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .zip(batch.columns())
                        .map(|(f, c)| {
                            let s = f.value(i).to_string();
                            // sqllogictest cannot express an empty cell.
                            if s.is_empty() && !c.is_null(i) {
                                "(empty)".to_string()
                            } else {
                                s
                            }
                        })
                        .collect(),
                );
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "prefflow"
    }
}

fn main() -> ExitCode {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let complete = std::env::args().any(|a| a == "--complete");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(&root).expect("crate root");
    let mut files: Vec<PathBuf> = std::fs::read_dir("tests/slt")
        .expect("tests/slt")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .filter(|p| {
            filter
                .as_ref()
                .is_none_or(|f| p.to_string_lossy().contains(f.as_str()))
        })
        .collect();
    files.sort();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        let mut runner = Runner::new(|| async {
            // Fixed partitions: deterministic plans and row order across machines.
            let options = SessionOptions {
                target_partitions: Some(2),
                // Models really run in every test: no results from earlier runs.
                cache: Some(prefflow::CacheMode::Off),
                ..Default::default()
            };
            Ok::<_, PrefflowError>(Db {
                engine: Engine::with_options(&options)?,
            })
        });
        if complete {
            // Rewrites the file's expected results with what prefflow gives now.
            let updated = runtime.block_on(runner.update_test_file(
                file,
                " ",
                sqllogictest::default_validator,
                sqllogictest::default_normalizer,
                sqllogictest::default_column_validator,
            ));
            match updated {
                Ok(()) => println!("completed {}", file.display()),
                Err(e) => {
                    failed += 1;
                    println!("FAILED to complete {}: {e}", file.display());
                }
            }
            continue;
        }
        // Every record runs, so one run reports every failure of the file, not just the first.
        let records = match sqllogictest::parse_file::<DefaultColumnType>(file) {
            Ok(r) => r,
            Err(e) => {
                failed += 1;
                println!("FAILED {}: cannot parse: {e}", file.display());
                continue;
            }
        };
        let mut errors = Vec::new();
        for record in records {
            if let Err(e) = runtime.block_on(runner.run_async(record)) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            passed += 1;
            println!("ok     {}", file.display());
        } else {
            failed += 1;
            println!("FAILED {} ({} records)", file.display(), errors.len());
            for e in errors {
                println!("{}\n", e.display(true));
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    // A `__TEST_DIR__` written without `$` (or outside `control substitution on`) is a literal
    // folder in the checkout: tests must write only to their temp dir.
    if root.join("__TEST_DIR__").exists() {
        println!(
            "FAILED: a test wrote {}/__TEST_DIR__ into the checkout",
            root.display()
        );
        failed += 1;
    }
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
