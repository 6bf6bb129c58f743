-- Translate prompts: Chinese instruction records (JSON documents with nested fields, numbers
-- and tool-call arguments, data/prompts_zh.jsonl) into English with translate_json.
--
-- Shows: DESIGN.md's translate stage. translate_json translates only the string values that
-- read as language (codes such as "zh-forum" or "celsius" stay); keys, key order, numbers,
-- lists and nesting stay as they were, so the records still parse and keep their schema. Each distinct string is translated once per
-- batch, and results are cached like every model call. The demo uses the bundled
-- SmolLM2-135M-Instruct through a translation prompt; a 135M model translates Chinese poorly, so
-- for real data declare a Marian model (CREATE MODEL zh_en FROM 'hf://Helsinki-NLP/opus-mt-zh-en'
-- with a tokenizer.json) or a served one (CREATE MODEL big FROM 'openai://HOST:PORT/v1/MODEL').
-- Models: SmolLM2-135M-Instruct GGUF (scripts/fetch-models puts it in models/).
-- Run:   prefflow run queries/translate_prompts.sql [--param out_dir=out --param max_tokens=32]

CREATE MODEL IF NOT EXISTS translator
  FROM '${models_dir:-models}/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf'
  OPTIONS (dtype 'f32');

COPY (
  SELECT id,
         record AS original,
         translate_json('translator', record, 'English',
                        named_struct('max_tokens', ${max_tokens:-32})) AS translated
  FROM '${data_dir:-data}/prompts_zh.jsonl'
  ORDER BY id
) TO '${out_dir:-out}/prompts_en.parquet';

SELECT id, translated
FROM '${out_dir:-out}/prompts_en.parquet'
ORDER BY id;
