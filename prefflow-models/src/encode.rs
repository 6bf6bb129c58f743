//! One OS thread per loaded model. Every partition's SQL calls enqueue requests here; the
//! thread drains whatever is waiting, sorts the rows by length, cuts batches by a token budget
//! (rows x longest row, so padding counts) and answers each request in its own row order.
//! Model math therefore never runs on the tokio runtime, and rows from all partitions share
//! batches.

use std::sync::mpsc;

use tokio::sync::oneshot;

use super::error::{ModelError, ModelResult};

/// One tokenized input row.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Segment ids (BERT sentence pairs); zeros otherwise.
    pub type_ids: Vec<u32>,
}

/// What a request asks of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// A pooled embedding per row.
    Embed,
    /// Classification logits per row.
    Score,
}

/// The synchronous model behind a worker.
pub trait Backend: Send {
    /// Runs one batch; one output vector per row, in order.
    fn run(&mut self, task: Task, batch: &[&Encoded]) -> candle_core::Result<Vec<Vec<f32>>>;
    /// Largest batch the backend takes (decoder heads without padding support take 1).
    fn max_rows(&self) -> usize {
        usize::MAX
    }
}

struct Request {
    task: Task,
    rows: Vec<Encoded>,
    max_batch_tokens: usize,
    reply: oneshot::Sender<ModelResult<Vec<Vec<f32>>>>,
}

/// The sending end of a model's queue.
#[derive(Debug, Clone)]
pub struct EncoderWorker {
    model: String,
    tx: mpsc::Sender<Request>,
}

impl EncoderWorker {
    /// Starts a worker thread that builds its backend with `load` (on that thread, inside a
    /// pool of `threads` threads for the math) and then serves requests. Blocks until the
    /// model is loaded, so load errors surface to the caller.
    pub fn spawn<F>(model: &str, threads: usize, load: F) -> ModelResult<Self>
    where
        F: FnOnce() -> ModelResult<Box<dyn Backend>> + Send + 'static,
    {
        let name = model.to_string();
        let tx = super::thread::spawn(model, threads, load, move |mut backend, rx| {
            while let Ok(first) = rx.recv() {
                let mut pending = vec![first];
                while let Ok(more) = rx.try_recv() {
                    pending.push(more);
                }
                serve(&name, backend.as_mut(), pending);
            }
        })?;
        Ok(Self {
            model: model.to_string(),
            tx,
        })
    }

    /// Queues rows and waits for their outputs, in row order.
    pub async fn run(
        &self,
        task: Task,
        rows: Vec<Encoded>,
        max_batch_tokens: usize,
    ) -> ModelResult<Vec<Vec<f32>>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                task,
                rows,
                max_batch_tokens,
                reply,
            })
            .map_err(|_| ModelError::WorkerGone(self.model.clone()))?;
        rx.await
            .map_err(|_| ModelError::WorkerGone(self.model.clone()))?
    }
}

/// Cuts `lengths` (already sorted, longest first) into batches whose padded size
/// (rows x longest) stays within `budget`; a single over-long row is a batch of its own.
pub fn cut_batches(
    lengths: &[usize],
    budget: usize,
    max_rows: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < lengths.len() {
        let longest = lengths[start].max(1);
        let fit = (budget / longest).clamp(1, max_rows);
        let end = (start + fit).min(lengths.len());
        out.push(start..end);
        start = end;
    }
    out
}

fn serve(model: &str, backend: &mut dyn Backend, pending: Vec<Request>) {
    // Requests whose query was cancelled (nobody waits for the answer) are skipped.
    let (embed, score): (Vec<Request>, Vec<Request>) = pending
        .into_iter()
        .filter(|r| !r.reply.is_closed())
        .partition(|r| r.task == Task::Embed);
    for requests in [embed, score] {
        let Some(task) = requests.first().map(|r| r.task) else {
            continue;
        };
        // (request, row) of every row waiting, longest first, so batches pad little.
        let mut order: Vec<(usize, usize)> = requests
            .iter()
            .enumerate()
            .flat_map(|(q, r)| (0..r.rows.len()).map(move |i| (q, i)))
            .collect();
        order.sort_by_key(|&(q, i)| std::cmp::Reverse(requests[q].rows[i].ids.len()));
        let lengths: Vec<usize> = order
            .iter()
            .map(|&(q, i)| requests[q].rows[i].ids.len())
            .collect();
        let budget = requests
            .iter()
            .map(|r| r.max_batch_tokens)
            .min()
            .unwrap_or(8192);
        let mut outputs: Vec<Vec<Option<Vec<f32>>>> =
            requests.iter().map(|r| vec![None; r.rows.len()]).collect();
        let mut failure: Option<ModelError> = None;
        for range in cut_batches(&lengths, budget, backend.max_rows()) {
            let batch: Vec<&Encoded> = order[range.clone()]
                .iter()
                .map(|&(q, i)| &requests[q].rows[i])
                .collect();
            match backend.run(task, &batch) {
                Ok(vectors) => {
                    for (&(q, i), v) in order[range].iter().zip(vectors) {
                        outputs[q][i] = Some(v);
                    }
                }
                Err(e) => {
                    failure = Some(ModelError::candle(model, &e));
                    break;
                }
            }
        }
        for (request, out) in requests.into_iter().zip(outputs) {
            let result = match &failure {
                Some(e) => Err(e.clone()),
                None => Ok(out.into_iter().map(|v| v.unwrap_or_default()).collect()),
            };
            // The receiver may have given up (query cancelled); nothing to do then.
            let _ = request.reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cut_batches;

    #[test]
    fn batches_respect_the_budget() {
        let lengths = [100, 90, 50, 50, 10, 10, 10];
        let b = cut_batches(&lengths, 200, usize::MAX);
        assert_eq!(b, vec![0..2, 2..6, 6..7]);
        // An over-long row still runs, alone.
        assert_eq!(cut_batches(&[500, 10], 200, usize::MAX), vec![0..1, 1..2]);
        assert_eq!(cut_batches(&[5, 5, 5], 200, 2), vec![0..2, 2..3]);
    }
}
