//! One picked input row per group, kept as a reference into the input arrays it came from.
//!
//! Grouped aggregates that return one of their input values (arg_max, arg_min, first_value)
//! only need to remember *which* row each group picked. Copying the value into a scalar every
//! time a group's pick changes costs an allocation per change (a string per row in a typical
//! best-of-N pairing); here a pick is two integers, the arrays a pick points into are kept, and
//! the output is one `interleave` at the end. Kept arrays that no pick points into any more are
//! dropped by compacting (one `interleave` of the live picks) once they hold more than twice
//! the live rows, so memory stays within a constant factor of the picked values.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, new_null_array};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::Result;
use datafusion::logical_expr::EmitTo;
use datafusion::scalar::ScalarValue;

/// No row picked yet.
const NONE: u32 = u32::MAX;

/// Picks per group into kept arrays.
#[derive(Debug)]
pub struct PickedRows {
    data_type: DataType,
    /// The arrays picks point into.
    arrays: Vec<ArrayRef>,
    /// Rows in `arrays`, for the compaction rule.
    kept_rows: usize,
    /// Per group: (array, row), array NONE when the group picked nothing.
    picks: Vec<(u32, u32)>,
    /// Index `arrays` gives the array of the batch being read once one of its rows is
    /// picked (None: not kept yet).
    current: Option<u32>,
}

impl PickedRows {
    pub fn new(data_type: DataType) -> Self {
        Self {
            data_type,
            arrays: Vec::new(),
            kept_rows: 0,
            picks: Vec::new(),
            current: None,
        }
    }

    /// Makes room for `total` groups; call before reading a batch.
    pub fn begin(&mut self, total: usize) {
        self.picks.resize(total, (NONE, 0));
        self.current = None;
    }

    /// Whether group `g` has picked a row.
    pub fn is_set(&self, g: usize) -> bool {
        self.picks[g].0 != NONE
    }

    /// Group `g` picks row `row` of `values`, the batch being read.
    pub fn pick(&mut self, g: usize, values: &ArrayRef, row: usize) {
        let index = *self.current.get_or_insert_with(|| {
            self.arrays.push(Arc::clone(values));
            self.kept_rows += values.len();
            (self.arrays.len() - 1) as u32
        });
        self.picks[g] = (index, row as u32);
    }

    /// Group `g`'s picked value as a scalar (for the rare comparisons that need it).
    pub fn value(&self, g: usize) -> Result<ScalarValue> {
        let (a, row) = self.picks[g];
        ScalarValue::try_from_array(&self.arrays[a as usize], row as usize)
    }

    /// Ends reading a batch: compacts when the kept arrays hold over twice the live picks.
    pub fn end(&mut self) -> Result<()> {
        self.current = None;
        if self.kept_rows > 2 * self.picks.len() + 8192 {
            let all = self.build(&self.picks)?;
            self.arrays = vec![all];
            self.kept_rows = self.picks.len();
            for (g, p) in self.picks.iter_mut().enumerate() {
                if p.0 != NONE {
                    *p = (0, g as u32);
                }
            }
        }
        Ok(())
    }

    /// The values of `picks` as one array (NULL where nothing was picked).
    fn build(&self, picks: &[(u32, u32)]) -> Result<ArrayRef> {
        let null = new_null_array(&self.data_type, 1);
        let mut sources: Vec<&dyn Array> = self.arrays.iter().map(|a| a.as_ref()).collect();
        let null_index = sources.len();
        sources.push(null.as_ref());
        let indices: Vec<(usize, usize)> = picks
            .iter()
            .map(|&(a, row)| {
                if a == NONE {
                    (null_index, 0)
                } else {
                    (a as usize, row as usize)
                }
            })
            .collect();
        Ok(interleave(&sources, &indices)?)
    }

    /// The emitted groups' values; the rest stay.
    pub fn emit(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let picks = emit_to.take_needed(&mut self.picks);
        let out = self.build(&picks)?;
        if self.picks.is_empty() {
            self.arrays.clear();
            self.kept_rows = 0;
        }
        Ok(out)
    }

    /// Which emitted groups picked a row, before [`Self::emit`] takes them.
    pub fn set_flags(&self, emit_to: EmitTo) -> Vec<bool> {
        let n = match emit_to {
            EmitTo::All => self.picks.len(),
            EmitTo::First(n) => n,
        };
        self.picks[..n].iter().map(|p| p.0 != NONE).collect()
    }

    /// Memory held: the kept arrays and the picks.
    pub fn size(&self) -> usize {
        self.arrays
            .iter()
            .map(|a| a.get_array_memory_size())
            .sum::<usize>()
            + self.picks.capacity() * size_of::<(u32, u32)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, StringArray};

    #[test]
    fn picks_survive_compaction_and_partial_emits() {
        let mut p = PickedRows::new(DataType::Utf8);
        // 3 groups; batches of 1000 rows, each re-picking groups 0 and 2, so the kept arrays
        // outgrow the live picks and compaction runs every few batches.
        let mut last = Vec::new();
        for b in 0..200 {
            let rows: Vec<String> = (0..1000).map(|r| format!("{b}/{r}")).collect();
            let values: ArrayRef = Arc::new(StringArray::from(rows));
            p.begin(3);
            for g in 0..3 {
                if g != 1 || b < 10 {
                    p.pick(g, &values, g);
                }
            }
            p.end().unwrap();
            last = vec![format!("{b}/0"), "9/1".to_string(), format!("{b}/2")];
        }
        assert!(p.arrays.len() < 20, "compaction keeps few arrays");
        assert_eq!(p.value(1).unwrap(), ScalarValue::Utf8(Some("9/1".into())));
        let first = p.emit(EmitTo::First(1)).unwrap();
        assert_eq!(first.as_string::<i32>().value(0), last[0]);
        p.begin(3); // a group appears after the emit: groups 0, 1 are the old 1, 2.
        let rest = p.emit(EmitTo::All).unwrap();
        let rest = rest.as_string::<i32>();
        assert_eq!(
            (rest.value(0), rest.value(1)),
            (last[1].as_str(), last[2].as_str())
        );
        assert!(rest.is_null(2), "a group with no pick is NULL");
    }
}
