-- Benchmark query for scripts/bench-generate: greedy answers to every prompt of ${input} with
-- SmolLM2-135M-Instruct, ${max_tokens} new tokens at most, written to ${output}.
-- Run: scripts/bench-generate (it makes the input and runs transformers beside it).

SET prefflow.threads = ${threads:-2};
SET prefflow.decode_batch = ${batch:-16};
CREATE MODEL policy FROM '${models_dir:-models}/smollm2-135m-instruct' OPTIONS (dtype '${dtype:-quantized}');
COPY (
  SELECT id, ai_generate('policy', prompt, named_struct('max_tokens', ${max_tokens:-128})) AS answer
  FROM '${input}'
) TO '${output}';
