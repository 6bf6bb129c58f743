//! The one way a model's runtime starts: a named thread with its own rayon pool for the math
//! (sized by `prefflow.threads`; 0 means one thread per core), the weights loaded on that thread
//! inside the pool, a handshake so a load error reaches the caller of CREATE/first use, and then
//! the runtime's own scheduling policy (token-budget batches for encoders, continuous batching
//! for decoders, Marian's loop) serving requests from a channel until every sender is gone.

use std::sync::mpsc;

use super::error::{ModelError, ModelResult};

/// Starts `model`'s thread: `load` builds its state there (inside a pool of `threads` threads),
/// then `serve` runs in the same pool with the receiving end of the request channel. Blocks until
/// the load is done and returns the sending end, or the load's error.
pub fn spawn<S, J, L, F>(
    model: &str,
    threads: usize,
    load: L,
    serve: F,
) -> ModelResult<mpsc::Sender<J>>
where
    S: 'static,
    J: Send + 'static,
    L: FnOnce() -> ModelResult<S> + Send + 'static,
    F: FnOnce(S, mpsc::Receiver<J>) + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<J>();
    let (ready_tx, ready_rx) = mpsc::channel::<ModelResult<()>>();
    let mut pool = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("prefflow-math-{i}"));
    if threads > 0 {
        pool = pool.num_threads(threads);
    }
    let pool = pool.build().map_err(|e| ModelError::Unsupported {
        model: model.to_string(),
        problem: format!("cannot start its threads: {e}"),
    })?;
    std::thread::Builder::new()
        .name(format!("prefflow-model-{model}"))
        .spawn(move || {
            pool.install(move || {
                let state = match load() {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                serve(state, rx);
            })
        })
        .map_err(|e| ModelError::Unsupported {
            model: model.to_string(),
            problem: format!("cannot start its worker thread: {e}"),
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(tx),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ModelError::WorkerGone(model.to_string())),
    }
}
