-- Benchmark query for scripts/bench-embed: embeds every sentence of ${input} with
-- all-MiniLM-L6-v2 and writes the vectors to ${output}.
-- Run: scripts/bench-embed (it makes the input and runs sentence-transformers beside it).

SET prefflow.threads = ${threads:-2};
CREATE MODEL minilm FROM '${models_dir:-models}/all-minilm-l6-v2';
COPY (SELECT id, ai_embed('minilm', text) AS embedding FROM '${input}') TO '${output}';
