-- Best-of-N DPO pairs: N sampled answers per prompt, scored, best and worst paired.
--
-- Shows: DESIGN.md pipeline 2 end to end. The policy samples N answers per prompt with
-- ai_generate_n (one shared prefill, seeded per sample); strip_think removes any thinking;
-- each answer is scored by its embedding similarity (all-MiniLM-L6-v2, cosine) to the
-- prompt's trusted answer in data/trusted_answers.jsonl: with a trusted reference and no
-- reward model for these prompts, closeness in meaning to the reference is the cheapest
-- honest score. Per prompt, chosen = arg_max(answer, score), rejected = arg_min(answer,
-- score). The dpo sink applies the tie and margin rules (equal scores, margins under
-- min_margin and single-answer groups are dropped and counted in the card), splits train /
-- validation by a hash of the prompt and writes README.md beside the Parquet files. The
-- prompts file is declared sorted by prompt_id and the views are not materialised, so the
-- whole pipeline streams: the rows of one prompt arrive together from unnest, and the
-- pairing aggregate runs in sorted mode, holding one prompt at a time (EXPLAIN the COPY's
-- query to see ordering_mode=Sorted; README: streaming pairs).
-- Models: SmolLM2-135M-Instruct GGUF (dequantized to f32: batched prefill) and all-MiniLM-L6-v2.
-- Run:   prefflow run queries/best_of_n.sql [--param n=4 --param max_tokens=24 --param out_dir=out]

CREATE MODEL IF NOT EXISTS policy FROM '${models_dir:-models}/smollm2-135m-instruct' OPTIONS (dtype 'f32');
CREATE MODEL IF NOT EXISTS minilm FROM '${models_dir:-models}/all-minilm-l6-v2';

CREATE EXTERNAL TABLE prompts (prompt_id VARCHAR, prompt VARCHAR, answer VARCHAR)
STORED AS JSONL LOCATION '${data_dir:-data}/trusted_answers.jsonl' WITH ORDER (prompt_id);

CREATE VIEW samples AS
SELECT prompt_id, prompt, answer AS trusted,
       unnest(ai_generate_n('policy', prompt, ${n:-4},
                            named_struct('temperature', 0.9, 'top_p', 0.95, 'seed', ${seed:-1},
                                         'max_tokens', ${max_tokens:-24}))) AS sample
FROM prompts;

CREATE VIEW scored AS
SELECT prompt_id, prompt, strip_think(sample) AS response,
       -- Normalised embeddings: cosine = 1 - distance^2 / 2.
       1 - power(array_distance(ai_embed('minilm', strip_think(sample)), ai_embed('minilm', trusted)), 2) / 2 AS score
FROM samples;

COPY (
  SELECT prompt_id,
         first_value(prompt) AS prompt,
         arg_max(response, score) AS chosen,
         arg_min(response, score) AS rejected,
         max(score) AS score_chosen,
         min(score) AS score_rejected,
         count(score) AS num_responses
  FROM scored
  GROUP BY prompt_id
  ORDER BY prompt_id
) TO '${out_dir:-out}/best_of_n_dpo' STORED AS dpo
  OPTIONS (min_margin ${min_margin:-0.02}, validation_fraction ${validation_fraction:-0.2});

SELECT prompt_id, chosen, rejected, round(score_chosen - score_rejected, 3) AS margin
FROM '${out_dir:-out}/best_of_n_dpo/*.parquet'
ORDER BY prompt_id;
