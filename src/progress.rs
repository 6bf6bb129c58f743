//! Progress of model calls on stderr: indicatif bars on a terminal, one-line records every few
//! seconds otherwise (logs of batch jobs), a summary per call at the end; nothing when quiet.
//! A thread reads the counters the plan nodes keep (see `model_calls`); it never touches the
//! query itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use prefflow_udfs::models::call_stats::{Activity, CallStats, Snapshot};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bars redrawn in place (stderr is a terminal).
    Bars,
    /// A line per running call at this interval (stderr is a file or pipe).
    Log(Duration),
    /// Nothing.
    Quiet,
}

impl ProgressMode {
    /// Bars on a terminal, else log lines every `$PREFFLOW_PROGRESS_SECONDS` (default 10).
    pub fn for_stderr(quiet: bool) -> Self {
        use std::io::IsTerminal;
        if quiet {
            Self::Quiet
        } else if std::io::stderr().is_terminal() {
            Self::Bars
        } else {
            let secs = std::env::var("PREFFLOW_PROGRESS_SECONDS")
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|s| *s > 0.0)
                .unwrap_or(10.0);
            Self::Log(Duration::from_secs_f64(secs))
        }
    }
}

/// The running display; [`Progress::finish`] stops it and prints the summary.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    activity: Arc<Activity>,
    mode: ProgressMode,
    /// Nodes registered before this display started (earlier statements of a session).
    from: usize,
}

impl Progress {
    /// Starts showing `activity`.
    pub fn start(activity: Arc<Activity>, mode: ProgressMode) -> Self {
        Self::start_since(activity, mode, 0)
    }

    /// Starts showing the calls of `activity` registered after its first `from` nodes, so a
    /// long-lived session (the Python package's engine) shows each statement's own calls.
    pub fn start_since(activity: Arc<Activity>, mode: ProgressMode, from: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = match mode {
            ProgressMode::Quiet => None,
            _ => {
                let (stop, activity) = (Arc::clone(&stop), Arc::clone(&activity));
                std::thread::Builder::new()
                    .name("prefflow-progress".to_string())
                    .spawn(move || show(&activity, mode, &stop, from))
                    .ok()
            }
        };
        Self {
            stop,
            thread,
            activity,
            mode,
            from,
        }
    }

    /// Stops the display and prints one summary line per model call that ran.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let entries = self.activity.entries_since(self.from);
        for e in entries.iter().filter(|e| e.started()) {
            // Rows made NULL by failed requests are said even with --quiet.
            let failed = e.failed.load(Ordering::Relaxed) > 0;
            if self.mode != ProgressMode::Quiet || failed {
                eprintln!("prefflow: {}", summary(e));
            }
        }
    }
}

fn show(activity: &Activity, mode: ProgressMode, stop: &AtomicBool, from: usize) {
    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(5));
    let mut shown: Vec<(Arc<CallStats>, ProgressBar)> = Vec::new();
    let mut last_log = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let running: Vec<Arc<CallStats>> = activity
            .entries_since(from)
            .into_iter()
            .filter(|e| e.started())
            .collect();
        match mode {
            ProgressMode::Bars => {
                for e in &running {
                    if !shown.iter().any(|(s, _)| Arc::ptr_eq(s, e)) {
                        let bar = bars.add(new_bar(e));
                        shown.push((Arc::clone(e), bar));
                    }
                }
                for (e, bar) in &shown {
                    let s = e.snapshot();
                    bar.set_position(s.rows);
                    bar.set_message(rates(&s, e.elapsed()));
                    if e.finished() && !bar.is_finished() {
                        bar.finish();
                    }
                }
            }
            ProgressMode::Log(every) if last_log.elapsed() >= every => {
                last_log = Instant::now();
                for e in running.iter().filter(|e| !e.finished()) {
                    eprintln!("prefflow: {}", line(e));
                }
            }
            _ => {}
        }
    }
    for (_, bar) in &shown {
        bar.finish_and_clear();
    }
}

fn new_bar(e: &CallStats) -> ProgressBar {
    let bar = match e.total_rows {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} rows, {msg}, ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{prefix} {spinner} {pos} rows, {msg}")
                .expect("valid template"),
        ),
    };
    bar.with_prefix(e.label.clone())
}

/// "12 cached, 85 tok/s".
fn rates(s: &Snapshot, elapsed: Option<Duration>) -> String {
    let secs = elapsed.map_or(0.0, |d| d.as_secs_f64()).max(1e-3);
    // Generation is measured by what it writes, encoders by what they read.
    let tokens = if s.output_tokens > 0 {
        s.output_tokens
    } else {
        s.input_tokens
    };
    format!("{} cached, {:.0} tok/s", s.cache_hits, tokens as f64 / secs)
}

/// A log record of a running call.
pub fn line(e: &CallStats) -> String {
    let s = e.snapshot();
    let elapsed = e.elapsed().unwrap_or_default();
    let done = match e.total_rows {
        Some(n) if n > 0 => {
            let eta = if s.rows > 0 && s.rows < n {
                let per_row = elapsed.as_secs_f64() / s.rows as f64;
                format!(
                    ", ETA {}",
                    clock(Duration::from_secs_f64(per_row * (n - s.rows) as f64))
                )
            } else {
                String::new()
            };
            format!(
                "{}/{n} rows ({:.0}%){eta}",
                s.rows,
                100.0 * s.rows as f64 / n as f64
            )
        }
        _ => format!("{} rows", s.rows),
    };
    // A remote model's adaptive target, and how often the server pushed back.
    let remote = if s.in_flight_target > 0 {
        format!(
            " (target {}, {} pushed back, {:.0} s waiting)",
            s.in_flight_target,
            s.pushbacks,
            s.admission_wait.as_secs_f64()
        )
    } else {
        String::new()
    };
    format!(
        "{}: {done}, {} in flight{remote}, {}",
        e.label,
        s.in_flight,
        rates(&s, Some(elapsed))
    )
}

/// The end-of-run record of a call.
pub fn summary(e: &CallStats) -> String {
    let s = e.snapshot();
    let failed = if s.failed > 0 {
        let last = e
            .last_failure
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .unwrap_or_default();
        format!(
            "; {} of them NULL because their request failed (on_error 'null'; last: {last})",
            s.failed
        )
    } else {
        String::new()
    };
    format!(
        "{}: {} rows ({} computed, {} from cache), tokens {} in / {} out, {} batches, {}{failed}",
        e.label,
        s.rows,
        s.computed(),
        s.cache_hits,
        s.input_tokens,
        s.output_tokens,
        s.batches,
        clock(e.active().unwrap_or_default())
    )
}

/// 1h02m03s / 2m03s / 3.4s.
fn clock(d: Duration) -> String {
    let t = d.as_secs();
    match t {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", t / 60, t % 60),
        _ => format!("{}h{:02}m{:02}s", t / 3600, t / 60 % 60, t % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn lines_show_rows_total_and_cache_hits() {
        let e = CallStats::new("ai_generate(policy)".to_string(), Some(40));
        e.start();
        e.rows.store(10, Ordering::Relaxed);
        e.cache_hits.store(4, Ordering::Relaxed);
        let l = line(&e);
        assert!(
            l.starts_with("ai_generate(policy): 10/40 rows (25%), ETA "),
            "{l}"
        );
        assert!(l.contains("4 cached"), "{l}");
        let s = summary(&e);
        assert!(s.contains("10 rows (6 computed, 4 from cache)"), "{s}");
        assert_eq!(clock(Duration::from_secs(3723)), "1h02m03s");
        assert_eq!(clock(Duration::from_secs(123)), "2m03s");
    }
}
