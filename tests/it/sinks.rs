//! Training sinks: every format written, read back and checked against TRL's dataset-format
//! rules (tests/it/trl.rs), dataset cards, and atomic folder writes.

use super::trl;

use super::support::{engine, table};

const SETUP: &str = "
CREATE TABLE scored AS SELECT * FROM (VALUES
  ('p1', 'What is 2+2?', 'It is 4.', 1.0), ('p1', 'What is 2+2?', 'It is 5.', 0.2), ('p1', 'What is 2+2?', 'Four.', 0.9),
  ('p2', 'Capital of France?', 'Paris.', 0.5), ('p2', 'Capital of France?', 'Lyon.', 0.5),
  ('p3', 'Color of the sky?', 'Blue.', 0.8), ('p3', 'Color of the sky?', 'Green.', 0.1),
  ('p4', 'Largest planet?', 'Jupiter.', NULL), ('p4', 'Largest planet?', 'Mars.', NULL),
  ('p5', 'Alone?', 'Only.', 0.3)
) v(prompt_id, prompt, response, score)";

const PAIRS: &str =
    "SELECT prompt_id, first_value(prompt) AS prompt, arg_max(response, score) AS chosen,
  arg_min(response, score) AS rejected, max(score) AS score_chosen, min(score) AS score_rejected,
  count(score) AS num_responses FROM scored GROUP BY prompt_id";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_loads_as_trl_expects() {
    let e = engine();
    e.sql(SETUP).await.unwrap();
    e.sql("CREATE MODEL smol FROM 'models/smollm2-135m-instruct'")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let copies = [
        (
            "dpo",
            format!("COPY ({PAIRS}) TO '{d}/dpo' STORED AS dpo OPTIONS (validation_fraction 0.5)"),
        ),
        (
            "dpo",
            format!(
                "COPY ({PAIRS}) TO '{d}/dpo_conv' STORED AS dpo OPTIONS (style 'conversational', file_format 'jsonl')"
            ),
        ),
        (
            "kto",
            format!(
                "COPY (SELECT prompt, response AS completion, score > 0.6 AS label FROM scored) TO '{d}/kto' STORED AS kto"
            ),
        ),
        (
            "kto",
            format!("COPY ({PAIRS}) TO '{d}/kto_unpaired' STORED AS kto OPTIONS (style 'pmpo')"),
        ),
        (
            "sft",
            format!(
                "COPY (SELECT prompt, chosen AS completion FROM ({PAIRS})) TO '{d}/sft' STORED AS sft OPTIONS (style 'messages')"
            ),
        ),
        (
            "sft",
            format!(
                "COPY (SELECT prompt, chosen AS completion FROM ({PAIRS})) TO '{d}/sft_pc' STORED AS sft"
            ),
        ),
        (
            "sharegpt",
            format!(
                "COPY (SELECT prompt, chosen AS completion FROM ({PAIRS})) TO '{d}/sharegpt' STORED AS sharegpt"
            ),
        ),
        (
            "tokenized",
            format!("COPY ({PAIRS}) TO '{d}/tokenized' STORED AS tokenized OPTIONS (model 'smol')"),
        ),
        (
            "tokenized",
            format!(
                "COPY (SELECT prompt, chosen AS completion FROM ({PAIRS})) TO '{d}/tokenized_sft' STORED AS tokenized OPTIONS (model 'smol', validation_fraction 0.3)"
            ),
        ),
    ];
    for (kind, sql) in &copies {
        e.query(sql)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
        let name = sql
            .split(&format!("{d}/"))
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap();
        let rows = trl::check(&e, &dir.path().join(name), kind).await;
        assert!(!rows.is_empty(), "{name} wrote no rows");
    }

    // The card counts the pairing rules' drops and gives margins and lengths.
    let card = std::fs::read_to_string(dir.path().join("dpo/README.md")).unwrap();
    for expected in [
        "| tie (best and worst scores equal) | 1 |",
        "| no scored response (chosen or rejected is NULL) | 1 |",
        "| one response only | 1 |",
        "score_chosen - score_rejected over 2 pairs: min 0.7000, mean 0.7500, max 0.8000.",
        "| chosen |",
        "- validation_fraction: 0.5",
    ] {
        assert!(card.contains(expected), "card lacks {expected:?}:\n{card}");
    }
    // Unpaired from pairs: one desirable and one undesirable row per pair.
    let card = std::fs::read_to_string(dir.path().join("kto_unpaired/README.md")).unwrap();
    assert!(
        card.contains("| 1 | 2 |") && card.contains("| -1 | 2 |"),
        "{card}"
    );
    let card = std::fs::read_to_string(dir.path().join("tokenized/README.md")).unwrap();
    assert!(card.contains("In tokens."), "{card}");
    // Nothing staged is left beside the outputs.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_rows_are_dropped_and_counted() {
    let e = engine();
    e.sql("CREATE MODEL smol FROM 'models/smollm2-135m-instruct'")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("tok");
    e.query(&format!(
        "COPY (SELECT * FROM (VALUES ('Hi', 'Hello.', 'Go away.'), ('Hi', repeat('very long answer ', 40), 'No.')) t(prompt, chosen, rejected))
         TO '{}' STORED AS tokenized OPTIONS (model 'smol', max_length 64)",
        target.display()
    ))
    .await
    .unwrap();
    let rows = trl::check(&e, &target, "tokenized").await;
    assert_eq!(rows.len(), 1);
    let card = std::fs::read_to_string(target.join("README.md")).unwrap();
    assert!(card.contains("| longer than max_length | 1 |"), "{card}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_keeps_the_previous_dataset() {
    let e = engine();
    e.sql(SETUP).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("pairs");
    let copy = |query: &str| format!("COPY ({query}) TO '{}' STORED AS dpo", target.display());
    e.query(&copy(PAIRS)).await.unwrap();
    let before = std::fs::read(target.join("train.parquet")).unwrap();
    let card = std::fs::read_to_string(target.join("README.md")).unwrap();
    // Fails mid-stream, after some rows were converted.
    let bad = "SELECT prompt, chosen, CASE WHEN prompt_id = 'p3' THEN CAST('x' AS INT)::TEXT ELSE rejected END AS rejected FROM (SELECT * FROM scored_pairs)";
    e.sql(&format!("CREATE VIEW scored_pairs AS {PAIRS}"))
        .await
        .unwrap();
    assert!(e.query(&copy(bad)).await.is_err());
    assert_eq!(std::fs::read(target.join("train.parquet")).unwrap(), before);
    assert_eq!(
        std::fs::read_to_string(target.join("README.md")).unwrap(),
        card
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("pairs")]);
}

/// Pairing after a model call streams when the input is declared sorted (clustered by prompt,
/// as `unnest(ai_generate_n(...))` leaves it): the aggregate runs
/// in sorted mode (one prompt's group in memory at a time), not as a hash table of every
/// prompt. scripts/bench-pairing measures the memory this saves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_streams_through_model_calls() {
    let e = engine();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("samples.jsonl");
    std::fs::write(
        &file,
        "{\"prompt_id\": \"a\", \"response\": \"Hi\"}\n{\"prompt_id\": \"a\", \"response\": \"Hi there\"}\n\
         {\"prompt_id\": \"b\", \"response\": \"Yo there\"}\n{\"prompt_id\": \"b\", \"response\": \"Yo\"}\n",
    )
    .unwrap();
    e.sql("CREATE MODEL smol FROM 'models/smollm2-135m-instruct'")
        .await
        .unwrap();
    e.sql(&format!(
        "CREATE EXTERNAL TABLE samples (prompt_id VARCHAR, response VARCHAR) STORED AS JSON LOCATION '{}' WITH ORDER (prompt_id)",
        file.display()
    ))
    .await
    .unwrap();
    let pairing =
        "SELECT prompt_id, arg_max(response, score) AS chosen, arg_min(response, score) AS rejected
        FROM (SELECT prompt_id, response, token_count('smol', response) AS score FROM samples)
        GROUP BY prompt_id";
    let batches = e.query(&format!("EXPLAIN {pairing}")).await.unwrap();
    let plan = table(&batches);
    assert!(plan.contains("ModelCallsExec"), "{plan}");
    let aggregates: Vec<_> = plan
        .lines()
        .filter(|l| l.contains("AggregateExec"))
        .collect();
    assert!(
        !aggregates.is_empty()
            && aggregates
                .iter()
                .all(|l| l.contains("ordering_mode=Sorted")),
        "{plan}"
    );
    let batches = e
        .query(&format!("{pairing} ORDER BY prompt_id"))
        .await
        .unwrap();
    let table = table(&batches);
    assert!(
        table.contains("| a         | Hi there | Hi       |"),
        "{table}"
    );
    assert!(
        table.contains("| b         | Yo there | Yo       |"),
        "{table}"
    );
}

/// A training sink is a DataFusion DataSink: EXPLAIN shows it, and a COPY planned straight on
/// the SessionContext (the DataFrame API, no prefflow::Engine) writes the same dataset with
/// the same protection of folders prefflow did not write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_sinks_are_datafusion_sinks() {
    let e = engine();
    e.sql(SETUP).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let copy = format!("COPY ({PAIRS}) TO '{d}/pairs' STORED AS dpo OPTIONS (min_margin 0.2)");
    let plan = e.query(&format!("EXPLAIN {copy}")).await.unwrap();
    let text = table(&plan);
    assert!(
        text.contains("DataSinkExec: sink=TrainingSink: format=dpo")
            && text.contains("min_margin=0.2"),
        "{text}"
    );
    assert!(!dir.path().join("pairs").exists(), "EXPLAIN wrote output");

    let ctx = e.context();
    let count = ctx.sql(&copy).await.unwrap().collect().await.unwrap();
    let n = count[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::UInt64Array>()
        .unwrap()
        .value(0);
    assert_eq!(n, 2);
    assert!(dir.path().join("pairs/train.parquet").is_file());
    assert!(dir.path().join("pairs/README.md").is_file());

    // A folder prefflow did not write is refused there too, and left as it was.
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep me").unwrap();
    let err = ctx
        .sql(&format!(
            "COPY ({PAIRS}) TO '{}' STORED AS dpo",
            mine.display()
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("notes.txt"), "{err}");
    assert_eq!(
        std::fs::read_to_string(mine.join("notes.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1);
}

/// The card says how the dataset was made: prefflow's version, the statement, each model's
/// address, identity and options, the seeds, and what the model calls did (a second run is
/// all cache hits). No secret: a password in an address is masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cards_carry_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let e = super::support::engine_with(prefflow::SessionOptions {
        target_partitions: Some(2),
        cache_dir: Some(dir.path().join("cache")),
        ..Default::default()
    });
    e.sql("CREATE MODEL smol FROM 'models/smollm2-135m-instruct' OPTIONS (dtype 'f32')")
        .await
        .unwrap();
    let target = dir.path().join("pairs");
    let copy = format!(
        "COPY (SELECT 'Say hi.' AS prompt, 'Hi there!' AS chosen,
           ai_generate('smol', 'Say hi.', named_struct('seed', 7, 'temperature', 0.8, 'max_tokens', 8)) AS rejected
           WHERE 'https://user:pw@host/x' <> '') TO '{}' STORED AS dpo",
        target.display()
    );
    for run in 0..2 {
        e.query(&copy).await.unwrap();
        let card = std::fs::read_to_string(target.join("README.md")).unwrap();
        let provenance = card.split("## Provenance").nth(1).expect(&card);
        assert!(
            provenance.contains(&format!("- prefflow {}", env!("CARGO_PKG_VERSION"))),
            "{card}"
        );
        assert!(
            provenance.contains("`seed` options in the query: 7"),
            "{card}"
        );
        let model = provenance
            .lines()
            .find(|l| l.starts_with("| smol |"))
            .expect(&card);
        let cells: Vec<&str> = model.split('|').map(str::trim).collect();
        assert!(
            cells[2].ends_with("models/smollm2-135m-instruct"),
            "{model}"
        );
        assert_eq!(cells[3].len(), 64, "identity is a blake3 hash: {model}");
        assert_eq!(cells[4], "dtype=f32", "{model}");
        let hits = if run == 0 { 0 } else { 1 };
        assert!(
            provenance.contains(&format!("| ai_generate(smol) | 1 | {hits} |")),
            "run {run}: {card}"
        );
        assert!(
            provenance.contains("STORED AS dpo"),
            "the statement: {card}"
        );
        assert!(
            !card.contains("user:pw"),
            "a password in an address is masked: {card}"
        );
        assert!(provenance.contains("https://***@host/x"), "{card}");
    }
}

/// A plain COPY is planned by prefflow's format too: EXPLAIN shows the staged writer, and a
/// write through the DataFrame API (no prefflow::Engine::sql) is atomic (a failing query
/// leaves the previous file as it was, and no staging copy), refuses what prefflow did not
/// write, and writes a shard's own file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataframe_api_copy_is_staged_checked_and_sharded() {
    use datafusion::dataframe::DataFrameWriteOptions;
    let e = engine();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.parquet");
    let explained = e
        .query(&format!(
            "EXPLAIN COPY (SELECT 1 AS x) TO '{}' STORED AS parquet",
            out.display()
        ))
        .await
        .unwrap();
    let text = table(&explained);
    assert!(
        text.contains(&format!("StagedWriteExec: target={}", out.display()))
            && text.contains("ParquetSink"),
        "{text}"
    );
    assert!(!out.exists(), "EXPLAIN wrote output");

    let ctx = e.context();
    let write = |sql: String, path: std::path::PathBuf| async move {
        ctx.sql(&sql)
            .await?
            .write_parquet(
                &path.display().to_string(),
                DataFrameWriteOptions::new().with_single_file_output(true),
                None,
            )
            .await
    };
    write("SELECT 1 AS x UNION ALL SELECT 2".into(), out.clone())
        .await
        .unwrap();
    let count = |path: &std::path::Path| {
        let file = std::fs::File::open(path).unwrap();
        datafusion::parquet::file::reader::SerializedFileReader::new(file)
            .map(|r| {
                datafusion::parquet::file::reader::FileReader::metadata(&r)
                    .file_metadata()
                    .num_rows()
            })
            .unwrap()
    };
    assert_eq!(count(&out), 2);

    // A query that fails as it runs (a malformed record on line 2) leaves the file as it was.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"x\": 1}\n{\"x\": \n").unwrap();
    let err = write(format!("SELECT x FROM '{}'", bad.display()), out.clone())
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty());
    assert_eq!(count(&out), 2);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".prefflow-tmp")),
        "{names:?}"
    );

    // A file prefflow did not write inside a target folder is not replaced.
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep me").unwrap();
    let err = ctx
        .sql("SELECT 1 AS x")
        .await
        .unwrap()
        .write_parquet(
            &format!("{}/", mine.display()),
            DataFrameWriteOptions::new(),
            None,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("notes.txt"), "{err}");
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1);

    // A shard writes its own file beside the other shards'.
    ctx.sql("SET prefflow.shard = '1/2'").await.unwrap();
    let sharded = dir.path().join("shards.parquet");
    write(
        "SELECT * FROM (VALUES (1), (2), (3), (4), (5), (6)) v(x)".into(),
        sharded.clone(),
    )
    .await
    .unwrap();
    assert!(!sharded.exists());
    let shard_file = dir.path().join("shards.shard-00001-of-00002.parquet");
    assert!(count(&shard_file) < 6, "{}", shard_file.display());
}

/// One query file serves a local and a Hub target: a local plain COPY takes `checkpoint_rows`
/// (written once, atomically) and checks it, and refuses the options only a push takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_plain_copy_takes_checkpoint_rows_and_refuses_hub_options() {
    let e = engine();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rows.parquet");
    let copy = |options: &str| {
        format!(
            "COPY (SELECT 1 AS x) TO '{}' STORED AS parquet OPTIONS ({options})",
            out.display()
        )
    };
    e.query(&copy("checkpoint_rows 8")).await.unwrap();
    assert!(out.is_file());
    let err = e.query(&copy("checkpoint_rows 0")).await.unwrap_err();
    assert!(err.to_string().contains("checkpoint_rows"), "{err}");
    let err = e.query(&copy("private false")).await.unwrap_err();
    assert!(
        err.to_string().contains("private applies to a push"),
        "{err}"
    );
}
