//! A memory budget for work whose size prefflow cannot bound by looking at it: a Jinja
//! template is code, and `{% set s = s ~ s %}` in a loop, `replace`, `join` or `indent` grow a
//! value with no output written and few steps taken, so neither minijinja's fuel nor the output
//! cap stops it. The budget counts the bytes one thread allocates.
//!
//! How: the process's allocator is wrapped in [`Budgeted`] (the `prefflow` binary and the
//! Python module install it). [`run`] hands the work to a companion thread of the calling
//! thread with a limit; when that thread's net allocations pass the limit, the allocator cannot
//! return an error to the template engine (an allocator must neither fail softly nor unwind),
//! so it reports "over budget" to the caller and stops that thread for good, before making the
//! allocation. The caller gets a clear error; the stopped thread keeps at most `limit` bytes.
//! The work must not hold a lock another thread needs (template rendering holds none).
//! Where the wrapper is not installed (a program embedding the library with its own
//! allocator), [`run`] runs the work inline, unbounded.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::{Cell, RefCell};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The process allocator `A`, counting what a budgeted thread allocates.
pub struct Budgeted<A>(pub A);

static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Constant-initialised and without destructors: the allocator reads them at any time,
    // thread teardown included, and reading them never allocates.
    static LIMIT: Cell<usize> = const { Cell::new(0) };
    static USED: Cell<isize> = const { Cell::new(0) };
    static SLOT: Cell<*const Slot> = const { Cell::new(std::ptr::null()) };
}

// SAFETY: every method forwards to `A` with the same arguments; the bookkeeping only reads and
// writes this thread's cells (and, on the way to stopping the thread, a Mutex and Condvar,
// which allocate nothing).
unsafe impl<A: GlobalAlloc> GlobalAlloc for Budgeted<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        charge(layout.size() as isize);
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        charge(layout.size() as isize);
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(ptr, layout) };
        credit(layout.size() as isize);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        charge(new_size as isize - layout.size() as isize);
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

#[inline]
fn charge(bytes: isize) {
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
    let limit = LIMIT.with(Cell::get);
    if limit == 0 {
        return;
    }
    let used = USED.with(|u| {
        let v = u.get() + bytes;
        u.set(v);
        v
    });
    // Never stop a thread that is panicking: the panic hook holds stderr's (and the
    // backtrace's) lock, which a stopped thread would keep from every other thread.
    if used > limit as isize && !std::thread::panicking() {
        over_budget();
    }
}

#[inline]
fn credit(bytes: isize) {
    if LIMIT.with(Cell::get) != 0 {
        USED.with(|u| u.set(u.get() - bytes));
    }
}

/// Tells the waiting caller and stops this thread (it only ever runs budgeted work).
#[cold]
fn over_budget() -> ! {
    LIMIT.with(|l| l.set(0));
    let slot = SLOT.with(Cell::get);
    if !slot.is_null() {
        // SAFETY: the companion keeps the job's Arc<Slot> alive while the job runs, and this
        // thread never returns from here.
        unsafe { (*slot).finish(Outcome::OverBudget) };
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// How budgeted work ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It returned.
    Done(Result<String, String>),
    /// It allocated more than its limit and was stopped.
    OverBudget,
}

struct Slot {
    outcome: Mutex<Option<Outcome>>,
    ready: Condvar,
}

impl Slot {
    fn finish(&self, outcome: Outcome) {
        let mut o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        *o = Some(outcome);
        self.ready.notify_one();
    }

    fn wait(&self) -> Outcome {
        let mut o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(outcome) = o.take() {
                return outcome;
            }
            o = self.ready.wait(o).unwrap_or_else(|p| p.into_inner());
        }
    }
}

type Work = Box<dyn FnOnce() -> Result<String, String> + Send>;

struct Job {
    work: Work,
    limit: usize,
    slot: Arc<Slot>,
}

thread_local! {
    // Each calling thread gets its own companion, so callers never queue behind each other;
    // the companion ends when its caller does (the channel closes).
    static COMPANION: RefCell<Option<mpsc::Sender<Job>>> = const { RefCell::new(None) };
}

fn companion() -> std::io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("prefflow-template".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                SLOT.with(|s| s.set(Arc::as_ptr(&job.slot)));
                USED.with(|u| u.set(0));
                LIMIT.with(|l| l.set(job.limit));
                let result = std::panic::catch_unwind(AssertUnwindSafe(job.work));
                LIMIT.with(|l| l.set(0));
                SLOT.with(|s| s.set(std::ptr::null()));
                let result = result.unwrap_or_else(|_| Err("the template engine panicked".into()));
                job.slot.finish(Outcome::Done(result));
            }
        })?;
    Ok(tx)
}

/// Runs `work` with at most `limit` bytes of net allocations (see the module docs).
pub fn run(
    limit: usize,
    work: impl FnOnce() -> Result<String, String> + Send + 'static,
) -> Outcome {
    if !INSTALLED.load(Ordering::Relaxed) {
        return Outcome::Done(work());
    }
    let slot = Arc::new(Slot {
        outcome: Mutex::new(None),
        ready: Condvar::new(),
    });
    let job = Job {
        work: Box::new(work),
        limit,
        slot: slot.clone(),
    };
    let sent = COMPANION.try_with(|c| {
        let mut c = c.borrow_mut();
        let tx = match c.take() {
            Some(tx) => tx,
            None => companion().map_err(|e| e.to_string())?,
        };
        match tx.send(job) {
            Ok(()) => {
                *c = Some(tx);
                Ok::<_, String>(None)
            }
            // The companion is gone (it cannot be, short of a bug): run the job inline.
            Err(mpsc::SendError(job)) => Ok(Some(job)),
        }
    });
    match sent {
        Ok(Ok(None)) => {}
        Ok(Ok(Some(job))) => return Outcome::Done((job.work)()),
        Ok(Err(e)) => return Outcome::Done(Err(format!("cannot start a template thread: {e}"))),
        // This thread is being torn down: no companion can be kept for it.
        Err(_) => return Outcome::Done(Err("the calling thread is ending".into())),
    }
    let outcome = slot.wait();
    if outcome == Outcome::OverBudget {
        // That companion never runs again; the next call starts a fresh one.
        let _ = COMPANION.try_with(|c| c.borrow_mut().take());
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_over_its_budget_is_stopped_and_the_next_runs() {
        let grow = || {
            let mut parts: Vec<Vec<u8>> = Vec::new();
            for _ in 0..1000 {
                parts.push(vec![1u8; 1 << 20]);
            }
            Ok(parts.len().to_string())
        };
        assert_eq!(run(64 << 20, grow), Outcome::OverBudget);
        // A growing String reallocates: that is counted too.
        let doubling = || {
            let mut s = String::from("x");
            for _ in 0..40 {
                s = s.repeat(2);
            }
            Ok(s.len().to_string())
        };
        assert_eq!(run(64 << 20, doubling), Outcome::OverBudget);
        // Work within its budget, after two stopped companions, still runs, even if it frees
        // more than it allocated (memory made before it started).
        let freed = vec![0u8; 10 << 20];
        assert_eq!(
            run(64 << 20, move || {
                drop(freed);
                Ok(vec![7u8; 1 << 20].len().to_string())
            }),
            Outcome::Done(Ok((1 << 20).to_string()))
        );
        assert_eq!(
            run(1 << 20, || panic!("boom")),
            Outcome::Done(Err("the template engine panicked".into()))
        );
    }
}
