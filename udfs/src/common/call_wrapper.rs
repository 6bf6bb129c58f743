//! Every model function runs through [`ModelCall`]: it counts rows, tokens, batches and time
//! (see [`crate::models::call_stats`]) and serves rows from the result cache, calling the function itself
//! only on the rows the cache does not have; their results are committed to the cache before
//! the batch is handed on, so a run killed at any point loses at most its batches in flight.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use datafusion::arrow::array::{Array, ArrayRef, UInt32Array};
use datafusion::arrow::compute::{concat, interleave, take};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::logical_expr::async_udf::AsyncScalarUDFImpl;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use super::function_args::{SharedRegistry, blocking, executed_model, planned_model};
use super::model_function::{Call, ModelFunction, Planning};
use crate::models::call_stats::{self, CallStats};
use crate::models::model::Model;
use crate::models::result_key::{CacheMode, Key, KeyPrefix, decode_value, encode_value};
use crate::models::{ModelSpec, PrefflowOptions};

/// A model function with counters and the result cache around it: the one implementation of
/// DataFusion's UDF traits for every model function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ModelCall<F> {
    inner: F,
    registry: SharedRegistry,
}

impl<F: ModelFunction> ModelCall<F> {
    /// `inner` over the registry's models.
    pub fn new(inner: F, registry: SharedRegistry) -> Self {
        Self { inner, registry }
    }
}

/// `function(model)`, the label of a call's counters and progress bar.
pub fn call_label(function: &str, model: &ColumnarValue) -> String {
    let model = match model {
        ColumnarValue::Scalar(s) => s.try_as_str().flatten().unwrap_or("?").to_string(),
        ColumnarValue::Array(_) => "?".to_string(),
    };
    format!("{function}({model})")
}

impl<F: ModelFunction> ScalarUDFImpl for ModelCall<F> {
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        crate::docs::documentation(F::NAME)
    }

    fn name(&self) -> &str {
        F::NAME
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        internal_err!("{}: return_field_from_args is used instead", F::NAME)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let spec = planned_model(F::NAME, &self.registry.0, &args, F::NEEDS)?;
        let planning = Planning {
            function: F::NAME,
            spec,
            registry: &self.registry.0,
            args: &args,
        };
        let records = records(planning.registry, &planning.spec);
        let output = self.inner.plan(&planning)?;
        if records && !F::RECORDS {
            return datafusion::common::plan_err!(
                "{}: model '{}' has OPTIONS (on_error 'record'), which {} does not support (its requests do not map to rows): use on_error 'null'",
                F::NAME,
                planning.spec.name,
                F::NAME
            );
        }
        let output = if records { record_type(output) } else { output };
        Ok(Arc::new(Field::new(F::NAME, output, true)))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        internal_err!("{} runs asynchronously", F::NAME)
    }
}

#[async_trait::async_trait]
impl<F: ModelFunction> AsyncScalarUDFImpl for ModelCall<F> {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let stats = call_stats::current_entry(&call_label(F::NAME, &args.args[0]));
        stats.start();
        let started = Instant::now();
        let rows = args.number_rows as u64;
        // Rows already counted done (committed chunks of this call).
        let counted = std::sync::atomic::AtomicU64::new(0);
        let out =
            call_stats::with_call(Arc::clone(&stats), self.cached(args, &stats, &counted)).await;
        stats
            .nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.done();
        if out.is_ok() {
            let counted = counted.load(Ordering::Relaxed);
            stats
                .rows
                .fetch_add(rows - counted.min(rows), Ordering::Relaxed);
        }
        out
    }
}

/// The model of one batch, resolved once: for the cache key, and loaded only when some rows
/// are not in the cache.
struct Batch {
    spec: ModelSpec,
    settings: PrefflowOptions,
    model: tokio::sync::OnceCell<Model>,
}

impl<F: ModelFunction> ModelCall<F> {
    async fn cached(
        &self,
        args: ScalarFunctionArgs,
        stats: &CallStats,
        counted: &std::sync::atomic::AtomicU64,
    ) -> Result<ColumnarValue> {
        let name = F::NAME;
        let settings = PrefflowOptions::from_config(&args.config_options);
        let mode = CacheMode::parse(&settings.cache)
            .map_err(|e| DataFusionError::Execution(format!("{name}: {e}")))?;
        let batch = Batch {
            spec: executed_model(name, &self.registry.0, &args.args[0])?,
            settings,
            model: tokio::sync::OnceCell::new(),
        };
        let store = self
            .registry
            .0
            .result_store()
            .filter(|_| F::CACHED && mode != CacheMode::Off && args.number_rows > 0);
        let Some(store) = store else {
            let _flight = InFlight::new(stats, args.number_rows);
            let all: Vec<usize> = (0..args.number_rows).collect();
            return Ok(ColumnarValue::Array(
                self.compute(&batch, &args, &all).await?,
            ));
        };
        let rows = args.number_rows;
        let registry = Arc::clone(&self.registry.0);
        let expected = args.return_field.data_type().clone();
        let call_args = args.args.clone();
        let (spec, device) = (batch.spec.clone(), batch.settings.device.clone());
        let s = Arc::clone(&store);
        let (keys, found) = blocking(name, move || {
            let writable = mode == CacheMode::ReadWrite;
            let identity = registry.identity(&spec, &device, writable)?;
            let (columns, constants): (Vec<_>, Vec<_>) = call_args[1..]
                .iter()
                .partition(|a| matches!(a, ColumnarValue::Array(_)));
            let prefix = KeyPrefix::new(name, &identity, &expected, &constants)?;
            let columns = columns
                .iter()
                .map(|c| c.to_array(rows))
                .collect::<Result<Vec<_>>>()?;
            let keys = prefix.keys(&columns, rows)?;
            let found = s
                .get_many(&keys, writable)
                .map_err(|e| cache_err(name, s.as_ref(), e))?;
            let values: Vec<Option<ArrayRef>> = found
                .into_iter()
                .map(|v| v.and_then(|v| decode_value(&v, &expected)))
                .collect();
            Ok((keys, values))
        })
        .await?;
        let misses: Vec<usize> = (0..rows).filter(|&i| found[i].is_none()).collect();
        stats
            .cache_hits
            .fetch_add((rows - misses.len()) as u64, Ordering::Relaxed);
        if misses.is_empty() {
            let parts: Vec<&dyn Array> = found.iter().flatten().map(|a| a.as_ref()).collect();
            return Ok(ColumnarValue::Array(concat(&parts)?));
        }
        // Only the missing rows go to the model; they are in flight until committed.
        let computed = if mode == CacheMode::ReadWrite {
            let flight = InFlight::new(stats, misses.len());
            let done = Done {
                flight: &flight,
                counted,
            };
            self.compute_committing(&batch, &args, &misses, &keys, store, done)
                .await?
        } else {
            let _flight = InFlight::new(stats, misses.len());
            self.compute(&batch, &args, &misses).await?
        };
        if misses.len() == rows {
            return Ok(ColumnarValue::Array(computed));
        }
        // Put cached and computed rows back in row order.
        let cached_parts: Vec<&dyn Array> = found.iter().flatten().map(|a| a.as_ref()).collect();
        let cached = concat(&cached_parts)?;
        let (mut hit, mut miss) = (0usize, 0usize);
        let order: Vec<(usize, usize)> = found
            .iter()
            .map(|f| match f {
                Some(_) => {
                    hit += 1;
                    (0, hit - 1)
                }
                None => {
                    miss += 1;
                    (1, miss - 1)
                }
            })
            .collect();
        Ok(ColumnarValue::Array(interleave(
            &[cached.as_ref(), computed.as_ref()],
            &order,
        )?))
    }
}

impl<F: ModelFunction> ModelCall<F> {
    /// The function on the rows `picks` of `args` (all of them when every row is picked), with
    /// the batch's model (loaded when the function first asks for it).
    async fn compute(
        &self,
        batch: &Batch,
        args: &ScalarFunctionArgs,
        picks: &[usize],
    ) -> Result<ArrayRef> {
        let rows = args.number_rows;
        let all = picks.len() == rows && picks.iter().enumerate().all(|(j, &i)| i == j);
        let sub;
        let args = if all {
            args
        } else {
            let indices = UInt32Array::from_iter_values(picks.iter().map(|&i| i as u32));
            let sub_args = args
                .args
                .iter()
                .map(|a| match a {
                    ColumnarValue::Array(a) => Ok(ColumnarValue::Array(take(a, &indices, None)?)),
                    s => Ok(s.clone()),
                })
                .collect::<Result<Vec<_>>>()?;
            sub = ScalarFunctionArgs {
                args: sub_args,
                arg_fields: args.arg_fields.clone(),
                number_rows: picks.len(),
                return_field: Arc::clone(&args.return_field),
                config_options: Arc::clone(&args.config_options),
            };
            &sub
        };
        let call = Call {
            spec: &batch.spec,
            settings: &batch.settings,
            registry: &self.registry.0,
            args,
            needs: F::NEEDS,
            model: &batch.model,
        };
        if !records(&self.registry.0, &batch.spec) {
            return self.inner.run(&call).await;
        }
        let (log, values) = crate::models::row_errors::with_row_log(self.inner.run(&call)).await;
        record_array(values?, &log)
    }

    /// Computes the rows `misses` in chunks that all go to the model at once (its worker
    /// batches them together as before) and commits each chunk's results as soon as it is
    /// done, at most every [`COMMIT_EVERY`]: a run killed at 99% of a large record batch loses
    /// about one model batch, not the whole record batch.
    async fn compute_committing(
        &self,
        batch: &Batch,
        args: &ScalarFunctionArgs,
        misses: &[usize],
        keys: &[Key],
        store: Arc<dyn crate::models::result_key::ResultStore>,
        done_rows: Done<'_>,
    ) -> Result<ArrayRef> {
        use futures::StreamExt;
        let name = F::NAME;
        let return_type = args.return_field.data_type().clone();
        let chunks: Vec<&[usize]> = misses.chunks(COMMIT_CHUNK_ROWS).collect();
        let mut running: futures::stream::FuturesUnordered<_> = chunks
            .iter()
            .enumerate()
            .map(|(c, picks)| async move { (c, self.compute(batch, args, picks).await) })
            .collect();
        let mut done: Vec<Option<ArrayRef>> = vec![None; chunks.len()];
        let mut pending: Vec<(Key, ArrayRef)> = Vec::new();
        // Rows computed, of them committed: progress shows only what a kill would not lose.
        let mut finished_rows = 0u64;
        let mut last_commit = Instant::now();
        while let Some((c, result)) = running.next().await {
            let array = result?;
            if array.data_type() == &return_type {
                // A NULL result is not kept: it is a request that failed (`on_error
                // 'null'`), and a run after the cause is fixed must ask again; nor is a
                // row whose record holds an error (`on_error 'record'`).
                let errors = records(&self.registry.0, &batch.spec)
                    .then(|| record_errors(&array))
                    .flatten();
                pending.extend(
                    chunks[c]
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| !array.is_null(*j))
                        .filter(|(j, _)| errors.as_ref().is_none_or(|e| e.is_null(*j)))
                        .map(|(j, &i)| (keys[i], array.slice(j, 1))),
                );
            }
            done[c] = Some(array);
            finished_rows += chunks[c].len() as u64;
            if !running.is_empty() && last_commit.elapsed() < COMMIT_EVERY {
                continue;
            }
            let entries = std::mem::take(&mut pending);
            let s = Arc::clone(&store);
            blocking(name, move || commit_entries(name, s.as_ref(), entries)).await?;
            last_commit = Instant::now();
            done_rows.add(std::mem::take(&mut finished_rows));
        }
        let parts: Vec<&dyn Array> = done.iter().flatten().map(|a| a.as_ref()).collect();
        Ok(concat(&parts)?)
    }
}

/// Whether a call with this model returns records: a remote model whose settings (parsed and
/// checked at CREATE MODEL) say `on_error 'record'`.
fn records(registry: &crate::models::ModelRegistry, spec: &ModelSpec) -> bool {
    registry
        .remote(spec)
        .ok()
        .flatten()
        .is_some_and(|r| r.settings.on_error == crate::models::remote::OnError::Record)
}

/// `STRUCT<value T, error VARCHAR, attempts INT>` around a function's output type `T`.
fn record_type(value: DataType) -> DataType {
    DataType::Struct(record_fields(value))
}

fn record_fields(value: DataType) -> datafusion::arrow::datatypes::Fields {
    vec![
        Field::new("value", value, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("attempts", DataType::Int32, true),
    ]
    .into()
}

/// The function's values with each row's error and attempts; a row with neither a value nor
/// an error (a NULL input) is NULL.
fn record_array(values: ArrayRef, log: &crate::models::row_errors::RowLog) -> Result<ArrayRef> {
    use datafusion::arrow::array::{Int32Array, StringArray, StructArray};
    use datafusion::arrow::buffer::NullBuffer;
    let rows = values.len();
    let errors = StringArray::from_iter((0..rows).map(|i| log.error(i)));
    let attempts = Int32Array::from_iter_values(
        (0..rows).map(|i| log.attempts(i).min(i32::MAX as u32) as i32),
    );
    let valid = NullBuffer::from_iter((0..rows).map(|i| values.is_valid(i) || errors.is_valid(i)));
    let fields = record_fields(values.data_type().clone());
    Ok(Arc::new(StructArray::try_new(
        fields,
        vec![values, Arc::new(errors), Arc::new(attempts)],
        Some(valid),
    )?))
}

/// The `error` column of a record array.
fn record_errors(array: &ArrayRef) -> Option<ArrayRef> {
    array
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StructArray>()
        .and_then(|s| s.column_by_name("error").cloned())
}

/// Rows per chunk of a record batch sent to the model while caching: the decode worker's
/// default batch, so each chunk finishes about when one model batch does.
const COMMIT_CHUNK_ROWS: usize = 16;
/// The longest finished results wait before they are committed (one durable transaction).
const COMMIT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

fn commit_entries(
    function: &str,
    store: &dyn crate::models::result_key::ResultStore,
    entries: Vec<(Key, ArrayRef)>,
) -> Result<()> {
    let encoded = entries
        .into_iter()
        .map(|(k, v)| {
            // A compact copy, so a slice does not carry its whole batch's buffers.
            let v = take(&v, &UInt32Array::from(vec![0u32]), None)?;
            Ok((k, encode_value(&v)?))
        })
        .collect::<Result<Vec<_>>>()?;
    store
        .put_many(&encoded)
        .map_err(|e| cache_err(function, store, e))
}

/// Counts rows in flight for as long as it lives (also when the call fails).
struct InFlight<'a>(&'a CallStats, std::sync::atomic::AtomicU64);

impl<'a> InFlight<'a> {
    fn new(stats: &'a CallStats, rows: usize) -> Self {
        stats.in_flight.fetch_add(rows as u64, Ordering::Relaxed);
        Self(stats, std::sync::atomic::AtomicU64::new(rows as u64))
    }

    /// `rows` of them are no longer in flight.
    fn landed(&self, rows: u64) {
        self.1.fetch_sub(rows, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(rows, Ordering::Relaxed);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(self.1.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Where committed rows are counted done as soon as they are in the cache.
struct Done<'a> {
    flight: &'a InFlight<'a>,
    counted: &'a std::sync::atomic::AtomicU64,
}

impl Done<'_> {
    fn add(&self, rows: u64) {
        self.flight.landed(rows);
        self.flight.0.rows.fetch_add(rows, Ordering::Relaxed);
        self.counted.fetch_add(rows, Ordering::Relaxed);
    }
}

fn cache_err(
    function: &str,
    store: &dyn crate::models::result_key::ResultStore,
    e: String,
) -> DataFusionError {
    DataFusionError::Execution(format!(
        "{function}: result cache {}: {e}",
        store.location()
    ))
}
