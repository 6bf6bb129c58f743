//! `near_duplicate(embedding, threshold) OVER (PARTITION BY … ORDER BY …)`: true for a row
//! whose embedding is at least `threshold` cosine-similar to an earlier row that was kept.
//!
//! ```sql
//! SELECT * FROM (
//!   SELECT *, near_duplicate(embedding, 0.95) OVER (PARTITION BY domain ORDER BY id) AS dup
//!   FROM embedded
//! ) WHERE NOT dup;
//! ```
//!
//! Rows are visited in window order; the first of a group of near-identical rows is kept
//! (false) and the rest are marked (true). Greedy and order-dependent by design: ORDER BY
//! decides which copy survives (e.g. ORDER BY quality DESC keeps the best one). The threshold
//! is a constant in [-1, 1]. NULL embeddings give NULL and are never kept.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{PartitionEvaluator, Signature, Volatility, WindowUDFImpl};

use crate::common::vectors::{cosine, is_vector_type, vectors};

/// The `near_duplicate` SQL window function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct NearDuplicate {
    signature: Signature,
}

impl NearDuplicate {
    /// A new `near_duplicate`.
    pub fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl Default for NearDuplicate {
    fn default() -> Self {
        Self::new()
    }
}

impl WindowUDFImpl for NearDuplicate {
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        crate::docs::documentation(self.name())
    }

    fn name(&self) -> &str {
        "near_duplicate"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() != 2 {
            return plan_err!(
                "near_duplicate: expected (embedding, threshold), got {} arguments",
                arg_types.len()
            );
        }
        if !is_vector_type(&arg_types[0]) {
            return plan_err!(
                "near_duplicate: the embedding must be a list of numbers, got {}",
                arg_types[0]
            );
        }
        if !arg_types[1].is_numeric() && !arg_types[1].is_null() {
            return plan_err!(
                "near_duplicate: the threshold must be a number, got {}",
                arg_types[1]
            );
        }
        Ok(vec![arg_types[0].clone(), DataType::Float64])
    }

    fn partition_evaluator(
        &self,
        _args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(NearDuplicateEvaluator))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(
            field_args.name(),
            DataType::Boolean,
            true,
        )))
    }
}

#[derive(Debug)]
struct NearDuplicateEvaluator;

impl PartitionEvaluator for NearDuplicateEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], _num_rows: usize) -> Result<ArrayRef> {
        let threshold = match values[1].len() {
            0 => 1.0,
            _ => match ScalarValue::try_from_array(&values[1], 0)? {
                ScalarValue::Float64(Some(t)) if (-1.0..=1.0).contains(&t) => t as f32,
                other => {
                    return exec_err!(
                        "near_duplicate: threshold must be a number in [-1, 1], got {other}"
                    );
                }
            },
        };
        let rows = vectors("near_duplicate", &values[0])?;
        let mut kept: Vec<&[f32]> = Vec::new();
        let marks: BooleanArray = rows
            .iter()
            .map(|r| {
                r.as_ref().map(|v| {
                    let dup = kept.iter().any(|k| cosine(k, v) >= threshold);
                    if !dup {
                        kept.push(v);
                    }
                    dup
                })
            })
            .collect();
        Ok(Arc::new(marks))
    }
}
