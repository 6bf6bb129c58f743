//! The table of every SQL function prefflow adds to DataFusion.

use std::sync::Arc;

use datafusion::logical_expr::async_udf::AsyncScalarUDF;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};

use crate::common::call_wrapper::ModelCall;
use crate::common::function_args::SharedRegistry;
use crate::common::model_function::ModelFunction;
use crate::models::ModelRegistry;

/// Scalar functions; the model functions run the session's models from `models`.
pub fn scalar_functions(models: &Arc<ModelRegistry>) -> Vec<Arc<ScalarUDF>> {
    fn model<F: ModelFunction + Default>(models: &Arc<ModelRegistry>) -> Arc<ScalarUDF> {
        // Counted, and cached unless the result is cheaper to recompute than to look up.
        let call = ModelCall::new(F::default(), SharedRegistry(Arc::clone(models)));
        Arc::new(AsyncScalarUDF::new(Arc::new(call)).into_scalar_udf())
    }
    let m = || Arc::clone(models);
    vec![
        Arc::new(ScalarUDF::from(crate::strip_think::StripThink::new())),
        Arc::new(ScalarUDF::from(crate::extract_tag::ExtractTag::new())),
        Arc::new(ScalarUDF::from(crate::extract_boxed::ExtractBoxed::new())),
        Arc::new(ScalarUDF::from(crate::render::Render::new())),
        Arc::new(ScalarUDF::from(
            crate::apply_chat_template::ApplyChatTemplate::new(m()),
        )),
        model::<crate::ai_embed::AiEmbed>(models),
        model::<crate::ai_generate::AiGenerate>(models),
        model::<crate::ai_logprob::AiLogprob>(models),
        model::<crate::ai_generate_n::AiGenerateN>(models),
        model::<crate::ai_judge::AiJudge>(models),
        model::<crate::ai_reward::AiReward>(models),
        model::<crate::ai_translate::AiTranslate>(models),
        model::<crate::translate_json::TranslateJson>(models),
        model::<crate::token_count::TokenCount>(models),
    ]
}

/// Aggregate functions; DataFusion also runs every aggregate as a window function (`OVER`).
pub fn aggregate_functions() -> Vec<Arc<AggregateUDF>> {
    vec![
        Arc::new(AggregateUDF::from(crate::arg_max::arg_max())),
        Arc::new(AggregateUDF::from(crate::arg_min::arg_min())),
        // Replaces DataFusion's first_value (same function, a faster grouped accumulator).
        Arc::new(AggregateUDF::from(crate::first_value::first_value())),
        // Replace DataFusion's max / min: the same functions, NaN ignored like NULL (as
        // arg_max / arg_min ignore a NaN key), whatever the row order.
        Arc::new(AggregateUDF::from(crate::min_max::max())),
        Arc::new(AggregateUDF::from(crate::min_max::min())),
    ]
}

/// Window-only functions: they need a whole partition at once.
pub fn window_functions() -> Vec<Arc<WindowUDF>> {
    vec![
        Arc::new(WindowUDF::from(crate::kmeans::KMeans::new())),
        Arc::new(WindowUDF::from(crate::near_duplicate::NearDuplicate::new())),
    ]
}
