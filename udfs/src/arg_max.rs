//! `arg_max(value, key)` (alias `max_by`): the `value` of the row with the largest `key`.
//!
//! ```sql
//! SELECT prompt, arg_max(response, score) AS chosen, arg_min(response, score) AS rejected
//! FROM scored GROUP BY prompt;
//! -- or as a window:
//! SELECT *, arg_max(response, score) OVER (PARTITION BY prompt) AS best FROM scored;
//! ```
//!
//! Rows whose key is NULL or NaN are ignored (a NaN score is not a score; prefflow's `max` /
//! `min` ignore it too, so `max(score)` is the chosen row's score); a group with no such key
//! gives NULL. Ties: among
//! rows with the same best key, the smallest value wins (NULL values last), in both `arg_max`
//! and `arg_min`, so the result never depends on row order, batch size or partitioning.
//! The shared accumulator lives here; `arg_min` only flips the direction.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::mem::size_of_val;

use crate::common::picked_rows::PickedRows;
use datafusion::arrow::array::make_comparator;
use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::array::{BooleanArray, Float64Array};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};

/// Which end of the key order wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The largest key wins (`arg_max`).
    Max,
    /// The smallest key wins (`arg_min`).
    Min,
}

/// The `arg_max` SQL aggregate (alias `max_by`).
pub fn arg_max() -> ArgBest {
    ArgBest::new("arg_max", "max_by", Direction::Max)
}

/// Shared implementation of `arg_max` and `arg_min`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ArgBest {
    name: &'static str,
    aliases: Vec<String>,
    direction: Direction,
    signature: Signature,
}

impl ArgBest {
    /// An aggregate called `name` (also `alias`) picking by `direction`.
    pub fn new(name: &'static str, alias: &str, direction: Direction) -> Self {
        Self {
            name,
            aliases: vec![alias.to_string()],
            direction,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }

    fn check(&self, arg_types: &[DataType]) -> Result<()> {
        if arg_types.len() != 2 {
            return exec_err!(
                "{}: expected (value, key), got {} arguments",
                self.name,
                arg_types.len()
            );
        }
        let key = &arg_types[1];
        if !key.is_null()
            && !(key.is_primitive()
                || matches!(
                    key,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean
                ))
        {
            return datafusion::common::plan_err!(
                "{}: the key must be a number, string, boolean or date, got {key}",
                self.name
            );
        }
        Ok(())
    }
}

impl AggregateUDFImpl for ArgBest {
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        crate::docs::documentation(self.name())
    }

    fn name(&self) -> &str {
        self.name
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.check(arg_types)?;
        Ok(arg_types[0].clone())
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let value = args.input_fields[0].data_type().clone();
        let key = args.input_fields[1].data_type().clone();
        Ok(vec![
            Field::new(format!("{}[key]", args.name), key, true).into(),
            Field::new(format!("{}[value]", args.name), value, true).into(),
        ])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(BestAccumulator::new(self.direction, types(&args))))
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        numeric_key(args.expr_fields[1].data_type())
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(BestGroups::new(self.direction, types(&args))))
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SlidingBestAccumulator::new(
            self.direction,
            types(&args),
        )))
    }
}

fn types(args: &AccumulatorArgs) -> (DataType, DataType) {
    (
        args.expr_fields[0].data_type().clone(),
        args.expr_fields[1].data_type().clone(),
    )
}

/// Is candidate (key, value) better than the incumbent?
fn better(
    direction: Direction,
    key: &ScalarValue,
    value: &ScalarValue,
    best_key: &ScalarValue,
    best_value: &ScalarValue,
) -> bool {
    let by_key = key.partial_cmp(best_key).unwrap_or(Ordering::Equal);
    let by_key = match direction {
        Direction::Max => by_key,
        Direction::Min => by_key.reverse(),
    };
    match by_key {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => value_before(value, best_value),
    }
}

/// A NaN key counts as NULL.
fn is_nan(key: &ScalarValue) -> bool {
    match key {
        ScalarValue::Float64(Some(v)) => v.is_nan(),
        ScalarValue::Float32(Some(v)) => v.is_nan(),
        ScalarValue::Float16(Some(v)) => v.is_nan(),
        _ => false,
    }
}

/// The tie rule: the smaller value wins, NULL values last.
fn value_before(a: &ScalarValue, b: &ScalarValue) -> bool {
    match (a.is_null(), b.is_null()) {
        (true, _) => false,
        (false, true) => true,
        (false, false) => a.partial_cmp(b) == Some(Ordering::Less),
    }
}

/// Index of the best row of one batch, comparing inside Arrow without building scalars.
fn best_row(direction: Direction, values: &dyn Array, keys: &dyn Array) -> Result<Option<usize>> {
    // A NULL-typed key column has no physical null mask, so ask for logical nulls.
    if keys.logical_null_count() == keys.len() {
        return Ok(None);
    }
    // NaN keys count as NULL.
    let keys = crate::min_max::nan_as_null(&datafusion::arrow::array::make_array(keys.to_data()))?;
    let keys = keys.as_ref();
    let key_cmp = make_comparator(keys, keys, SortOptions::default())?;
    let value_cmp = make_comparator(
        values,
        values,
        SortOptions {
            descending: false,
            nulls_first: false,
        },
    )?;
    let mut best: Option<usize> = None;
    for i in 0..keys.len() {
        if keys.is_null(i) {
            continue;
        }
        let Some(b) = best else {
            best = Some(i);
            continue;
        };
        let by_key = match direction {
            Direction::Max => key_cmp(i, b),
            Direction::Min => key_cmp(b, i),
        };
        if by_key == Ordering::Greater
            || (by_key == Ordering::Equal && value_cmp(i, b) == Ordering::Less)
        {
            best = Some(i);
        }
    }
    Ok(best)
}

/// Keeps only the best (key, value) seen: constant memory per group.
#[derive(Debug)]
pub struct BestAccumulator {
    direction: Direction,
    /// (value, key) types, for typed NULLs.
    types: (DataType, DataType),
    best: Option<(ScalarValue, ScalarValue)>,
}

impl BestAccumulator {
    /// An empty accumulator.
    pub fn new(direction: Direction, types: (DataType, DataType)) -> Self {
        Self {
            direction,
            types,
            best: None,
        }
    }

    fn offer(&mut self, values: &ArrayRef, keys: &ArrayRef) -> Result<()> {
        let Some(i) = best_row(self.direction, values.as_ref(), keys.as_ref())? else {
            return Ok(());
        };
        let key = ScalarValue::try_from_array(keys, i)?;
        let value = ScalarValue::try_from_array(values, i)?;
        let replace = match &self.best {
            None => true,
            Some((bk, bv)) => better(self.direction, &key, &value, bk, bv),
        };
        if replace {
            self.best = Some((key, value));
        }
        Ok(())
    }
}

impl Accumulator for BestAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.offer(&values[0], &values[1])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        // State columns are [key, value].
        self.offer(&states[1], &states[0])
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        match &self.best {
            Some((k, v)) => Ok(vec![k.clone(), v.clone()]),
            None => Ok(vec![
                ScalarValue::try_from(&self.types.1)?,
                ScalarValue::try_from(&self.types.0)?,
            ]),
        }
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        match &self.best {
            Some((_, v)) => Ok(v.clone()),
            None => ScalarValue::try_from(&self.types.0),
        }
    }

    fn size(&self) -> usize {
        size_of_val(self)
            + self
                .best
                .as_ref()
                .map(|(k, v)| k.size() + v.size())
                .unwrap_or(0)
    }
}

/// Key types whose values a f64 holds exactly (the common score columns): these get the
/// grouped accumulator below; other keys use [`BestAccumulator`] per group.
fn numeric_key(key: &DataType) -> bool {
    matches!(
        key,
        DataType::Float64
            | DataType::Float32
            | DataType::Int32
            | DataType::Int16
            | DataType::Int8
            | DataType::UInt32
            | DataType::UInt16
            | DataType::UInt8
    )
}

/// The best (key, value) of every group in flat vectors: a `GROUP BY` over many small groups
/// compares one f64 per row instead of slicing the batch per group and building scalars (the
/// row accumulator's cost), and a group's best value is a reference to its input row
/// ([`PickedRows`]), so nothing is copied until the output is built. Ties compare values as
/// [`better`] does, so results equal [`BestAccumulator`]'s.
#[derive(Debug)]
pub struct BestGroups {
    direction: Direction,
    /// The key type (for the state).
    key_type: DataType,
    /// Best key per group; meaningful where the group has a pick.
    keys: Vec<f64>,
    /// Best value per group.
    values: PickedRows,
}

impl BestGroups {
    /// No groups yet.
    pub fn new(direction: Direction, types: (DataType, DataType)) -> Self {
        Self {
            direction,
            key_type: types.1,
            keys: Vec::new(),
            values: PickedRows::new(types.0),
        }
    }

    fn offer(
        &mut self,
        values: &ArrayRef,
        keys: &ArrayRef,
        groups: &[usize],
        filter: Option<&BooleanArray>,
        total: usize,
    ) -> Result<()> {
        self.keys.resize(total, 0.0);
        self.values.begin(total);
        let keys = cast(keys, &DataType::Float64)?;
        let keys = keys
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("cast to Float64 gives a Float64Array");
        for (row, &g) in groups.iter().enumerate() {
            if keys.is_null(row) || filter.is_some_and(|f| !f.is_valid(row) || !f.value(row)) {
                continue;
            }
            let key = keys.value(row);
            if key.is_nan() {
                continue;
            }
            let replace = if !self.values.is_set(g) {
                true
            } else {
                let by_key = key.total_cmp(&self.keys[g]);
                let by_key = match self.direction {
                    Direction::Max => by_key,
                    Direction::Min => by_key.reverse(),
                };
                match by_key {
                    Ordering::Greater => true,
                    Ordering::Less => false,
                    Ordering::Equal => value_before(
                        &ScalarValue::try_from_array(values, row)?,
                        &self.values.value(g)?,
                    ),
                }
            };
            if replace {
                self.keys[g] = key;
                self.values.pick(g, values, row);
            }
        }
        self.values.end()
    }
}

impl GroupsAccumulator for BestGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.offer(
            &values[0],
            &values[1],
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
        // State columns are [key, value].
        self.offer(
            &values[1],
            &values[0],
            group_indices,
            None,
            total_num_groups,
        )
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // Each input row is its own group's state: [key, value], the key NULL where the row
        // is filtered out (a NULL key is ignored when merged).
        let keys = match opt_filter {
            Some(f) => datafusion::arrow::compute::nullif(
                &values[1],
                &datafusion::arrow::compute::not(
                    &datafusion::arrow::compute::prep_null_mask_filter(f),
                )?,
            )?,
            None => std::sync::Arc::clone(&values[1]),
        };
        Ok(vec![keys, std::sync::Arc::clone(&values[0])])
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let _ = emit_to.take_needed(&mut self.keys);
        self.values.emit(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let set = self.values.set_flags(emit_to);
        let keys = emit_to.take_needed(&mut self.keys);
        let keys: Float64Array = keys
            .iter()
            .zip(set)
            .map(|(k, set)| set.then_some(*k))
            .collect();
        let keys = cast(&(std::sync::Arc::new(keys) as ArrayRef), &self.key_type)?;
        Ok(vec![keys, self.values.emit(emit_to)?])
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.keys.capacity() * 8 + self.values.size()
    }
}

/// For window frames that slide: keeps the frame's rows so rows leaving it can be retracted.
#[derive(Debug)]
pub struct SlidingBestAccumulator {
    direction: Direction,
    /// (value, key) types, for typed NULLs.
    types: (DataType, DataType),
    rows: VecDeque<(ScalarValue, ScalarValue)>,
}

impl SlidingBestAccumulator {
    /// An empty accumulator.
    pub fn new(direction: Direction, types: (DataType, DataType)) -> Self {
        Self {
            direction,
            types,
            rows: VecDeque::new(),
        }
    }
}

impl Accumulator for SlidingBestAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for i in 0..values[0].len() {
            self.rows.push_back((
                ScalarValue::try_from_array(&values[1], i)?,
                ScalarValue::try_from_array(&values[0], i)?,
            ));
        }
        Ok(())
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        // Frames retract the rows they added, oldest first.
        for _ in 0..values[0].len() {
            self.rows.pop_front();
        }
        Ok(())
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for i in 0..states[0].len() {
            self.rows.push_back((
                ScalarValue::try_from_array(&states[0], i)?,
                ScalarValue::try_from_array(&states[1], i)?,
            ));
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        match self.best() {
            Some((k, v)) => Ok(vec![k.clone(), v.clone()]),
            None => Ok(vec![
                ScalarValue::try_from(&self.types.1)?,
                ScalarValue::try_from(&self.types.0)?,
            ]),
        }
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        match self.best() {
            Some((_, v)) => Ok(v.clone()),
            None => ScalarValue::try_from(&self.types.0),
        }
    }

    fn size(&self) -> usize {
        size_of_val(self)
            + self
                .rows
                .iter()
                .map(|(k, v)| k.size() + v.size())
                .sum::<usize>()
    }
}

impl SlidingBestAccumulator {
    fn best(&self) -> Option<&(ScalarValue, ScalarValue)> {
        let mut best: Option<&(ScalarValue, ScalarValue)> = None;
        for row in self.rows.iter().filter(|(k, _)| !k.is_null() && !is_nan(k)) {
            best = match best {
                Some(b) if !better(self.direction, &row.0, &row.1, &b.0, &b.1) => Some(b),
                _ => Some(row),
            };
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, StringArray};
    use std::sync::Arc;

    /// The grouped accumulator picks what the row accumulator picks, group by group, across
    /// batches, with ties, NULL keys and NULL values, and through state + merge.
    #[test]
    fn grouped_equals_per_group() {
        let types = (DataType::Utf8, DataType::Float64);
        let mut seed = 9u64;
        let mut next = |m: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        let groups = 50;
        let batches: Vec<(Vec<usize>, ArrayRef, ArrayRef)> = (0..4)
            .map(|_| {
                let n = 200;
                let g: Vec<usize> = (0..n).map(|_| next(groups) as usize).collect();
                let values: ArrayRef = Arc::new(StringArray::from(
                    (0..n)
                        .map(|_| (next(10) > 0).then(|| format!("v{}", next(5))))
                        .collect::<Vec<_>>(),
                ));
                let keys: ArrayRef = Arc::new(Float64Array::from(
                    (0..n)
                        .map(|_| (next(8) > 0).then(|| next(4) as f64 / 2.0))
                        .collect::<Vec<_>>(),
                ));
                (g, values, keys)
            })
            .collect();
        for direction in [Direction::Max, Direction::Min] {
            let mut grouped = BestGroups::new(direction, types.clone());
            let mut rows: Vec<BestAccumulator> = (0..groups)
                .map(|_| BestAccumulator::new(direction, types.clone()))
                .collect();
            for (g, values, keys) in &batches {
                grouped
                    .update_batch(&[values.clone(), keys.clone()], g, None, groups as usize)
                    .unwrap();
                for (row, &group) in g.iter().enumerate() {
                    rows[group]
                        .update_batch(&[values.slice(row, 1), keys.slice(row, 1)])
                        .unwrap();
                }
            }
            // Through state and merge into a second accumulator.
            let state = grouped.state(EmitTo::All).unwrap();
            let mut merged = BestGroups::new(direction, types.clone());
            let ids: Vec<usize> = (0..groups as usize).collect();
            merged.merge_batch(&state, &ids, groups as usize).unwrap();
            let got = merged.evaluate(EmitTo::All).unwrap();
            for (g, acc) in rows.iter_mut().enumerate() {
                let want = acc.evaluate().unwrap();
                let have = ScalarValue::try_from_array(&got, g).unwrap();
                assert_eq!(have, want, "{direction:?} group {g}");
            }
        }
    }
}
