//! `max(x)` / `min(x)`: DataFusion's own aggregates, with NaN ignored like NULL.
//!
//! prefflow's rule for scores is that a NaN is not a score: `arg_max` / `arg_min` skip rows
//! whose key is NaN, so the pairing query's `max(score) AS score_chosen` must skip them too,
//! or a pair's chosen answer and its score would come from different rows. DataFusion's
//! grouped `max` / `min` compare floats with `<`, so with a NaN their answer depends on row
//! order. This wraps the built-ins and changes only that: float inputs have their NaNs made
//! NULL before the built-in accumulator sees them (in groups, per row, in sliding windows and
//! when retracted); everything else (types, planning, statistics, display) is the built-in's.
//! A group of only NaN gives NULL, as a group of only NULL does.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::compute::nullif;
use datafusion::arrow::datatypes::{DataType, Float16Type, Float32Type, Float64Type};
use datafusion::error::Result;
use datafusion::functions_aggregate::min_max::{max_udaf, min_udaf};
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, StatisticsArgs,
};
use datafusion::scalar::ScalarValue;

/// `max` ignoring NaN.
pub fn max() -> NanIgnoring {
    NanIgnoring { inner: max_udaf() }
}

/// `min` ignoring NaN.
pub fn min() -> NanIgnoring {
    NanIgnoring { inner: min_udaf() }
}

/// A built-in aggregate whose float inputs have their NaNs made NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct NanIgnoring {
    inner: Arc<AggregateUDF>,
}

impl NanIgnoring {
    fn builtin(&self) -> &dyn AggregateUDFImpl {
        self.inner.inner().as_ref()
    }
}

/// `array` with every NaN made NULL (other types as they are).
pub fn nan_as_null(array: &ArrayRef) -> Result<ArrayRef> {
    let nan: BooleanArray = match array.data_type() {
        DataType::Float64 => array
            .as_primitive::<Float64Type>()
            .iter()
            .map(|v| Some(v.is_some_and(f64::is_nan)))
            .collect(),
        DataType::Float32 => array
            .as_primitive::<Float32Type>()
            .iter()
            .map(|v| Some(v.is_some_and(f32::is_nan)))
            .collect(),
        DataType::Float16 => array
            .as_primitive::<Float16Type>()
            .iter()
            .map(|v| Some(v.is_some_and(|v| v.is_nan())))
            .collect(),
        _ => return Ok(Arc::clone(array)),
    };
    if nan.true_count() == 0 {
        return Ok(Arc::clone(array));
    }
    Ok(nullif(array, &nan)?)
}

fn cleaned(values: &[ArrayRef]) -> Result<Vec<ArrayRef>> {
    values.iter().map(nan_as_null).collect()
}

impl AggregateUDFImpl for NanIgnoring {
    crate::common::builtin_aggregate::builtin_aggregate_methods!();

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(NanIgnoringRows(self.builtin().accumulator(args)?)))
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.builtin().groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(NanIgnoringGroups(
            self.builtin().create_groups_accumulator(args)?,
        )))
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(NanIgnoringRows(
            self.builtin().create_sliding_accumulator(args)?,
        )))
    }

    // Parquet statistics leave NaN out of min / max, so they agree with this rule.
    fn value_from_stats(&self, statistics_args: &StatisticsArgs) -> Option<ScalarValue> {
        self.builtin().value_from_stats(statistics_args)
    }
}

/// A row (or sliding window) accumulator fed without NaNs.
#[derive(Debug)]
struct NanIgnoringRows(Box<dyn Accumulator>);

impl Accumulator for NanIgnoringRows {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.0.update_batch(&cleaned(values)?)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        // The same rows the window added, so the same NULLs are retracted.
        self.0.retract_batch(&cleaned(values)?)
    }

    fn supports_retract_batch(&self) -> bool {
        self.0.supports_retract_batch()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.0.merge_batch(states)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.state()
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.0.evaluate()
    }

    fn size(&self) -> usize {
        self.0.size()
    }
}

/// A grouped accumulator fed without NaNs.
struct NanIgnoringGroups(Box<dyn GroupsAccumulator>);

impl GroupsAccumulator for NanIgnoringGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.0.update_batch(
            &cleaned(values)?,
            group_indices,
            opt_filter,
            total_num_groups,
        )
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.0.merge_batch(values, group_indices, total_num_groups)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        self.0.convert_to_state(&cleaned(values)?, opt_filter)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.0.evaluate(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.0.state(emit_to)
    }

    fn size(&self) -> usize {
        self.0.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Float64Array;

    #[test]
    fn nans_become_nulls() {
        let a: ArrayRef = Arc::new(Float64Array::from(vec![Some(1.0), Some(f64::NAN), None]));
        let b = nan_as_null(&a).unwrap();
        assert_eq!(b.null_count(), 2);
        assert_eq!(b.as_primitive::<Float64Type>().value(0), 1.0);
    }
}
