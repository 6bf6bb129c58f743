//! The interactive SQL shell: `prefflow` with no arguments (or `prefflow shell`).
//!
//! Statements end with `;` and may span lines; results print as tables, streamed: a result of
//! more than [`SHOWN`] rows shows its first and last rows and a count of the rest, so a huge
//! result costs neither memory nor time to format. Dot commands: `.help`, `.models`,
//! `.timer on|off`, `.output [FILE]`, `.quit`. On a terminal, lines are edited with rustyline
//! and kept in a history file; Ctrl-C cancels the running statement, its printing included (or
//! clears the line being typed) and the shell goes on; Ctrl-D leaves. Statements piped in
//! (`prefflow < job.sql`) run the same way, each result printed; there a cancelled statement
//! is a failure for the exit status, and a second Ctrl-C stops the script. SIGTERM stops the
//! shell either way, cancelling what runs (its staged outputs removed).

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::time::Instant;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches_with_schema;
use futures::StreamExt;
use rustyline::error::ReadlineError;

use crate::engine::Engine;
use crate::error::{PrefflowError, Result, one_line};
use crate::output::Format;
use crate::script::split_statements;

/// A result of more rows shows its first and last `SHOWN / 2` (as duckdb's shell does).
pub const SHOWN: usize = 40;

const HELP: &str = "\
Statements end with ';' and may span lines. Dot commands:
  .help            this text
  .models          the declared models (SHOW MODELS)
  .timer on|off    print each statement's run time
  .output [FILE]   write each result to FILE, replacing it atomically, in the format its
                   name says (.txt table, .csv, .json, .jsonl, .parquet); no FILE: the screen
  .quit            leave (or Ctrl-D)
Ctrl-C cancels a running statement; rows a model already computed stay in the result cache.";

/// Where lines come from.
enum Lines {
    Terminal(Box<rustyline::DefaultEditor>, Option<PathBuf>),
    Piped(std::io::Lines<std::io::StdinLock<'static>>),
}

/// One line read: a line, an interrupt (Ctrl-C at the prompt) or the end of input.
enum Read {
    Line(String),
    Interrupted,
    End,
}

impl Lines {
    fn open() -> Self {
        if std::io::stdin().is_terminal()
            && let Ok(mut editor) = rustyline::DefaultEditor::new()
        {
            let history = history_file();
            if let Some(h) = &history {
                let _ = editor.load_history(h);
            }
            return Lines::Terminal(Box::new(editor), history);
        }
        Lines::Piped(std::io::stdin().lock().lines())
    }

    fn read(&mut self, continuing: bool) -> Read {
        match self {
            Lines::Terminal(editor, _) => {
                let prompt = if continuing { "     > " } else { "prefflow> " };
                match tokio::task::block_in_place(|| editor.readline(prompt)) {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        Read::Line(line)
                    }
                    Err(ReadlineError::Interrupted) => Read::Interrupted,
                    Err(_) => Read::End,
                }
            }
            Lines::Piped(lines) => match tokio::task::block_in_place(|| lines.next()) {
                Some(Ok(line)) => Read::Line(line),
                _ => Read::End,
            },
        }
    }

    fn save(&mut self) {
        if let Lines::Terminal(editor, Some(path)) = self {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = editor.save_history(path);
        }
    }
}

/// `$XDG_STATE_HOME/prefflow/history`, else `~/.local/state/prefflow/history`.
fn history_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("prefflow").join("history"))
}

/// The shell's settings.
struct Shell {
    engine: Engine,
    timer: bool,
    output: Option<(PathBuf, Format)>,
    signals: Signals,
}

/// Ctrl-C (SIGINT) and SIGTERM, counted. The handlers are installed before the first prompt:
/// rustyline saves the SIGINT handler it finds and puts it back after each line, so a handler
/// installed while a line was being read would be replaced by the default one (which kills
/// the shell on the next Ctrl-C).
struct Signals {
    /// Counts interrupts; a statement waits for it to change.
    interrupts: tokio::sync::watch::Receiver<u64>,
    terminated: tokio::sync::watch::Receiver<bool>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

impl Signals {
    fn install() -> Result<Self> {
        let (int_tx, interrupts) = tokio::sync::watch::channel(0u64);
        let (term_tx, terminated) = tokio::sync::watch::channel(false);
        let mut listeners = Vec::new();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let failed = |e: std::io::Error| {
                PrefflowError::Usage(format!("cannot install the shell's signal handlers: {e}"))
            };
            let mut int = signal(SignalKind::interrupt()).map_err(failed)?;
            let mut term = signal(SignalKind::terminate()).map_err(failed)?;
            listeners.push(tokio::spawn(async move {
                while int.recv().await.is_some() {
                    int_tx.send_modify(|n| *n += 1);
                }
            }));
            listeners.push(tokio::spawn(async move {
                if term.recv().await.is_some() {
                    let _ = term_tx.send(true);
                    // A running statement is cancelled at once and the shell ends; one
                    // waiting for input would not notice, so the process ends here then.
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    std::process::exit(143);
                }
            }));
        }
        #[cfg(not(unix))]
        listeners.push(tokio::spawn(async move {
            let _keep = term_tx;
            while tokio::signal::ctrl_c().await.is_ok() {
                int_tx.send_modify(|n| *n += 1);
            }
        }));
        Ok(Self {
            interrupts,
            terminated,
            listeners,
        })
    }

    fn interrupts(&self) -> u64 {
        *self.interrupts.borrow()
    }

    fn terminated(&self) -> bool {
        *self.terminated.borrow()
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for l in &self.listeners {
            l.abort();
        }
    }
}

/// Why a statement did not finish.
enum Stop {
    Failed(PrefflowError),
    /// Ctrl-C: the statement was cancelled.
    Cancelled,
    /// SIGTERM: the shell stops.
    Terminated,
}

impl From<PrefflowError> for Stop {
    fn from(e: PrefflowError) -> Self {
        Stop::Failed(e)
    }
}

/// Runs the shell until `.quit`, Ctrl-D or the end of piped input. Errors of statements are
/// printed and the shell goes on; with piped input, the exit status says whether any failed.
pub async fn run(engine: Engine) -> Result<()> {
    let mut lines = Lines::open();
    let interactive = matches!(lines, Lines::Terminal(..));
    if interactive {
        eprintln!(
            "prefflow {} shell: statements end with ';', .help for help, Ctrl-D to leave",
            env!("CARGO_PKG_VERSION")
        );
    }
    // SIGINT is taken over before the first prompt: it cancels a running statement, and is
    // ignored between statements (on a terminal, Ctrl-C at the prompt is a key rustyline reads).
    let signals = Signals::install()?;
    let mut shell = Shell {
        engine,
        timer: false,
        output: None,
        signals,
    };
    let mut buffer = String::new();
    let mut failed = false;
    loop {
        let line = match lines.read(!buffer.trim().is_empty()) {
            Read::Line(l) => l,
            Read::Interrupted => {
                buffer.clear();
                continue;
            }
            Read::End => break,
        };
        if buffer.trim().is_empty() && line.trim_start().starts_with('.') {
            match shell.dot(line.trim()).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    eprintln!("prefflow: error: {}", one_line(&e.to_string()));
                    failed = true;
                    continue;
                }
            }
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if !complete(&buffer) {
            continue;
        }
        let text = std::mem::take(&mut buffer);
        let statements = match split_statements(&text) {
            Ok(s) => s,
            Err((_, message)) => {
                eprintln!("prefflow: error: {message}");
                failed = true;
                continue;
            }
        };
        let mut stop = false;
        for st in statements {
            // A script (piped) stops at the second Ctrl-C: the first cancels a statement, the
            // next one means the whole job.
            if !interactive && shell.signals.interrupts() >= 2 {
                eprintln!("prefflow: stopped by a second Ctrl-C");
                stop = true;
                break;
            }
            match shell.statement(&st.sql).await {
                Ok(()) => {}
                Err(Stop::Failed(e)) => {
                    eprintln!("prefflow: error: {}", one_line(&e.to_string()));
                    failed = true;
                }
                Err(Stop::Cancelled) => {
                    eprintln!(
                        "prefflow: cancelled (rows a model already computed stay in the result cache)"
                    );
                    failed = true;
                }
                Err(Stop::Terminated) => {
                    eprintln!("prefflow: stopped by SIGTERM");
                    failed = true;
                    stop = true;
                    break;
                }
            }
        }
        if stop || shell.signals.terminated() {
            buffer.clear();
            failed = true;
            break;
        }
    }
    let unfinished = split_statements(&buffer).map_or(true, |s| !s.is_empty());
    if unfinished {
        eprintln!("prefflow: error: the last statement has no closing ';' and did not run");
        failed = true;
    }
    lines.save();
    if shell.signals.terminated() {
        return Err(PrefflowError::Script("stopped by SIGTERM".to_string()));
    }
    if failed && !interactive {
        return Err(PrefflowError::Script(
            "a statement failed (see above)".to_string(),
        ));
    }
    Ok(())
}

/// Whether the text ends a statement: every statement in it is closed by a `;` outside quotes
/// and comments (a comment may follow the last `;`).
fn complete(text: &str) -> bool {
    let Ok(statements) = split_statements(text) else {
        // An open quote or comment: a `;` inside it is not an end.
        return false;
    };
    // A statement added after a closed text stays its own; after an open one it joins it.
    let probe = format!("{text}\nx");
    !statements.is_empty()
        && split_statements(&probe).is_ok_and(|with| with.len() == statements.len() + 1)
}

impl Shell {
    /// A dot command; false to leave.
    async fn dot(&mut self, command: &str) -> Result<bool> {
        let mut words = command.split_whitespace();
        match (words.next().unwrap_or(""), words.next()) {
            (".quit" | ".exit", _) => return Ok(false),
            (".help", _) => println!("{HELP}"),
            (".models", _) => {
                if let Err(Stop::Failed(e)) = self.statement("SHOW MODELS").await {
                    return Err(e);
                }
            }
            (".timer", Some("on")) => self.timer = true,
            (".timer", Some("off")) => self.timer = false,
            (".output", None) => self.output = None,
            (".output", Some(path)) => {
                // Nothing is written now: each result is written as `--output` writes one
                // (atomically, never over a folder or the statement's own input).
                let path = PathBuf::from(path);
                crate::target::check(&path, &crate::target::Output::File, &[])?;
                let format = Format::from_path(&path).ok_or_else(|| {
                    PrefflowError::Usage(format!(
                        ".output {}: cannot tell the format from the name (use .txt for a table, .csv, .json, .jsonl or .parquet)",
                        path.display()
                    ))
                })?;
                self.output = Some((path, format));
            }
            _ => {
                return Err(PrefflowError::Usage(format!(
                    "unknown command '{command}' (.help lists them)"
                )));
            }
        }
        Ok(true)
    }

    /// Runs one statement, printing its rows as they stream; Ctrl-C cancels it (the printing
    /// too), SIGTERM stops it.
    async fn statement(&mut self, sql: &str) -> std::result::Result<(), Stop> {
        let started = Instant::now();
        let mut interrupts = self.signals.interrupts.clone();
        interrupts.borrow_and_update();
        let mut terminated = self.signals.terminated.clone();
        if *terminated.borrow_and_update() {
            return Err(Stop::Terminated);
        }
        // Dropping the statement's future cancels it: its staged outputs are removed.
        tokio::select! {
            r = self.run_statement(sql) => r?,
            _ = interrupts.changed() => return Err(Stop::Cancelled),
            _ = terminated.changed() => return Err(Stop::Terminated),
        }
        if self.timer {
            eprintln!("Run Time: {:.3} s", started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn run_statement(&self, sql: &str) -> Result<()> {
        let df = self.engine.sql(sql).await?;
        if df.schema().fields().is_empty() {
            return crate::engine::drain(df).await;
        }
        if let Some((path, format)) = &self.output {
            crate::output::write_result(df, *format, Some(path)).await?;
            return Ok(());
        }
        let plan = df.logical_plan().clone();
        let diagnose = |e: datafusion::error::DataFusionError| -> PrefflowError {
            crate::datasets::with_plan_json_diagnostics(e, &plan).into()
        };
        let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
        let mut stream = df.execute_stream().await.map_err(diagnose)?;
        let mut shown = Shown::new(SHOWN);
        while let Some(batch) = stream.next().await {
            shown.push(batch.map_err(diagnose)?);
        }
        print!("{}", shown.render(schema)?);
        Ok(())
    }
}

/// The rows a result shows: all of a short one, the first and last `limit / 2` of a long one
/// (only those are kept), and how many there were.
struct Shown {
    limit: usize,
    head: Vec<RecordBatch>,
    head_rows: usize,
    tail: std::collections::VecDeque<RecordBatch>,
    tail_rows: usize,
    total: usize,
}

impl Shown {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            head: Vec::new(),
            head_rows: 0,
            tail: std::collections::VecDeque::new(),
            tail_rows: 0,
            total: 0,
        }
    }

    fn push(&mut self, batch: RecordBatch) {
        self.total += batch.num_rows();
        let half = self.limit / 2;
        let mut batch = batch;
        if self.head_rows < half {
            let n = (half - self.head_rows).min(batch.num_rows());
            self.head.push(batch.slice(0, n));
            self.head_rows += n;
            batch = batch.slice(n, batch.num_rows() - n);
        }
        if batch.num_rows() == 0 {
            return;
        }
        self.tail_rows += batch.num_rows();
        self.tail.push_back(batch);
        // Keep only the last `limit - half` rows (a short result needs them all).
        let keep = self.limit - half;
        while self.tail_rows > keep {
            let front = self.tail.front().expect("rows are kept");
            let excess = self.tail_rows - keep;
            if front.num_rows() <= excess {
                self.tail_rows -= front.num_rows();
                self.tail.pop_front();
            } else {
                let trimmed = front.slice(excess, front.num_rows() - excess);
                self.tail_rows -= excess;
                *self.tail.front_mut().expect("rows are kept") = trimmed;
            }
        }
    }

    fn render(self, schema: datafusion::arrow::datatypes::SchemaRef) -> Result<String> {
        let arrow = |e| PrefflowError::from(datafusion::error::DataFusionError::from(e));
        let shown = self.head_rows + self.tail_rows;
        let hidden = self.total - shown;
        // One table for both ends, so the columns line up; a cut is marked by a line.
        let all: Vec<RecordBatch> = self.head.into_iter().chain(self.tail).collect();
        let table = pretty_format_batches_with_schema(schema, &all)
            .map_err(arrow)?
            .to_string();
        if hidden == 0 {
            return Ok(format!("{table}\n"));
        }
        let lines: Vec<&str> = table.lines().collect();
        // Header: border, names, border; then the rows; then a border.
        let head_end = 3 + self.head_rows;
        let mut out = String::new();
        for l in &lines[..head_end] {
            out.push_str(l);
            out.push('\n');
        }
        let width = lines[0].chars().count();
        let gap = format!("… {hidden} more rows …");
        if gap.chars().count() + 2 <= width {
            out.push_str(&format!("|{:^w$}|\n", gap, w = width - 2));
        } else {
            out.push_str(&format!("{gap}\n"));
        }
        for l in &lines[head_end..] {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str(&format!("{} rows ({shown} shown)\n", self.total));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    fn batch(from: i64, n: i64) -> RecordBatch {
        RecordBatch::try_from_iter(vec![(
            "n",
            std::sync::Arc::new(Int64Array::from_iter_values(from..from + n)) as _,
        )])
        .unwrap()
    }

    #[test]
    fn long_results_show_both_ends_and_count_the_rest() {
        let mut shown = Shown::new(6);
        for i in 0..10 {
            shown.push(batch(i * 7, 7));
        }
        let schema = batch(0, 1).schema();
        let text = shown.render(schema.clone()).unwrap();
        let numbers: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("| "))
            .map(|l| l.trim_end_matches('|').trim())
            .collect();
        assert_eq!(numbers, ["n", "0", "1", "2", "67", "68", "69"], "{text}");
        assert!(text.contains("… 64 more rows …"), "{text}");
        assert!(text.ends_with("70 rows (6 shown)\n"), "{text}");
        let mut short = Shown::new(6);
        short.push(batch(0, 5));
        let text = short.render(schema).unwrap();
        assert!(!text.contains("more rows"), "{text}");
        assert_eq!(text.lines().count(), 9, "{text}");
    }

    #[test]
    fn statements_end_at_a_semicolon_outside_quotes_and_comments() {
        assert!(complete("SELECT 1;"));
        assert!(complete("SELECT 1; -- done"));
        assert!(complete("SELECT 1; /* done */"));
        assert!(!complete("SELECT 1"));
        assert!(!complete("SELECT ';"));
        assert!(!complete("SELECT 1 /* ; */"));
        assert!(!complete("-- only a comment;"));
    }
}
