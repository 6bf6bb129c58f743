//! The table of every SQL function prefflow adds to DataFusion.

use std::sync::Arc;

use datafusion::logical_expr::async_udf::AsyncScalarUDF;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};

use crate::models::ModelRegistry;

/// Scalar functions; the model functions run the session's models from `models`.
pub fn scalar_functions(models: &Arc<ModelRegistry>) -> Vec<Arc<ScalarUDF>> {
    let model = |f: Arc<dyn datafusion::logical_expr::async_udf::AsyncScalarUDFImpl>| {
        Arc::new(AsyncScalarUDF::new(f).into_scalar_udf())
    };
    vec![
        Arc::new(ScalarUDF::from(crate::strip_think::StripThink::new())),
        Arc::new(ScalarUDF::from(crate::extract_tag::ExtractTag::new())),
        Arc::new(ScalarUDF::from(crate::extract_boxed::ExtractBoxed::new())),
        Arc::new(ScalarUDF::from(crate::render::Render::new())),
        Arc::new(ScalarUDF::from(
            crate::apply_chat_template::ApplyChatTemplate::new(Arc::clone(models)),
        )),
        model(Arc::new(crate::ai_embed::AiEmbed::new(Arc::clone(models)))),
        model(Arc::new(crate::ai_generate::AiGenerate::new(Arc::clone(
            models,
        )))),
        model(Arc::new(crate::ai_logprob::AiLogprob::new(Arc::clone(
            models,
        )))),
        model(Arc::new(crate::ai_generate_n::AiGenerateN::new(
            Arc::clone(models),
        ))),
        model(Arc::new(crate::ai_judge::AiJudge::new(Arc::clone(models)))),
        model(Arc::new(crate::ai_reward::AiReward::new(Arc::clone(
            models,
        )))),
        model(Arc::new(crate::token_count::TokenCount::new(Arc::clone(
            models,
        )))),
    ]
}

/// Aggregate functions; DataFusion also runs every aggregate as a window function (`OVER`).
pub fn aggregate_functions() -> Vec<Arc<AggregateUDF>> {
    vec![
        Arc::new(AggregateUDF::from(crate::arg_max::arg_max())),
        Arc::new(AggregateUDF::from(crate::arg_min::arg_min())),
    ]
}

/// Window-only functions: they need a whole partition at once.
pub fn window_functions() -> Vec<Arc<WindowUDF>> {
    vec![
        Arc::new(WindowUDF::from(crate::kmeans::KMeans::new())),
        Arc::new(WindowUDF::from(crate::near_duplicate::NearDuplicate::new())),
    ]
}
