-- LLM-as-judge pairs: a judge compares two answers in both orders; agreed verdicts make pairs.
--
-- Shows: DESIGN.md pipeline 5. For each prompt of data/trusted_answers.jsonl the policy
-- writes an answer; ai_judge asks the judge model which of (trusted answer, policy answer) is
-- better twice, with the answers' places swapped (guide / guide_reverse), and parses each
-- verdict. Only consistent verdicts (both orders agree) become pairs: a small judge has a
-- strong position bias, and the card counts the pairs dropped for it. The score is the
-- judge's verdict itself (score_chosen 1, score_rejected 0), so ties and inconsistent
-- verdicts drop as ties. Written conversational (prompt and answers as {role, content}).
-- Here the judge is SmolLM2-135M-Instruct with a short prompt asking for one letter: the
-- plumbing is the point; use a strong judge (CREATE MODEL judge FROM ...) for real data.
-- Models: SmolLM2-135M-Instruct GGUF (f32) as policy and judge.
-- Run:   prefflow run queries/judge_pairs.sql [--param out_dir=out]

CREATE MODEL IF NOT EXISTS judge FROM '${models_dir:-models}/smollm2-135m-instruct' OPTIONS (dtype 'f32');

CREATE TABLE candidates AS
SELECT prompt_id, prompt, answer AS a,
       ai_generate('judge', prompt, named_struct('temperature', 0.9, 'seed', ${seed:-3}, 'max_tokens', 24)) AS b
FROM '${data_dir:-data}/trusted_answers.jsonl';

CREATE TABLE judged AS
SELECT prompt_id, prompt, a, b,
       ai_judge('judge', prompt, a, b, named_struct(
         'max_tokens', 6,
         'template', 'Question: {{ question }}' || chr(10) || 'Answer A: {{ answer_a }}' || chr(10) ||
                     'Answer B: {{ answer_b }}' || chr(10) ||
                     'Which answer is correct? Reply with only the letter A or B.')) AS verdict
FROM candidates;

COPY (
  SELECT prompt_id, prompt,
         CASE verdict.winner WHEN 'A' THEN a WHEN 'B' THEN b ELSE a END AS chosen,
         CASE verdict.winner WHEN 'A' THEN b WHEN 'B' THEN a ELSE b END AS rejected,
         CASE WHEN verdict.winner IN ('A', 'B') THEN 1.0 ELSE 0.0 END AS score_chosen,
         0.0 AS score_rejected
  FROM judged
  ORDER BY prompt_id
) TO '${out_dir:-out}/judge_dpo' STORED AS dpo OPTIONS (style 'conversational');

SELECT prompt_id, verdict.verdict_ab AS verdict_ab, verdict.verdict_ba AS verdict_ba,
       verdict.consistent AS consistent, verdict.winner AS winner, verdict.judgement_ab AS judgement_ab, verdict.judgement_ba AS judgement_ba
FROM judged
ORDER BY prompt_id;
