//! `first_value(x)`: DataFusion's own aggregate, with a grouped accumulator for the form
//! without `ORDER BY`.
//!
//! The pairing query every preference pipeline runs, `GROUP BY prompt_id` with
//! `first_value(prompt)`, has one small group per prompt. DataFusion 55 has a grouped
//! accumulator for first_value only with an `ORDER BY` and a primitive type, so a text column
//! gets one row accumulator per group (a boxed accumulator and a scalar copy per prompt: the
//! largest cost of the pairing query, measured). This wraps the built-in function and changes
//! only that: without `ORDER BY`, any type runs on [`FirstGroups`], which keeps a reference to
//! each group's first row ([`PickedRows`]). Everything else (ordering, planning, display,
//! state layout, window use) is the built-in's.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::error::Result;
use datafusion::functions_aggregate::first_last::first_value_udaf;
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator,
};

use crate::common::picked_rows::PickedRows;

/// `first_value` as DataFusion defines it, with [`FirstGroups`] for the unordered form.
pub fn first_value() -> FirstValue {
    FirstValue {
        inner: first_value_udaf(),
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FirstValue {
    inner: Arc<AggregateUDF>,
}

impl FirstValue {
    fn builtin(&self) -> &dyn AggregateUDFImpl {
        self.inner.inner().as_ref()
    }
}

impl AggregateUDFImpl for FirstValue {
    crate::common::builtin_aggregate::builtin_aggregate_methods!();

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.builtin().accumulator(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        args.order_bys.is_empty() || self.builtin().groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        if args.order_bys.is_empty() {
            return Ok(Box::new(FirstGroups::new(
                args.return_field.data_type().clone(),
                args.ignore_nulls,
            )));
        }
        self.builtin().create_groups_accumulator(args)
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.builtin().create_sliding_accumulator(args)
    }

    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        let inner = Arc::clone(self.inner.inner()).with_beneficial_ordering(beneficial_ordering)?;
        Ok(inner.map(|inner| {
            Arc::new(FirstValue {
                inner: Arc::new(AggregateUDF::new_from_shared_impl(inner)),
            }) as Arc<dyn AggregateUDFImpl>
        }))
    }

    fn supports_null_handling_clause(&self) -> bool {
        self.builtin().supports_null_handling_clause()
    }

    fn supports_within_group_clause(&self) -> bool {
        self.builtin().supports_within_group_clause()
    }
}

/// The first row of every group (the first non-NULL with `IGNORE NULLS`), as references.
/// State is the built-in's for the unordered form: [value, is_set].
#[derive(Debug)]
pub struct FirstGroups {
    ignore_nulls: bool,
    values: PickedRows,
}

impl FirstGroups {
    pub fn new(data_type: DataType, ignore_nulls: bool) -> Self {
        Self {
            ignore_nulls,
            values: PickedRows::new(data_type),
        }
    }

    /// Rows of `values` whose `take` flag is true (and, ignoring NULLs, that are not NULL)
    /// become their group's pick where the group has none.
    fn offer(
        &mut self,
        values: &ArrayRef,
        take: impl Fn(usize) -> bool,
        groups: &[usize],
        total: usize,
    ) -> Result<()> {
        self.values.begin(total);
        let nulls = values.logical_nulls();
        for (row, &g) in groups.iter().enumerate() {
            if self.values.is_set(g)
                || !take(row)
                || (self.ignore_nulls && nulls.as_ref().is_some_and(|n| n.is_null(row)))
            {
                continue;
            }
            self.values.pick(g, values, row);
        }
        self.values.end()
    }
}

fn passes(filter: Option<&BooleanArray>, row: usize) -> bool {
    filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}

impl GroupsAccumulator for FirstGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.offer(
            &values[0],
            |row| passes(opt_filter, row),
            group_indices,
            total_num_groups,
        )
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        // State columns are [value, is_set]; an unset partial state is skipped.
        let set = values[1].as_boolean();
        self.offer(
            &values[0],
            |row| set.is_valid(row) && set.value(row),
            group_indices,
            total_num_groups,
        )
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let nulls = values[0].logical_nulls();
        let set: BooleanArray = (0..values[0].len())
            .map(|row| {
                Some(
                    passes(opt_filter, row)
                        && !(self.ignore_nulls && nulls.as_ref().is_some_and(|n| n.is_null(row))),
                )
            })
            .collect();
        Ok(vec![Arc::clone(&values[0]), Arc::new(set)])
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.values.emit(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let set = BooleanArray::from(self.values.set_flags(emit_to));
        Ok(vec![self.values.emit(emit_to)?, Arc::new(set)])
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.values.size()
    }
}
