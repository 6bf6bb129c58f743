-- Verifiable-reward DPO pairs from sampled math answers (no model needed).
--
-- Shows: the text functions on a best-of-N set. Each sampled response is scored by whether
-- the \boxed{} answer after its thinking equals the gold answer (a verifiable reward, the
-- score RL-from-verifier pipelines use); a shorter correct answer beats a longer one. Per
-- prompt, chosen = arg_max(response, score) and rejected = arg_min(response, score); prompts
-- whose answers all score the same (all right or all wrong) make no pair and are dropped.
-- Models: none (the responses in data/math_samples.jsonl were sampled beforehand).
-- Run:   prefflow run queries/math_pairs.sql [--param out_dir=out]

CREATE VIEW scored AS
SELECT prompt_id,
       render('Solve the problem and put the final answer in \boxed{}.' || chr(10) || '{{ question }}',
              named_struct('question', question)) AS prompt,
       strip_think(response) AS response,
       CASE WHEN extract_boxed(strip_think(response)) = gold THEN 1.0 ELSE 0.0 END
         - length(strip_think(response)) / 1e6 AS score
FROM '${data_dir:-data}/math_samples.jsonl';

COPY (
  SELECT prompt_id,
         first_value(prompt) AS prompt,
         arg_max(response, score) AS chosen,
         arg_min(response, score) AS rejected,
         max(score) AS score_chosen,
         min(score) AS score_rejected
  FROM scored
  GROUP BY prompt_id
  HAVING max(score) - min(score) >= 0.5
  ORDER BY prompt_id
) TO '${out_dir:-out}/math_dpo.parquet';

SELECT prompt_id, chosen, rejected, round(score_chosen - score_rejected, 3) AS margin
FROM '${out_dir:-out}/math_dpo.parquet'
ORDER BY prompt_id;
