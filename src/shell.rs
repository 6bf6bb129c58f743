//! The interactive SQL shell: `prefflow` with no arguments (or `prefflow shell`).
//!
//! Statements end with `;` and may span lines; results print as tables. Dot commands: `.help`,
//! `.models`, `.timer on|off`, `.output [FILE]`, `.quit`. On a terminal, lines are edited with
//! rustyline and kept in a history file; Ctrl-C cancels the running statement (or clears the
//! line being typed) and the shell goes on; Ctrl-D leaves. Statements piped in
//! (`prefflow < job.sql`) run the same way, each result printed.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use datafusion::arrow::util::pretty::pretty_format_batches;
use rustyline::error::ReadlineError;

use crate::engine::{Engine, collect};
use crate::error::{PrefflowError, Result, one_line};
use crate::script::split_statements;

const HELP: &str = "\
Statements end with ';' and may span lines. Dot commands:
  .help            this text
  .models          the declared models (SHOW MODELS)
  .timer on|off    print each statement's run time
  .output [FILE]   write results to FILE (no FILE: back to the screen)
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
    output: Option<(PathBuf, std::fs::File)>,
    /// Told on Ctrl-C (SIGINT).
    interrupt: std::sync::Arc<tokio::sync::Notify>,
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
    // SIGINT is taken over from the start: it cancels a running statement, and is ignored
    // between statements (on a terminal, Ctrl-C at the prompt is a key rustyline reads).
    let interrupt = std::sync::Arc::new(tokio::sync::Notify::new());
    let listener = {
        let interrupt = std::sync::Arc::clone(&interrupt);
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                interrupt.notify_waiters();
            }
        })
    };
    let mut shell = Shell {
        engine,
        timer: false,
        output: None,
        interrupt,
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
        for st in statements {
            if let Err(e) = shell.statement(&st.sql).await {
                eprintln!("prefflow: error: {}", one_line(&e.to_string()));
                failed = true;
            }
        }
    }
    if !buffer.trim().is_empty() {
        eprintln!("prefflow: error: the last statement has no closing ';' and did not run");
        failed = true;
    }
    lines.save();
    listener.abort();
    if failed && !interactive {
        return Err(PrefflowError::Script(
            "a statement failed (see above)".to_string(),
        ));
    }
    Ok(())
}

/// Whether the text ends a statement: its last non-blank character is a `;` outside quotes
/// and comments.
fn complete(text: &str) -> bool {
    let trimmed = text.trim_end();
    if !trimmed.ends_with(';') {
        return false;
    }
    // split_statements fails on an open quote or comment, so a `;` inside one is not an end.
    split_statements(trimmed).is_ok()
}

impl Shell {
    /// A dot command; false to leave.
    async fn dot(&mut self, command: &str) -> Result<bool> {
        let mut words = command.split_whitespace();
        match (words.next().unwrap_or(""), words.next()) {
            (".quit" | ".exit", _) => return Ok(false),
            (".help", _) => println!("{HELP}"),
            (".models", _) => self.statement("SHOW MODELS").await?,
            (".timer", Some("on")) => self.timer = true,
            (".timer", Some("off")) => self.timer = false,
            (".output", None) => self.output = None,
            (".output", Some(path)) => {
                let path = PathBuf::from(path);
                crate::target::check(&path, &crate::target::Output::File, &[])?;
                let file = std::fs::File::create(&path).map_err(|e| PrefflowError::io(&path, e))?;
                self.output = Some((path, file));
            }
            _ => {
                return Err(PrefflowError::Usage(format!(
                    "unknown command '{command}' (.help lists them)"
                )));
            }
        }
        Ok(true)
    }

    /// Runs one statement, printing its rows; Ctrl-C cancels it.
    async fn statement(&mut self, sql: &str) -> Result<()> {
        let started = Instant::now();
        let run = async {
            let df = self.engine.sql(sql).await?;
            collect(df).await
        };
        let batches = tokio::select! {
            r = run => r?,
            _ = self.interrupt.notified() => {
                eprintln!("prefflow: cancelled (rows a model already computed stay in the result cache)");
                return Ok(());
            }
        };
        let has_columns = batches.first().is_some_and(|b| b.num_columns() > 0);
        if has_columns {
            let table = pretty_format_batches(&batches)
                .map_err(datafusion::error::DataFusionError::from)?
                .to_string();
            match &mut self.output {
                Some((path, file)) => {
                    writeln!(file, "{table}").map_err(|e| PrefflowError::io(path, e))?;
                }
                None => println!("{table}"),
            }
        }
        if self.timer {
            eprintln!("Run Time: {:.3} s", started.elapsed().as_secs_f64());
        }
        Ok(())
    }
}
