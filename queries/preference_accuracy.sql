-- Preference accuracy: how often a model already prefers chosen over rejected.
--
-- Shows: DESIGN.md pipeline 5's last step (the "alignment accuracy" of a model on a DPO set):
-- the share of pairs where ai_logprob(model, prompt, chosen) > ai_logprob(model, prompt,
-- rejected). The pairs are the verifiable-reward math pairs (chosen: right and shorter,
-- rejected: wrong; no model was used to pick them), so the log-probabilities, the score under
-- test, are independent of how the pairs were made. Run it before and after training to see
-- what DPO changed; a per-pair margin is kept for inspection.
-- Models: SmolLM2-135M-Instruct GGUF (f32).
-- Run:   prefflow run queries/preference_accuracy.sql

CREATE MODEL IF NOT EXISTS policy FROM '${models_dir:-models}/smollm2-135m-instruct' OPTIONS (dtype 'f32');

CREATE TABLE pairs AS
SELECT prompt_id,
       first_value(question) AS prompt,
       arg_max(strip_think(response), CASE WHEN extract_boxed(strip_think(response)) = gold THEN 1 ELSE 0 END) AS chosen,
       arg_min(strip_think(response), CASE WHEN extract_boxed(strip_think(response)) = gold THEN 1 ELSE 0 END) AS rejected
FROM '${data_dir:-data}/math_samples.jsonl'
GROUP BY prompt_id
HAVING max(CASE WHEN extract_boxed(strip_think(response)) = gold THEN 1 ELSE 0 END)
     > min(CASE WHEN extract_boxed(strip_think(response)) = gold THEN 1 ELSE 0 END);

CREATE TABLE margins AS
SELECT prompt_id,
       ai_logprob('policy', prompt, chosen) - ai_logprob('policy', prompt, rejected) AS margin
FROM pairs;

SELECT count(*) AS pairs,
       avg(CASE WHEN margin > 0 THEN 1.0 ELSE 0.0 END) AS preference_accuracy,
       avg(margin) AS mean_logprob_margin
FROM margins;
