//! `kmeans(embedding, k [, seed]) OVER (PARTITION BY … ORDER BY …)`: a cluster id per row.
//!
//! ```sql
//! SELECT *, kmeans(embedding, 8, 42) OVER (PARTITION BY domain ORDER BY id) AS cluster
//! FROM embedded;
//! ```
//!
//! k-means++ initialisation from a seeded generator, then Lloyd iterations until no row
//! changes cluster (at most 100). Distances are Euclidean (equal to cosine ranking for
//! normalised embeddings). The result depends only on the partition's rows in their window
//! order: give the window an ORDER BY for results that are reproducible across runs. Cluster
//! ids are 0..k-1 numbered by first appearance in that order. With fewer distinct rows than
//! k, there are as many clusters as distinct rows. NULL embeddings get NULL.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{PartitionEvaluator, Signature, Volatility, WindowUDFImpl};

use crate::common::vectors::{distance2, is_vector_type, vectors};

/// The `kmeans` SQL window function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct KMeans {
    signature: Signature,
}

impl KMeans {
    /// A new `kmeans`.
    pub fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl Default for KMeans {
    fn default() -> Self {
        Self::new()
    }
}

impl WindowUDFImpl for KMeans {
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        crate::docs::documentation(self.name())
    }

    fn name(&self) -> &str {
        "kmeans"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if !(2..=3).contains(&arg_types.len()) {
            return plan_err!(
                "kmeans: expected (embedding, k [, seed]), got {} arguments",
                arg_types.len()
            );
        }
        if !is_vector_type(&arg_types[0]) {
            return plan_err!(
                "kmeans: the embedding must be a list of numbers, got {}",
                arg_types[0]
            );
        }
        let mut out = vec![arg_types[0].clone()];
        for t in &arg_types[1..] {
            if !t.is_integer() && !t.is_null() {
                return plan_err!("kmeans: k and seed must be integers, got {t}");
            }
            out.push(DataType::Int64);
        }
        Ok(out)
    }

    fn partition_evaluator(
        &self,
        _args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(KMeansEvaluator))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(
            field_args.name(),
            DataType::Int64,
            true,
        )))
    }
}

#[derive(Debug)]
struct KMeansEvaluator;

/// A constant integer argument (k or seed), which must be the same on every row.
fn constant(function: &str, what: &str, array: &ArrayRef) -> Result<Option<i64>> {
    if array.is_empty() {
        return Ok(None);
    }
    let first = ScalarValue::try_from_array(array, 0)?;
    match first {
        ScalarValue::Int64(v) => Ok(v),
        ScalarValue::Null => Ok(None),
        other => exec_err!("{function}: {what} must be an integer, got {other}"),
    }
}

impl PartitionEvaluator for KMeansEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let k = match constant("kmeans", "k", &values[1])? {
            Some(k) if k >= 1 => k as usize,
            other => return exec_err!("kmeans: k must be at least 1, got {other:?}"),
        };
        let seed = match values.get(2) {
            Some(a) => constant("kmeans", "seed", a)?.unwrap_or(0) as u64,
            None => 0,
        };
        let rows = vectors("kmeans", &values[0])?;
        let points: Vec<&[f32]> = rows.iter().flatten().map(Vec::as_slice).collect();
        let labels = cluster(&points, k, seed);
        let mut it = labels.into_iter();
        let ids: Int64Array = rows
            .iter()
            .map(|r| r.as_ref().map(|_| it.next().unwrap_or(0) as i64))
            .collect();
        debug_assert_eq!(ids.len(), num_rows);
        Ok(Arc::new(ids))
    }
}

/// SplitMix64: a tiny generator whose sequence never changes with a dependency's version,
/// so a seed means the same clusters forever.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// k-means++ then Lloyd; returns a label per point, numbered by first appearance.
pub fn cluster(points: &[&[f32]], k: usize, seed: u64) -> Vec<usize> {
    let n = points.len();
    if n == 0 {
        return Vec::new();
    }
    let mut rng = SplitMix(seed);
    let mut centers: Vec<Vec<f32>> = vec![points[(rng.next() % n as u64) as usize].to_vec()];
    let mut nearest: Vec<f32> = points.iter().map(|p| distance2(p, &centers[0])).collect();
    while centers.len() < k {
        let total: f64 = nearest.iter().map(|&d| d as f64).sum();
        if total <= 0.0 {
            break; // every point already sits on a center: fewer distinct points than k
        }
        let mut target = rng.unit() * total;
        let mut pick = n - 1;
        for (i, &d) in nearest.iter().enumerate() {
            target -= d as f64;
            if target < 0.0 {
                pick = i;
                break;
            }
        }
        centers.push(points[pick].to_vec());
        let c = centers.last().expect("just pushed");
        for (i, p) in points.iter().enumerate() {
            nearest[i] = nearest[i].min(distance2(p, c));
        }
    }
    let dim = points[0].len();
    let mut labels = vec![usize::MAX; n];
    for _ in 0..100 {
        let mut changed = false;
        for (i, p) in points.iter().enumerate() {
            let best = (0..centers.len())
                .min_by(|&a, &b| distance2(p, &centers[a]).total_cmp(&distance2(p, &centers[b])))
                .expect("at least one center");
            if labels[i] != best {
                labels[i] = best;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        let mut sums = vec![vec![0f64; dim]; centers.len()];
        let mut counts = vec![0usize; centers.len()];
        for (p, &l) in points.iter().zip(&labels) {
            counts[l] += 1;
            for (s, &x) in sums[l].iter_mut().zip(p.iter()) {
                *s += x as f64;
            }
        }
        for (c, (s, &count)) in centers.iter_mut().zip(sums.iter().zip(&counts)) {
            if count > 0 {
                *c = s.iter().map(|&x| (x / count as f64) as f32).collect();
            }
        }
    }
    // Renumber by first appearance, so ids do not depend on the initialisation order.
    let mut map = vec![usize::MAX; centers.len()];
    let mut next = 0;
    labels
        .into_iter()
        .map(|l| {
            if map[l] == usize::MAX {
                map[l] = next;
                next += 1;
            }
            map[l]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::cluster;

    #[test]
    fn separates_obvious_groups_and_handles_small_inputs() {
        let pts: Vec<Vec<f32>> = vec![
            vec![0.0, 0.0],
            vec![10.0, 10.0],
            vec![0.1, 0.0],
            vec![10.0, 10.1],
        ];
        let refs: Vec<&[f32]> = pts.iter().map(Vec::as_slice).collect();
        assert_eq!(cluster(&refs, 2, 7), vec![0, 1, 0, 1]);
        // Same seed, same answer; k larger than the input.
        assert_eq!(cluster(&refs, 2, 7), cluster(&refs, 2, 7));
        assert_eq!(cluster(&refs[..1], 5, 1), vec![0]);
        let same: Vec<&[f32]> = vec![&[1.0], &[1.0], &[1.0]];
        assert_eq!(cluster(&same, 3, 1), vec![0, 0, 0]);
    }
}
