-- Unpaired labels for KTO and PMPO: each sampled answer is a desirable or undesirable sample.
--
-- Shows: DESIGN.md pipeline 6. The sampled math answers of data/math_samples.jsonl are
-- labelled by a verifiable reward: the \boxed{} answer after the thinking equals the gold
-- answer (a label a checker can prove is the most reliable one there is). Nothing is paired,
-- so prompts with only right or only wrong answers still contribute. Written twice: in
-- TRL's KTO format (label true / false) and in the PMPO style (label +1 / -1); each card
-- reports the balance of labels.
-- Models: none.
-- Run:   prefflow run queries/kto_labels.sql [--param out_dir=out]

CREATE VIEW labelled AS
SELECT prompt_id,
       question AS prompt,
       strip_think(response) AS completion,
       -- No \boxed{} answer at all is a wrong answer, not a missing label.
       coalesce(extract_boxed(strip_think(response)) = gold, false) AS label
FROM '${data_dir:-data}/math_samples.jsonl';

COPY (SELECT * FROM labelled ORDER BY prompt_id, completion)
TO '${out_dir:-out}/math_kto' STORED AS kto OPTIONS (validation_fraction 0.2);

COPY (SELECT * FROM labelled ORDER BY prompt_id, completion)
TO '${out_dir:-out}/math_pmpo' STORED AS kto OPTIONS (style 'pmpo', file_format 'jsonl');

SELECT label, count(*) AS n FROM '${out_dir:-out}/math_kto/*.parquet' GROUP BY label ORDER BY label;
