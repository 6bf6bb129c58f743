//! `ai_judge(model, question, answer_a, answer_b [, options])`: pairwise LLM-as-judge, asked in
//! both orders.
//!
//! ```sql
//! SELECT ai_judge('judge', question, a, b, named_struct('max_tokens', 128)) AS v FROM pairs;
//! SELECT question, CASE v.winner WHEN 'A' THEN a ELSE b END AS chosen, ... WHERE v.consistent;
//! ```
//!
//! The judge reads the `guide` prompt (answer A shown first) and the `guide_reverse` prompt
//! (the same question with the answers' places swapped), each as a user turn of its chat
//! template, and ends its reply with a verdict `[[A]]`, `[[B]]` or `[[C]]` (a tie). Both
//! prompts of every row go to the model's worker together, so they are decoded in one batch.
//! The result is a struct:
//! - `verdict_ab`: the verdict of the first order, 'A', 'B' or 'tie' (NULL when the reply has
//!   no verdict);
//! - `verdict_ba`: the verdict of the swapped order, mapped back to the original answers (so
//!   'A' still means answer_a);
//! - `consistent`: both verdicts found and equal (position bias shows up as false);
//! - `winner`: the verdict when consistent, 'tie' when the orders disagree, NULL when a verdict
//!   is missing;
//! - `judgement_ab`, `judgement_ba`: the judge's replies, for auditing.
//!
//! Options: the generation options of ai_generate (greedy, 256 tokens by default), plus
//! `template` (a minijinja template over question, answer_a and answer_b, used for both
//! orders with the answers swapped for the second) and `template_reverse` (its own template
//! for the swapped order). NULL question or answer gives NULL.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanBuilder, StringArray, StringBuilder, StructArray,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, Signature, TypeSignature, Volatility};
use minijinja::{Environment, UndefinedBehavior, context};

use crate::common::generate_options::parse_options_with;
use crate::common::model_function::{Call, ModelFunction, Planning};
use crate::common::text::string_arg;
use crate::models::model::Capability;
use crate::models::types::GenerateParams;

/// The `guide` prompt: MT-Bench's pairwise judge instructions, asking for a verdict tag.
pub const GUIDE: &str = "Please act as an impartial judge and evaluate the quality of the two answers to the question below. Choose the answer that follows the question's instructions and answers it better, considering helpfulness, relevance, accuracy and level of detail. Do not let the order in which the answers are shown, or their length, influence your decision. Explain your choice briefly, then give your verdict in exactly this format: [[A]] if answer A is better, [[B]] if answer B is better, [[C]] for a tie.

[Question]
{{ question }}

[The Start of Answer A]
{{ answer_a }}
[The End of Answer A]

[The Start of Answer B]
{{ answer_b }}
[The End of Answer B]";

const OWN_OPTIONS: [&str; 2] = ["template", "template_reverse"];

/// A verdict about the answers as the judge saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    A,
    B,
    Tie,
}

impl Verdict {
    fn swapped(self) -> Self {
        match self {
            Verdict::A => Verdict::B,
            Verdict::B => Verdict::A,
            Verdict::Tie => Verdict::Tie,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::A => "A",
            Verdict::B => "B",
            Verdict::Tie => "tie",
        }
    }
}

/// The verdict of a judge's reply: its last `[[A]]`, `[[B]]`, `[[C]]` (or `[[tie]]`) tag; else
/// a letter standing alone after "verdict:", "the answer is" or "answer", or at the start
/// of the reply (`B`, `(A).`, `A: …`); None when there is none.
pub fn parse_verdict(reply: &str) -> Option<Verdict> {
    let lower = reply.to_lowercase();
    let tags = [
        ("[[a]]", Verdict::A),
        ("[[b]]", Verdict::B),
        ("[[c]]", Verdict::Tie),
        ("[[tie]]", Verdict::Tie),
    ];
    if let Some((_, v)) = tags
        .iter()
        .filter_map(|(tag, v)| lower.rfind(tag).map(|at| (at, *v)))
        .max_by_key(|(at, _)| *at)
    {
        return Some(v);
    }
    // Small judges often answer in words: "The answer is B", "Verdict: A", "A: ...".
    let letter = |rest: &str| -> Option<Verdict> {
        let mut chars = rest.chars();
        let v = match chars.next()? {
            'a' => Verdict::A,
            'b' => Verdict::B,
            'c' => Verdict::Tie,
            _ => return None,
        };
        // The letter must stand alone: "a:" or "b." but not "a good answer".
        match chars.next() {
            None => Some(v),
            Some(c) if c.is_ascii_punctuation() => Some(v),
            Some(' ') if rest[1..].trim_start().starts_with("is better") => Some(v),
            _ => None,
        }
    };
    for phrase in [
        "verdict is ",
        "verdict: ",
        "answer is ",
        "answer: ",
        "answer ",
    ] {
        if let Some(v) = lower
            .match_indices(phrase)
            .filter_map(|(at, _)| {
                letter(lower[at + phrase.len()..].trim_start_matches(['(', '[', '*', '"']))
            })
            .last()
        {
            return Some(v);
        }
    }
    letter(lower.trim().trim_start_matches(['(', '[', '*', '"']))
}

/// The two prompt templates of a call.
struct Templates {
    env: std::sync::Arc<Environment<'static>>,
    reverse_own: bool,
}

impl Templates {
    fn new(own: &[(String, ScalarValue)]) -> Result<Self, String> {
        let text = |key: &str| -> Result<Option<String>, String> {
            match own.iter().find(|(k, _)| k == key) {
                None => Ok(None),
                Some((_, v)) => match v.try_as_str().flatten() {
                    Some(s) => Ok(Some(s.to_string())),
                    None => Err(format!("ai_judge: option {key} must be text, got {v}")),
                },
            }
        };
        let forward = text("template")?.unwrap_or_else(|| GUIDE.to_string());
        let reverse = text("template_reverse")?;
        let mut env = Environment::new();
        // A misspelt variable is an error, not an empty string in the judge's prompt.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        crate::models::template::bound(&mut env);
        env.add_template_owned("guide", forward)
            .map_err(|e| format!("ai_judge: template: {e}"))?;
        let reverse_own = reverse.is_some();
        if let Some(r) = reverse {
            env.add_template_owned("guide_reverse", r)
                .map_err(|e| format!("ai_judge: template_reverse: {e}"))?;
        }
        let t = Self {
            env: std::sync::Arc::new(env),
            reverse_own,
        };
        // Render once now, so a template naming a variable that does not exist fails at once.
        t.render("q", "a", "b", false)?;
        t.render("q", "a", "b", true)?;
        Ok(t)
    }

    /// The prompt of one order; `reverse` shows answer_b in A's place.
    fn render(&self, question: &str, a: &str, b: &str, reverse: bool) -> Result<String, String> {
        let (name, first, second) = match (reverse, self.reverse_own) {
            (false, _) => ("guide", a, b),
            (true, true) => ("guide_reverse", a, b),
            (true, false) => ("guide", b, a),
        };
        crate::models::template::render(
            &self.env,
            name,
            context! { question => question, answer_a => first, answer_b => second },
        )
        .map_err(|e| format!("ai_judge: {name} template: {e}"))
    }
}

fn options(args: Option<&ScalarValue>) -> Result<(GenerateParams, Templates), String> {
    let (o, own) = parse_options_with("ai_judge", args, &OWN_OPTIONS)?;
    Ok((o, Templates::new(&own)?))
}

fn result_fields() -> Fields {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    Fields::from(vec![
        text("winner"),
        Field::new("consistent", DataType::Boolean, true),
        text("verdict_ab"),
        text("verdict_ba"),
        text("judgement_ab"),
        text("judgement_ba"),
    ])
}

/// The `ai_judge` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AiJudge {
    signature: Signature,
}

impl Default for AiJudge {
    fn default() -> Self {
        Self {
            signature: Signature::one_of(
                vec![TypeSignature::Any(4), TypeSignature::Any(5)],
                Volatility::Volatile,
            ),
        }
    }
}

#[async_trait::async_trait]
impl ModelFunction for AiJudge {
    const NAME: &'static str = "ai_judge";
    const NEEDS: Option<Capability> = Some(Capability::Generate);

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn plan(&self, call: &Planning<'_>) -> Result<DataType> {
        let args = call.args;
        call.text_args(&[(1, "question"), (2, "answer_a"), (3, "answer_b")])?;
        if let Some(f) = args.arg_fields.get(4)
            && !matches!(f.data_type(), DataType::Struct(_))
        {
            return plan_err!(
                "ai_judge: options must be a struct such as named_struct('max_tokens', 128), got {}",
                f.data_type()
            );
        }
        if let Some(Some(o)) = args.scalar_arguments.get(4) {
            options(Some(o)).map_err(DataFusionError::Plan)?;
        }
        Ok(DataType::Struct(result_fields()))
    }

    async fn run(&self, call: &Call<'_>) -> Result<ArrayRef> {
        let name = Self::NAME;
        let args = call.args;
        let rows = args.number_rows;
        let (gen_options, templates) = match args.args.get(4) {
            Some(ColumnarValue::Scalar(s)) => options(Some(s)),
            Some(_) => return exec_err!("ai_judge: options must be a literal"),
            None => options(None),
        }
        .map_err(DataFusionError::Execution)?;
        let question = string_arg(&args.args[1], rows)?;
        let a = string_arg(&args.args[2], rows)?;
        let b = string_arg(&args.args[3], rows)?;
        let present = |i: usize| !(question.is_null(i) || a.is_null(i) || b.is_null(i));
        // Rows 0..n are the first order, n..2n the swapped one: one call, one batch.
        let mut prompts: Vec<Option<String>> = Vec::with_capacity(2 * rows);
        for reverse in [false, true] {
            for i in 0..rows {
                prompts.push(if present(i) {
                    Some(
                        templates
                            .render(question.value(i), a.value(i), b.value(i), reverse)
                            .map_err(DataFusionError::Execution)?,
                    )
                } else {
                    None
                });
            }
        }
        let prompts = StringArray::from(prompts);
        // Under on_error 'record', both orders' requests belong to their row.
        crate::models::row_errors::map_rows((0..2 * rows).map(|i| i % rows).collect());
        let replies = call.generate(name, &prompts, &gen_options, 1).await?;
        let reply = |i: usize| replies[i].as_ref().map(|r| r[0].clone());

        let mut winner = StringBuilder::new();
        let mut consistent = BooleanBuilder::new();
        let mut verdict_ab = StringBuilder::new();
        let mut verdict_ba = StringBuilder::new();
        let mut judgement_ab = StringBuilder::new();
        let mut judgement_ba = StringBuilder::new();
        let mut valid = Vec::with_capacity(rows);
        for i in 0..rows {
            let (Some(ab), Some(ba)) = (reply(i), reply(rows + i)) else {
                winner.append_null();
                consistent.append_null();
                verdict_ab.append_null();
                verdict_ba.append_null();
                judgement_ab.append_null();
                judgement_ba.append_null();
                valid.push(false);
                continue;
            };
            let v_ab = parse_verdict(&ab);
            let v_ba = parse_verdict(&ba).map(Verdict::swapped);
            verdict_ab.append_option(v_ab.map(Verdict::as_str));
            verdict_ba.append_option(v_ba.map(Verdict::as_str));
            match (v_ab, v_ba) {
                (Some(x), Some(y)) => {
                    consistent.append_value(x == y);
                    winner.append_value(if x == y { x.as_str() } else { "tie" });
                }
                _ => {
                    consistent.append_value(false);
                    winner.append_null();
                }
            }
            judgement_ab.append_value(ab);
            judgement_ba.append_value(ba);
            valid.push(true);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(winner.finish()),
            Arc::new(consistent.finish()),
            Arc::new(verdict_ab.finish()),
            Arc::new(verdict_ba.finish()),
            Arc::new(judgement_ab.finish()),
            Arc::new(judgement_ba.finish()),
        ];
        let out = StructArray::try_new(result_fields(), columns, Some(NullBuffer::from(valid)))?;
        Ok(Arc::new(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(parse_verdict("A is clearer. [[A]]"), Some(Verdict::A));
        assert_eq!(parse_verdict("Not [[A]] but [[B]]"), Some(Verdict::B));
        assert_eq!(parse_verdict("Equal. [[C]]"), Some(Verdict::Tie));
        assert_eq!(parse_verdict("[[Tie]]"), Some(Verdict::Tie));
        assert_eq!(parse_verdict(" (B). "), Some(Verdict::B));
        assert_eq!(parse_verdict("B"), Some(Verdict::B));
        assert_eq!(parse_verdict("The answer is B: Berlin"), Some(Verdict::B));
        assert_eq!(parse_verdict("A: 2+2"), Some(Verdict::A));
        assert_eq!(parse_verdict("Answer A is better."), Some(Verdict::A));
        assert_eq!(parse_verdict("Verdict: (C)"), Some(Verdict::Tie));
        assert_eq!(parse_verdict("A good answer"), None);
        assert_eq!(parse_verdict("The answer is correct."), None);
        assert_eq!(parse_verdict(""), None);
        assert_eq!(Verdict::A.swapped(), Verdict::B);
    }

    #[test]
    fn orders_swap_the_answers() {
        let t = Templates::new(&[(
            "template".into(),
            ScalarValue::from("{{ question }}|{{ answer_a }}|{{ answer_b }}"),
        )])
        .unwrap();
        assert_eq!(t.render("q", "x", "y", false).unwrap(), "q|x|y");
        assert_eq!(t.render("q", "x", "y", true).unwrap(), "q|y|x");
        let bad = Templates::new(&[("template".into(), ScalarValue::from("{{ answer }}"))]);
        assert!(bad.err().unwrap().contains("ai_judge"));
    }
}
