-- On-policy rejected: DPO pairs whose rejected side is the current model's own answer.
--
-- Shows: DESIGN.md pipeline 1. Prompts with trusted answers (data/trusted_answers.jsonl) are
-- answered by the policy model; chosen = the trusted answer, rejected = the model's output, so
-- training pushes the model from what it does now toward the reference. Rows where the model
-- already gives the trusted answer word for word make no pair. Sampling is seeded per row, so
-- a rerun reproduces the same rejected answers.
-- Models: SmolLM2-135M-Instruct GGUF (scripts/fetch-models puts it in models/).
-- Run:   prefflow run queries/on_policy_rejected.sql [--param max_tokens=48 --param out_dir=out]

CREATE MODEL IF NOT EXISTS policy FROM '${models_dir:-models}/smollm2-135m-instruct';

CREATE TABLE answered AS
SELECT prompt_id, prompt, answer AS trusted,
       ai_generate('policy', prompt,
                   named_struct('temperature', 0.7, 'top_p', 0.95, 'seed', ${seed:-1},
                                'max_tokens', ${max_tokens:-32})) AS generated
FROM '${data_dir:-data}/trusted_answers.jsonl';

COPY (
  SELECT prompt_id, prompt, trusted AS chosen, generated AS rejected
  FROM answered
  WHERE generated <> trusted
  ORDER BY prompt_id
) TO '${out_dir:-out}/on_policy_dpo.parquet';

SELECT prompt_id, chosen, rejected
FROM '${out_dir:-out}/on_policy_dpo.parquet'
ORDER BY prompt_id;
