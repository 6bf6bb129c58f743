//! `arg_min(value, key)` (alias `min_by`): the `value` of the row with the smallest `key`.
//!
//! ```sql
//! SELECT prompt, arg_min(response, score) AS rejected FROM scored GROUP BY prompt;
//! ```
//!
//! Same rules as [`crate::arg_max`]: NULL keys ignored, ties go to the smallest value. Both
//! share one implementation, [`ArgBest`], which lives in arg_max.rs.

use crate::arg_max::{ArgBest, Direction};

/// The `arg_min` SQL aggregate (alias `min_by`).
pub fn arg_min() -> ArgBest {
    ArgBest::new("arg_min", "min_by", Direction::Min)
}
