//! Per-row outcomes for `on_error 'record'`: a remote model function then returns, for each
//! row, a struct {value, error, attempts} instead of failing the query or giving NULL.
//!
//! The function itself does not build the struct: it runs as with `on_error 'null'` inside a
//! [`RowLog`] scope (a tokio task-local, like the call counters), noting which of its rows
//! failed and why, and how many requests each row took; the call wrapper (`call_wrapper.rs` in
//! the UDF crate) then wraps the function's values with the log. A function whose requests are
//! not one per row (`ai_judge`'s two orders) says which row each request belongs to with
//! [`map_rows`].

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

tokio::task_local! {
    static LOG: Arc<RowLog>;
    static ATTEMPTS: Cell<u32>;
}

/// What happened to each row of one call.
#[derive(Debug, Default)]
pub struct RowLog {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    errors: HashMap<usize, String>,
    attempts: HashMap<usize, u32>,
    map: Option<Vec<usize>>,
}

impl RowLog {
    /// The first error of output row `row`, if it failed.
    pub fn error(&self, row: usize) -> Option<String> {
        self.inner
            .lock()
            .expect("row log")
            .errors
            .get(&row)
            .cloned()
    }

    /// Requests sent for output row `row` (0: none, e.g. a NULL input).
    pub fn attempts(&self, row: usize) -> u32 {
        self.inner
            .lock()
            .expect("row log")
            .attempts
            .get(&row)
            .copied()
            .unwrap_or(0)
    }
}

/// Runs `f` with a fresh row log; gives the log with its output.
pub async fn with_row_log<F: Future>(f: F) -> (Arc<RowLog>, F::Output) {
    let log = Arc::new(RowLog::default());
    let out = LOG.scope(Arc::clone(&log), f).await;
    (log, out)
}

/// Whether a row log is listening (the call is under `on_error 'record'`).
pub fn recording() -> bool {
    LOG.try_with(|_| ()).is_ok()
}

/// Request row `row` belongs to output row `map[row]` (default: itself).
pub fn map_rows(map: Vec<usize>) {
    let _ = LOG.try_with(|l| l.inner.lock().expect("row log").map = Some(map));
}

fn output_row(inner: &Inner, row: usize) -> usize {
    inner
        .map
        .as_ref()
        .and_then(|m| m.get(row).copied())
        .unwrap_or(row)
}

/// Request row `row` failed for good; the first reason of an output row is kept.
pub fn row_failed(row: usize, why: &str) {
    let _ = LOG.try_with(|l| {
        let mut inner = l.inner.lock().expect("row log");
        let out = output_row(&inner, row);
        inner.errors.entry(out).or_insert_with(|| why.to_string());
    });
}

/// Request row `row` took `n` more requests.
pub fn row_attempts(row: usize, n: u32) {
    let _ = LOG.try_with(|l| {
        let mut inner = l.inner.lock().expect("row log");
        let out = output_row(&inner, row);
        *inner.attempts.entry(out).or_insert(0) += n;
    });
}

/// Runs one request's future counting the attempts [`attempt`] notes inside it.
pub async fn counting_attempts<F: Future>(f: F) -> (u32, F::Output) {
    ATTEMPTS
        .scope(Cell::new(0), async move {
            let out = f.await;
            (ATTEMPTS.with(Cell::get), out)
        })
        .await
}

/// One request went out (called by the remote client per attempt).
pub fn attempt() {
    let _ = ATTEMPTS.try_with(|c| c.set(c.get() + 1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rows_map_and_attempts_count_per_request_future() {
        let (log, ()) = with_row_log(async {
            assert!(recording());
            // Two orders per row, as ai_judge sends them: request rows 0..4 are rows 0, 1, 0, 1.
            map_rows(vec![0, 1, 0, 1]);
            let requests = (0..4).map(|r| async move {
                let (n, ()) = counting_attempts(async move {
                    for _ in 0..=r {
                        attempt();
                    }
                })
                .await;
                row_attempts(r, n);
                if r == 3 {
                    row_failed(r, "HTTP 500");
                }
            });
            futures::future::join_all(requests).await;
        })
        .await;
        assert!(!recording());
        assert_eq!(log.attempts(0), 1 + 3);
        assert_eq!(log.attempts(1), 2 + 4);
        assert_eq!(log.error(0), None);
        assert_eq!(log.error(1).as_deref(), Some("HTTP 500"));
    }
}
