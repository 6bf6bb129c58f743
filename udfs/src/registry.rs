//! The table of every SQL function prefflow adds to DataFusion.

use std::sync::Arc;

use datafusion::logical_expr::{AggregateUDF, ScalarUDF};

/// Scalar functions, by SQL name.
pub fn scalar_functions() -> Vec<Arc<ScalarUDF>> {
    vec![
        Arc::new(ScalarUDF::from(crate::strip_think::StripThink::new())),
        Arc::new(ScalarUDF::from(crate::extract_tag::ExtractTag::new())),
        Arc::new(ScalarUDF::from(crate::extract_boxed::ExtractBoxed::new())),
        Arc::new(ScalarUDF::from(crate::render::Render::new())),
    ]
}

/// Aggregate functions; DataFusion also runs every aggregate as a window function (`OVER`).
pub fn aggregate_functions() -> Vec<Arc<AggregateUDF>> {
    vec![
        Arc::new(AggregateUDF::from(crate::arg_max::arg_max())),
        Arc::new(AggregateUDF::from(crate::arg_min::arg_min())),
    ]
}
