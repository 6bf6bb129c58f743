//! What model functions did: rows, cache hits, tokens, batches and time, per function and model
//! in a plan node. EXPLAIN ANALYZE prints them and the CLI's progress bars read them live.
//!
//! The plan node that runs model functions (the engine's `ModelCallsExec`) owns a
//! [`NodeCalls`] and makes it current while it polls its input (a tokio task-local), so the
//! function, which DataFusion calls without any handle to the node, finds the counters of its
//! own node. Inside one call, [`record_tokens`] adds to the counters of that call.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

tokio::task_local! {
    static NODE: Arc<NodeCalls>;
    static CALL: Arc<CallStats>;
}

/// Counters of one model function with one model (`ai_generate(policy)`) in one plan node.
#[derive(Debug)]
pub struct CallStats {
    /// `function(model)`.
    pub label: String,
    /// Rows the node expects to pass (from its input's statistics), when known.
    pub total_rows: Option<u64>,
    /// Rows the function was called on.
    pub rows: AtomicU64,
    /// Rows whose result came from the result cache.
    pub cache_hits: AtomicU64,
    /// Tokens the model read.
    pub input_tokens: AtomicU64,
    /// Tokens the model wrote.
    pub output_tokens: AtomicU64,
    /// Record batches the function ran on.
    pub batches: AtomicU64,
    /// Rows handed to the model whose results are not yet complete (and cached).
    pub in_flight: AtomicU64,
    /// Requests to remote models sent again after a transient failure.
    pub retries: AtomicU64,
    /// Remote answers that pushed back (429, 503, timeouts).
    pub pushbacks: AtomicU64,
    /// Time remote requests waited to be admitted (nanoseconds, summed).
    pub admission_nanos: AtomicU64,
    /// The remote endpoint's in-flight target when a request was last admitted.
    pub in_flight_target: AtomicU64,
    /// Rows given NULL because their request failed for good (`on_error 'null'`).
    pub failed: AtomicU64,
    /// The last such failure, for the run's summary.
    pub last_failure: Mutex<Option<String>>,
    /// Time inside the function, summed over partitions (nanoseconds).
    pub nanos: AtomicU64,
    started: Mutex<Option<Instant>>,
    last_done: Mutex<Option<Instant>>,
    finished: AtomicBool,
}

impl CallStats {
    /// Counters for `label`, expecting `total_rows` rows.
    pub fn new(label: String, total_rows: Option<u64>) -> Self {
        Self {
            label,
            total_rows,
            rows: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            input_tokens: AtomicU64::new(0),
            output_tokens: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            pushbacks: AtomicU64::new(0),
            admission_nanos: AtomicU64::new(0),
            in_flight_target: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            nanos: AtomicU64::new(0),
            started: Mutex::new(None),
            last_done: Mutex::new(None),
            finished: AtomicBool::new(false),
        }
    }

    /// Marks the first call (for rates and ETA).
    pub fn start(&self) {
        self.started
            .lock()
            .expect("stats lock")
            .get_or_insert_with(Instant::now);
    }

    /// Wall time since the first call.
    pub fn elapsed(&self) -> Option<Duration> {
        self.started
            .lock()
            .expect("stats lock")
            .map(|t| t.elapsed())
    }

    /// Marks the end of a call.
    pub fn done(&self) {
        *self.last_done.lock().expect("stats lock") = Some(Instant::now());
    }

    /// Wall time from the first call's start to the last call's end.
    pub fn active(&self) -> Option<Duration> {
        let start = (*self.started.lock().expect("stats lock"))?;
        let end = (*self.last_done.lock().expect("stats lock")).unwrap_or_else(Instant::now);
        Some(end.saturating_duration_since(start))
    }

    /// Whether any call has started.
    pub fn started(&self) -> bool {
        self.started.lock().expect("stats lock").is_some()
    }

    /// Marks the node's output as complete.
    pub fn finish(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }

    /// Whether the node's output is complete.
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    /// A consistent-enough copy of the counters.
    pub fn snapshot(&self) -> Snapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            rows: get(&self.rows),
            cache_hits: get(&self.cache_hits),
            input_tokens: get(&self.input_tokens),
            output_tokens: get(&self.output_tokens),
            batches: get(&self.batches),
            in_flight: get(&self.in_flight),
            retries: get(&self.retries),
            pushbacks: get(&self.pushbacks),
            admission_wait: Duration::from_nanos(get(&self.admission_nanos)),
            in_flight_target: get(&self.in_flight_target),
            failed: get(&self.failed),
            time: Duration::from_nanos(get(&self.nanos)),
        }
    }
}

/// Counter values at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Rows called on.
    pub rows: u64,
    /// Rows served from the cache.
    pub cache_hits: u64,
    /// Tokens read.
    pub input_tokens: u64,
    /// Tokens written.
    pub output_tokens: u64,
    /// Record batches.
    pub batches: u64,
    /// Rows being computed.
    pub in_flight: u64,
    /// Remote requests retried.
    pub retries: u64,
    /// Remote answers that pushed back (429, 503, timeouts).
    pub pushbacks: u64,
    /// Time remote requests waited to be admitted, summed.
    pub admission_wait: Duration,
    /// The remote endpoint's in-flight target at the last admission (0: not remote).
    pub in_flight_target: u64,
    /// Rows given NULL because their request failed (`on_error 'null'`).
    pub failed: u64,
    /// Time inside the function, summed over partitions.
    pub time: Duration,
}

impl Snapshot {
    /// Rows the model computed (not served from the cache).
    pub fn computed(&self) -> u64 {
        self.rows - self.cache_hits
    }
}

/// The model functions of one plan node, in the order of its expressions.
#[derive(Debug, Default)]
pub struct NodeCalls {
    entries: Mutex<Vec<Arc<CallStats>>>,
}

impl NodeCalls {
    /// Counters for these labels.
    pub fn new(labels: impl IntoIterator<Item = (String, Option<u64>)>) -> Self {
        let mut entries: Vec<Arc<CallStats>> = Vec::new();
        for (label, total) in labels {
            // Two calls with the same function and model in one node share their counters.
            if !entries.iter().any(|e| e.label == label) {
                entries.push(Arc::new(CallStats::new(label, total)));
            }
        }
        Self {
            entries: Mutex::new(entries),
        }
    }

    /// The counters of `label`, created on first use.
    pub fn entry(&self, label: &str) -> Arc<CallStats> {
        let mut entries = self.entries.lock().expect("stats lock");
        if let Some(e) = entries.iter().find(|e| e.label == label) {
            return Arc::clone(e);
        }
        let e = Arc::new(CallStats::new(label.to_string(), None));
        entries.push(Arc::clone(&e));
        e
    }

    /// Every entry.
    pub fn entries(&self) -> Vec<Arc<CallStats>> {
        self.entries.lock().expect("stats lock").clone()
    }

    /// Runs `f` (a poll of the node's input) with these counters current.
    pub fn sync_scope<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> R {
        NODE.sync_scope(Arc::clone(self), f)
    }
}

/// The counters of `label` in the node being polled, or detached ones outside any node.
pub fn current_entry(label: &str) -> Arc<CallStats> {
    NODE.try_with(|n| n.entry(label))
        .unwrap_or_else(|_| Arc::new(CallStats::new(label.to_string(), None)))
}

/// Runs one call of a model function with `stats` current, for [`record_tokens`].
pub async fn with_call<F: Future>(stats: Arc<CallStats>, f: F) -> F::Output {
    CALL.scope(stats, f).await
}

/// The counters of the call being run, if any (for work that counts on another thread).
pub fn current_call() -> Option<Arc<CallStats>> {
    CALL.try_with(Arc::clone).ok()
}

/// Adds tokens read and written by the model to the current call's counters.
pub fn record_tokens(input: u64, output: u64) {
    let _ = CALL.try_with(|s| {
        s.input_tokens.fetch_add(input, Ordering::Relaxed);
        s.output_tokens.fetch_add(output, Ordering::Relaxed);
    });
}

/// Counts one retried remote request in the current call.
/// `rows` rows of the current call were given NULL because their request failed for good
/// (`on_error 'null'`); `why` is the failure.
pub fn record_failed(rows: u64, why: &str) {
    let _ = CALL.try_with(|s| {
        s.failed.fetch_add(rows, Ordering::Relaxed);
        if let Ok(mut last) = s.last_failure.lock() {
            *last = Some(why.to_string());
        }
    });
}

/// A remote answer that pushed back (429, 503, a timeout).
pub fn record_pushback() {
    let _ = CALL.try_with(|s| {
        s.pushbacks.fetch_add(1, Ordering::Relaxed);
    });
}

/// A remote request admitted after `waited`, under an in-flight target of `target`.
pub fn record_admission(waited: Duration, target: usize) {
    let _ = CALL.try_with(|s| {
        s.admission_nanos.fetch_add(
            waited.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
        s.in_flight_target.store(target as u64, Ordering::Relaxed);
    });
}

pub fn record_retry() {
    let _ = CALL.try_with(|s| {
        s.retries.fetch_add(1, Ordering::Relaxed);
    });
}

/// The sessions' model activity, newest last, for progress display.
#[derive(Debug, Default)]
pub struct Activity {
    nodes: Mutex<Vec<Arc<NodeCalls>>>,
}

impl Activity {
    /// Registers a node when it starts executing (once).
    pub fn register(&self, node: &Arc<NodeCalls>) {
        let mut nodes = self.nodes.lock().expect("activity lock");
        if !nodes.iter().any(|n| Arc::ptr_eq(n, node)) {
            nodes.push(Arc::clone(node));
        }
    }

    /// Nodes registered so far.
    pub fn node_count(&self) -> usize {
        self.nodes.lock().expect("activity lock").len()
    }

    /// Every entry of the nodes registered after the first `n` (a statement's own calls).
    pub fn entries_since(&self, n: usize) -> Vec<Arc<CallStats>> {
        self.nodes
            .lock()
            .expect("activity lock")
            .iter()
            .skip(n)
            .flat_map(|n| n.entries())
            .collect()
    }

    /// Every entry of every registered node, in registration order.
    pub fn entries(&self) -> Vec<Arc<CallStats>> {
        self.nodes
            .lock()
            .expect("activity lock")
            .iter()
            .flat_map(|n| n.entries())
            .collect()
    }
}
