//! One source for the SQL functions' documentation: each function's `documentation()` (what
//! `SHOW FUNCTIONS` and information_schema show) comes from this table, and a test checks that
//! the README's function reference is exactly this table.

use std::collections::HashMap;
use std::sync::OnceLock;

use datafusion::logical_expr::{DocSection, Documentation};

/// (name, syntax, returns, notes), as the README's function reference shows them.
pub const FUNCTIONS: &[(&str, &str, &str, &str)] = &[
    (
        "strip_think",
        r#"`strip_think(text)`"#,
        r#"Utf8"#,
        r#"removes `<think>…</think>` blocks; everything up to the last stray `</think>` goes; an unclosed `<think>` drops what follows; trimmed"#,
    ),
    (
        "extract_tag",
        r#"`extract_tag(text, tag)`"#,
        r#"Utf8"#,
        r#"trimmed content of the first complete `<tag>…</tag>`; NULL if none"#,
    ),
    (
        "extract_boxed",
        r#"`extract_boxed(text)`"#,
        r#"Utf8"#,
        r#"content of the last balanced `\boxed{…}` (or `\fbox{…}`), nested braces handled; NULL if none"#,
    ),
    (
        "render",
        r#"`render(template, struct)`"#,
        r#"Utf8"#,
        r#"minijinja (Jinja2) template; the struct's fields are the variables; undefined variables are errors; every template render (also chat templates, judge and translation prompts) stops with an error after 5,000,000 steps, 16 MiB of output or 256 MiB of memory held (a value that grows in a loop)"#,
    ),
    (
        "arg_max",
        r#"`arg_max(value, key)`, alias `max_by`"#,
        r#"type of value"#,
        r#"value at the largest key (NULL and NaN keys ignored); aggregate or window (`OVER (PARTITION BY …)`)"#,
    ),
    (
        "arg_min",
        r#"`arg_min(value, key)`, alias `min_by`"#,
        r#"type of value"#,
        r#"value at the smallest key (NULL and NaN keys ignored); aggregate or window"#,
    ),
    (
        "ai_embed",
        r#"`ai_embed(model, text [, options])`"#,
        r#"FixedSizeList<Float32>"#,
        r#"sentence embedding; pooling and normalisation as the model's sentence-transformers config says; options `prompt_name` (a prompt of its config_sentence_transformers.json, e.g. Qwen3-Embedding's 'query') or `prompt` (the text put before each sentence)"#,
    ),
    (
        "ai_reward",
        r#"`ai_reward(model, prompt, response)`"#,
        r#"Float64"#,
        r#"score of a sequence-classification reward model: its single label, or `OPTIONS (label '...')`; a remote model scores on the server (`/pooling`)"#,
    ),
    (
        "ai_generate",
        r#"`ai_generate(model, prompt [, options])`"#,
        r#"Utf8"#,
        r#"prompt is text (a user turn) or a list of `{role, content}`; chat-templated unless `chat` false (raw completion; BOS added where the model wants it); options `named_struct(...)` with temperature (0 = greedy, default), top_p, top_k, max_tokens (256), stop, seed, chat, truncate; per-row seeds from (prompt, sample index, seed); stops at EOS / end-of-turn / generation_config stop tokens, max_tokens or as soon as a stop string appears (decoding stops there; an empty stop string is an error); a prompt over the model's context is an error naming the row by its text, or with truncate true keeps its last tokens (and BOS) so that prompt and max_tokens fit (max_tokens at or above the context is then an error)"#,
    ),
    (
        "ai_generate_n",
        r#"`ai_generate_n(model, prompt, n [, options])`"#,
        r#"List<Utf8>"#,
        r#"n samples sharing one prefill; sample k seeded from (prompt, k, seed); `unnest` gives rows"#,
    ),
    (
        "ai_logprob",
        r#"`ai_logprob(model, prompt, response)`"#,
        r#"Float64"#,
        r#"sum of the response tokens' log-probabilities after the chat-templated prompt (prompt and response tokenized separately); a remote model is tokenized and scored on the server (`/tokenize`, `/v1/completions` with echo)"#,
    ),
    (
        "ai_judge",
        r#"`ai_judge(model, question, answer_a, answer_b [, options])`"#,
        r#"Struct {winner, consistent, verdict_ab, verdict_ba, judgement_ab, judgement_ba}"#,
        r#"asks the judge twice, answers in both places (the `guide` prompt and `guide_reverse`, the same with the answers swapped; both decoded in one batch); verdicts `[[A]]` / `[[B]]` / `[[C]]` (tie), also "the answer is B", "A: …"; verdict_ba is mapped back to the original answers; consistent = both found and equal; winner = the agreed verdict, 'tie' when the orders disagree, NULL when a verdict is missing; options: ai_generate's, plus `template` (minijinja over question, answer_a, answer_b) and `template_reverse`"#,
    ),
    (
        "ai_translate",
        r#"`ai_translate(model, text, target_lang [, source_lang [, options]])`"#,
        r#"Utf8"#,
        r#"translation by a Marian model, or by a decoder LLM (local or remote) through a prompt (a minijinja template over `text`, `target_lang`, `source_lang`; override with the `prompt` option) sent as a user turn; ai_generate's options, greedy by default; reply trimmed"#,
    ),
    (
        "translate_json",
        r#"`translate_json(model, json_text, target_lang [, options])`"#,
        r#"Utf8"#,
        r#"the JSON document with every string value that reads as language (a letter, and a space or a non-ASCII letter; codes such as `zh-forum` or `celsius` stay) translated (as ai_translate; each distinct string once per batch); `named_struct('keys', ['instruction', 'input'])` translates only what is under those keys, at any depth; keys, key order, numbers, booleans, nulls and nesting kept; text that is not JSON is an error naming the row"#,
    ),
    (
        "apply_chat_template",
        r#"`apply_chat_template(model_or_template, messages [, add_generation_prompt])`"#,
        r#"Utf8"#,
        r#"a conversation (list of `{role, content}`, or text as one user turn) rendered with a model's chat template or a template given as text; Hugging Face compatible (`raise_exception`, `strftime_now`, `tojson`, loop controls, Python string methods); add_generation_prompt defaults to false"#,
    ),
    (
        "token_count",
        r#"`token_count(model, text)`"#,
        r#"Int64"#,
        r#"the text's own tokens (no special tokens, no template, no truncation); a remote model counts with the server's `/tokenize`"#,
    ),
    (
        "kmeans",
        r#"`kmeans(embedding, k [, seed]) OVER (…)`"#,
        r#"Int64"#,
        r#"cluster id; k-means++ with a seeded generator, ids by first appearance in window order"#,
    ),
    (
        "near_duplicate",
        r#"`near_duplicate(embedding, threshold) OVER (… ORDER BY …)`"#,
        r#"Boolean"#,
        r#"true when cosine to an earlier kept row ≥ threshold"#,
    ),
];

const SECTION: DocSection = DocSection {
    include: true,
    label: "prefflow",
    description: Some("prefflow's functions for building LLM training data"),
};

/// The documentation of the function (or alias) `name`.
pub fn documentation(name: &str) -> Option<&'static Documentation> {
    static DOCS: OnceLock<HashMap<&'static str, Documentation>> = OnceLock::new();
    let docs = DOCS.get_or_init(|| {
        FUNCTIONS
            .iter()
            .map(|(name, syntax, returns, notes)| {
                let plain = |s: &str| s.replace('`', "");
                let doc = Documentation::builder(
                    SECTION,
                    format!("Returns {}: {}", plain(returns), plain(notes)),
                    plain(syntax),
                )
                .build();
                (*name, doc)
            })
            .collect()
    });
    let name = match name {
        "max_by" => "arg_max",
        "min_by" => "arg_min",
        other => other,
    };
    docs.get(name)
}

/// The README's function reference table, as this module says it should read.
pub fn readme_table() -> String {
    let mut out = String::from("| function | returns | notes |\n|---|---|---|\n");
    for (_, syntax, returns, notes) in FUNCTIONS {
        out.push_str(&format!("| {syntax} | {returns} | {notes} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_function_reference_is_this_table() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        let expected = readme_table();
        assert!(
            readme.contains(&expected),
            "README.md's function reference differs from udfs/src/docs.rs; it should read:\n{expected}"
        );
    }

    #[test]
    fn every_function_is_documented() {
        // DataFusion 55's AsyncScalarUDF wrapper does not forward `documentation()`, so the
        // model functions' docs are checked by name here (their ModelCall wrappers return them).
        let registry = std::sync::Arc::new(crate::models::ModelRegistry::new());
        let mut names: Vec<String> = crate::scalar_functions(&registry)
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        names.extend(
            crate::aggregate_functions()
                .iter()
                // DataFusion's own first_value, max and min (prefflow replaces only their
                // accumulators) keep DataFusion's documentation.
                .filter(|f| !["first_value", "max", "min"].contains(&f.name()))
                .map(|f| f.name().to_string()),
        );
        names.extend(
            crate::window_functions()
                .iter()
                .map(|f| f.name().to_string()),
        );
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| documentation(n).is_none())
            .collect();
        assert!(missing.is_empty(), "undocumented: {missing:?}");
        let synchronous = crate::scalar_functions(&registry)
            .into_iter()
            .filter(|f| f.as_async().is_none())
            .all(|f| f.documentation().is_some());
        assert!(
            synchronous,
            "a synchronous function does not return its documentation"
        );
    }
}
