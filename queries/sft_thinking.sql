-- SFT distillation with and without thinking, through a "zero" prompted chat template.
--
-- Shows: DESIGN.md pipeline 3. The same model is declared twice: as itself, and as a "zero"
-- variant whose chat template (CREATE MODEL OPTIONS (chat_template ...)) asks it to think inside
-- <think></think> and answer inside <response></response>. Its outputs become two SFT sets in
-- the conversational messages format (STORED AS sft, each with a dataset card): one whose
-- assistant turn keeps the thinking, and one with only the answer (extract_tag, falling back
-- to strip_think when the model skipped the tags), the second also as ShareGPT. A small demo
-- model follows the format loosely; with a strong teacher the same query distils real
-- reasoning traces.
-- Models: SmolLM2-135M-Instruct GGUF (scripts/fetch-models puts it in models/).
-- Run:   prefflow run queries/sft_thinking.sql [--param max_tokens=48 --param out_dir=out]

CREATE MODEL IF NOT EXISTS teacher_zero FROM '${models_dir:-models}/smollm2-135m-instruct'
OPTIONS (chat_template '<|im_start|>system
Think about the question step by step inside <think> </think>, then give the final answer inside <response> </response>.<|im_end|>
{% for m in messages %}<|im_start|>{{ m[''role''] }}
{{ m[''content''] }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}');

CREATE TABLE distilled AS
SELECT prompt_id, prompt,
       ai_generate('teacher_zero', prompt, named_struct('max_tokens', ${max_tokens:-48})) AS output
FROM '${data_dir:-data}/trusted_answers.jsonl';

COPY (
  SELECT prompt_id,
         [named_struct('role', 'user', 'content', prompt),
          named_struct('role', 'assistant', 'content', output)] AS messages
  FROM distilled ORDER BY prompt_id
) TO '${out_dir:-out}/sft_with_thinking' STORED AS sft;

COPY (
  SELECT prompt_id,
         [named_struct('role', 'user', 'content', prompt),
          named_struct('role', 'assistant', 'content',
                       coalesce(extract_tag(output, 'response'), strip_think(output)))] AS messages
  FROM distilled
  -- An answer cut off inside its thinking has nothing to learn from.
  WHERE coalesce(extract_tag(output, 'response'), strip_think(output)) <> ''
  ORDER BY prompt_id
) TO '${out_dir:-out}/sft_without_thinking' STORED AS sft;

-- The same answers for ShareGPT-format trainers (LLaMA-Factory, Axolotl).
COPY (
  SELECT prompt_id, prompt, coalesce(extract_tag(output, 'response'), strip_think(output)) AS completion
  FROM distilled
  WHERE coalesce(extract_tag(output, 'response'), strip_think(output)) <> ''
  ORDER BY prompt_id
) TO '${out_dir:-out}/sft_without_thinking_sharegpt' STORED AS sharegpt;

SELECT w.prompt_id,
       length(w.messages[2]['content']) AS with_thinking_chars,
       length(o.messages[2]['content']) AS answer_chars
FROM '${out_dir:-out}/sft_with_thinking/train.parquet' w
JOIN '${out_dir:-out}/sft_without_thinking/train.parquet' o ON w.prompt_id = o.prompt_id
ORDER BY w.prompt_id;
