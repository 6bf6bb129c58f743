-- Data selection: embed, cluster per domain, sample per cluster, drop near duplicates,
-- build few-shot prompts, keep a token budget.
--
-- Shows: DESIGN.md pipeline 4 on two bundled domains of questions (math and code). Each
-- question is embedded with all-MiniLM-L6-v2; questions over the token budget are dropped;
-- near duplicates (cosine >= 0.9 to an earlier kept question of the same domain) are dropped;
-- k-means (seeded) clusters each domain and the first n questions of every cluster are kept,
-- so the selection covers the domain's topics instead of its most common one. Each selected
-- question becomes a few-shot prompt whose shots are other selected questions of its domain.
-- Models: all-MiniLM-L6-v2 (scripts/fetch-models puts it in models/).
-- Run:   prefflow run queries/data_selection.sql [--param k=3 --param per_cluster=2 --param out_dir=out]

CREATE MODEL IF NOT EXISTS minilm FROM '${models_dir:-models}/all-minilm-l6-v2';

CREATE VIEW questions AS
  SELECT 'math' AS domain, id, question, answer FROM '${data_dir:-data}/questions_math.jsonl'
  UNION ALL
  SELECT 'code' AS domain, id, question, answer FROM '${data_dir:-data}/questions_code.jsonl';

-- Embed once; the window functions below read the stored vectors.
CREATE TABLE embedded AS
SELECT domain, id, question, answer, ai_embed('minilm', question) AS embedding
FROM questions
WHERE token_count('minilm', question) <= ${max_tokens:-64};

CREATE TABLE clustered AS
SELECT domain, id, question, answer,
       near_duplicate(embedding, ${dup_threshold:-0.9}) OVER (PARTITION BY domain ORDER BY id) AS duplicate,
       kmeans(embedding, ${k:-3}, 42) OVER (PARTITION BY domain ORDER BY id) AS cluster
FROM embedded;

CREATE TABLE selected AS
SELECT * FROM (
  SELECT *, row_number() OVER (PARTITION BY domain, cluster ORDER BY id) AS rank_in_cluster
  FROM clustered
  WHERE NOT duplicate
) WHERE rank_in_cluster <= ${per_cluster:-2};

COPY (
  SELECT s.domain, s.id, s.cluster,
         render('{% for shot in shots if shot.q != q %}{% if loop.index <= 2 %}Q: {{ shot.q }}' || chr(10) ||
                'A: {{ shot.a }}' || chr(10) || chr(10) || '{% endif %}{% endfor %}Q: {{ q }}' || chr(10) || 'A:',
                named_struct('shots', p.shots, 'q', s.question)) AS prompt,
         s.answer AS target
  FROM selected s
  JOIN (SELECT domain, array_agg(named_struct('q', question, 'a', answer) ORDER BY id) AS shots
        FROM selected GROUP BY domain) p
    ON s.domain = p.domain
  ORDER BY s.domain, s.id
) TO '${out_dir:-out}/selection_fewshot.parquet';

SELECT domain, count(*) AS selected, count(DISTINCT cluster) AS clusters,
       (SELECT count(*) FROM clustered c WHERE c.domain = f.domain AND c.duplicate) AS duplicates_dropped
FROM '${out_dir:-out}/selection_fewshot.parquet' f
GROUP BY domain
ORDER BY domain;
