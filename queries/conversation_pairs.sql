-- Conversation trees -> seq2seq (input, output) pairs.
--
-- Shows: OpenAssistant-style message trees (message_id, parent_id, role, text) walked with
-- WITH RECURSIVE. Every assistant message becomes one pair: input is the whole conversation
-- above it (each turn tagged <|prompter|> or <|assistant|>), output is the reply itself.
-- Sibling replies (several answers to one prompt) each give their own pair.
-- Models: none.
-- Run:   prefflow run queries/conversation_pairs.sql [--param out_dir=out]

CREATE EXTERNAL TABLE messages STORED AS JSONL LOCATION '${data_dir:-data}/oasst_trees.jsonl';

COPY (
  WITH RECURSIVE thread(tree_id, message_id, role, text, depth, context) AS (
      SELECT message_id AS tree_id, message_id, role, text, 0 AS depth, CAST('' AS VARCHAR) AS context
      FROM messages
      WHERE parent_id IS NULL
    UNION ALL
      SELECT t.tree_id, m.message_id, m.role, m.text, t.depth + 1,
             t.context || '<|' || t.role || '|>' || chr(10) || t.text || chr(10)
      FROM messages m
      JOIN thread t ON m.parent_id = t.message_id
  )
  SELECT tree_id, message_id, depth, context AS input, text AS output
  FROM thread
  WHERE role = 'assistant'
  ORDER BY tree_id, depth, message_id
) TO '${out_dir:-out}/conversation_pairs.parquet';

-- Read the result back: one row per tree.
SELECT tree_id, count(*) AS pairs, max(depth) AS deepest_reply
FROM '${out_dir:-out}/conversation_pairs.parquet'
GROUP BY tree_id
ORDER BY tree_id;
