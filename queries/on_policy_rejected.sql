-- On-policy rejected: DPO pairs whose rejected side is the current model's own answer.
--
-- Shows: DESIGN.md pipeline 1. Prompts with trusted answers (data/trusted_answers.jsonl) are
-- answered by the policy model; chosen = the trusted answer, rejected = the model's output, so
-- training pushes the model from what it does now toward the reference. Rows where the model
-- already gives the trusted answer word for word make no pair. Sampling is seeded per row, so
-- a rerun reproduces the same rejected answers. Pairs stream into the dpo sink as the model
-- answers them.
-- Models: SmolLM2-135M-Instruct GGUF (scripts/fetch-models puts it in models/).
-- Run:   prefflow run queries/on_policy_rejected.sql [--param max_tokens=48 --param out_dir=out]
--        writes out/on_policy_dpo/ (train.parquet and its card).
-- Push:  HF_TOKEN=hf_… prefflow run queries/on_policy_rejected.sql \
--            --param target=hf://datasets/ORG/NAME [--param checkpoint_rows=64]
--        pushes a private dataset, one commit every checkpoint_rows pairs as the model answers;
--        killed and run again, it skips the pairs already pushed (their answers come from the
--        result cache) and carries on; run again when finished, it commits nothing.

CREATE MODEL IF NOT EXISTS policy FROM '${models_dir:-models}/smollm2-135m-instruct';

COPY (
  SELECT prompt_id, prompt, chosen, rejected
  FROM (
    SELECT prompt_id, prompt, answer AS chosen,
           ai_generate('policy', prompt,
                       named_struct('temperature', 0.7, 'top_p', 0.95, 'seed', ${seed:-1},
                                    'max_tokens', ${max_tokens:-32})) AS rejected
    FROM '${data_dir:-data}/trusted_answers.jsonl'
  )
  WHERE rejected <> chosen
) TO '${target:-${out_dir:-out}/on_policy_dpo}' STORED AS dpo
  OPTIONS (checkpoint_rows ${checkpoint_rows:-64});

-- The pairs, again from the result cache (the same calls, seeded per row).
SELECT prompt_id, chosen, rejected
FROM (
  SELECT prompt_id, answer AS chosen,
         ai_generate('policy', prompt,
                     named_struct('temperature', 0.7, 'top_p', 0.95, 'seed', ${seed:-1},
                                  'max_tokens', ${max_tokens:-32})) AS rejected
  FROM '${data_dir:-data}/trusted_answers.jsonl'
)
WHERE rejected <> chosen
ORDER BY prompt_id;
