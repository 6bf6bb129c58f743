//! Trust, round 2 (issue 25): the new surfaces lose nothing and say what went wrong. Each test
//! runs the `prefflow` binary as a user would, in a temporary folder, and checks the bytes of
//! every file that must stay untouched and the exact rows of every result that must be right.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::trust::{fails, prefflow, snapshot, stderr, stdout, succeeds};

/// The shell (`prefflow` alone) reading `input` from a pipe in `dir`.
fn shell_with(dir: &Path, input: &str) -> std::process::Output {
    let mut child = shell_child(dir);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn shell_child(dir: &Path) -> std::process::Child {
    super::shell::shell(dir, &[])
}

fn signal(child: &std::process::Child, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Staging entries prefflow left in `dir`.
fn staging_left(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".prefflow-tmp-"))
        .collect()
}

// ---- 1. A path through a folder that does not exist yet ----

#[test]
fn a_path_through_a_missing_folder_never_reaches_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("data")).unwrap();
    std::fs::write(d.join("data/in.jsonl"), "{\"x\": 1}\n{\"x\": 2}\n").unwrap();
    let before = snapshot(d);
    for target in [
        "newdir/../data/in.jsonl",
        "data/newdir/../in.jsonl",
        "a/b/../../data/./in.jsonl",
    ] {
        fails(
            d,
            &format!("COPY (SELECT * FROM 'data/in.jsonl') TO '{target}' STORED AS json"),
            &["own inputs"],
        );
        let o = prefflow(
            &[
                "sql",
                "SELECT * FROM 'data/in.jsonl'",
                "--output",
                &d.join(target).display().to_string(),
            ],
            d,
        );
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains("own inputs"), "{}", stderr(&o));
    }
    // A training sink into the input's folder through a missing one.
    fails(
        d,
        "COPY (SELECT 'p' AS prompt, 'a' AS chosen, 'b' AS rejected FROM 'data/in.jsonl') TO 'x/../data' STORED AS dpo",
        &["data"],
    );
    assert_eq!(snapshot(d), before, "nothing changed");
    assert!(!d.join("newdir").exists() && !d.join("a").exists() && !d.join("x").exists());
}

// ---- 5. Only the split files of the dataset's own file_format are prefflow's ----

#[test]
fn a_users_file_beside_a_dataset_of_another_format_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let copy = |format: &str| {
        format!(
            "COPY (SELECT 'p' || n AS prompt, 'good' AS chosen, 'bad' AS rejected FROM generate_series(1, 4) t(n)) TO 'pairs' STORED AS dpo OPTIONS (file_format '{format}')"
        )
    };
    succeeds(d, &copy("parquet"));
    std::fs::write(d.join("pairs/validation.jsonl"), "{\"mine\": true}\n").unwrap();
    let before = snapshot(d);
    fails(d, &copy("parquet"), &["validation.jsonl"]);
    assert_eq!(
        snapshot(d),
        before,
        "the user's file and the dataset are unchanged"
    );
    // A dataset may still change its own file_format: the earlier split files are its own.
    std::fs::remove_file(d.join("pairs/validation.jsonl")).unwrap();
    succeeds(d, &copy("jsonl"));
    assert!(d.join("pairs/train.jsonl").exists() && !d.join("pairs/train.parquet").exists());
    succeeds(d, &copy("parquet"));
    assert!(d.join("pairs/train.parquet").exists() && !d.join("pairs/train.jsonl").exists());
}

// ---- 6. A NaN score is not a score ----

#[test]
fn pairs_over_nan_scores_equal_pairs_over_null_scores() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 200 prompts with 4 answers each; one answer per prompt has no score, placed first,
    // last or in between depending on the prompt.
    let mut rows = String::new();
    for p in 0..200 {
        let missing = p % 4;
        for a in 0..4 {
            let score = if a == missing {
                "NaN".to_string()
            } else {
                format!("{}", (a * 7 + p) % 10)
            };
            rows.push_str(&format!(
                "{{\"prompt_id\": {p}, \"prompt\": \"q{p}\", \"response\": \"r{p}-{a}\", \"score\": \"{score}\"}}\n"
            ));
        }
    }
    std::fs::write(d.join("scored.jsonl"), rows).unwrap();
    let pairing = |score: &str, out: &str| {
        format!(
            "COPY (SELECT prompt_id, first_value(prompt) AS prompt,
                     arg_max(response, s) AS chosen, arg_min(response, s) AS rejected,
                     max(s) AS score_chosen, min(s) AS score_rejected
              FROM (SELECT *, {score} AS s FROM 'scored.jsonl') GROUP BY prompt_id)
             TO '{out}' STORED AS dpo"
        )
    };
    succeeds(d, &pairing("CAST(score AS DOUBLE)", "nan_pairs"));
    succeeds(
        d,
        &pairing(
            "CASE WHEN score = 'NaN' THEN NULL ELSE CAST(score AS DOUBLE) END",
            "null_pairs",
        ),
    );
    let rows_of = |name: &str| {
        succeeds(
            d,
            &format!(
                "SELECT prompt, chosen, rejected, score_chosen, score_rejected FROM '{name}/train.parquet' ORDER BY prompt"
            ),
        )
    };
    let nan = rows_of("nan_pairs");
    assert_eq!(nan, rows_of("null_pairs"));
    assert!(nan.lines().count() > 100, "{nan}");
    // No NaN-scored answer is ever chosen or rejected.
    for p in 0..200 {
        let missing = format!("\"r{p}-{}\"", p % 4);
        assert!(!nan.contains(&missing), "{missing} picked:\n{nan}");
    }
}

// ---- 10. External tables' folders are inputs ----

#[test]
fn an_external_tables_folder_is_never_written_into() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("shards")).unwrap();
    std::fs::write(d.join("shards/a.jsonl"), "{\"x\": 1}\n").unwrap();
    let before = snapshot(d);
    let create = "CREATE EXTERNAL TABLE t STORED AS JSON LOCATION 'shards/'";
    for copy in [
        "COPY (SELECT 1 AS x) TO 'shards/b.jsonl' STORED AS json",
        "COPY (SELECT 1 AS x) TO 'shards/more/' STORED AS parquet",
        "COPY (SELECT 'p' AS prompt, 'a' AS chosen, 'b' AS rejected) TO 'shards/pairs' STORED AS dpo",
    ] {
        fails(
            d,
            &format!("{create}; {copy}; SELECT count(*) FROM t"),
            &["a table of this session reads"],
        );
    }
    assert_eq!(snapshot(d), before, "nothing changed");
    let n = succeeds(d, &format!("{create}; SELECT count(*) AS n FROM t"));
    assert!(n.contains("\"n\":1"), "{n}");
}

// ---- 2, 19, 25. The shell's .output and its results ----

#[test]
fn the_shells_output_file_follows_the_rules_of_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("in.jsonl"), "{\"x\": 1}\n{\"x\": 2}\n").unwrap();
    std::fs::create_dir(d.join("folder")).unwrap();
    let before = snapshot(d);
    let out = shell_with(
        d,
        ".output in.jsonl\nSELECT * FROM 'in.jsonl';\n.output folder\n.output notes.unknown\n",
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    // Typing .output truncates nothing; the statement reading the file is refused.
    assert!(err.contains("own inputs"), "{err}");
    assert!(err.contains("is a folder"), "{err}");
    assert!(err.contains("cannot tell the format"), "{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(snapshot(d), before, "nothing changed");
    // Each result replaces the file atomically, in the format its name says.
    let out = shell_with(
        d,
        ".output result.parquet\nSELECT 1 AS a;\nSELECT x * 10 AS b FROM 'in.jsonl' ORDER BY b;\n.output\nSELECT 'screen' AS s;\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("| screen |"));
    let back = succeeds(d, "SELECT b FROM 'result.parquet'");
    assert_eq!(back, "{\"b\":10}\n{\"b\":20}\n");
    assert!(staging_left(d).is_empty());
}

#[test]
fn the_shell_streams_a_long_result_and_shows_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    let out = shell_with(
        dir.path(),
        "SELECT value FROM generate_series(1, 2000000);\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("2000000 rows (40 shown)"), "{text}");
    assert!(text.contains("… 1999960 more rows …"), "{text}");
    assert!(
        text.contains("| 1 ") && text.contains("| 2000000 "),
        "{text}"
    );
    assert!(text.lines().count() < 50, "{text}");
}

// ---- 13, 25. Ctrl-C and SIGTERM in a piped script ----

#[test]
fn a_second_ctrl_c_stops_a_piped_script_and_cancelled_copies_leave_no_staging() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut child = shell_child(d);
    let mut stdin = child.stdin.take().unwrap();
    let endless = "(SELECT count(*) AS n FROM generate_series(1, 100000000000))";
    writeln!(stdin, "COPY {endless} TO 'first.parquet';").unwrap();
    writeln!(stdin, "COPY {endless} TO 'second.parquet';").unwrap();
    writeln!(stdin, "SELECT 'never' AS third;").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    // The staging file exists while the COPY runs ...
    assert!(
        !staging_left(d).is_empty(),
        "the COPY is staged while it runs"
    );
    signal(&child, "INT");
    std::thread::sleep(Duration::from_millis(1500));
    // ... and is gone once Ctrl-C cancelled it, before the process ends (the next COPY runs).
    let left = staging_left(d);
    assert!(
        !left.iter().any(|n| n.ends_with("first.parquet")),
        "staging left after the cancel: {left:?}"
    );
    signal(&child, "INT");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("stopped by a second Ctrl-C"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("never"));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(staging_left(d).is_empty());
    assert!(!d.join("first.parquet").exists() && !d.join("second.parquet").exists());

    // SIGTERM stops the script at once, the running statement cancelled.
    let mut child = shell_child(d);
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "COPY {endless} TO 'third.parquet';").unwrap();
    writeln!(stdin, "SELECT 'never' AS after;").unwrap();
    drop(stdin);
    std::thread::sleep(Duration::from_millis(2500));
    signal(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("stopped by SIGTERM"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("never"));
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(staging_left(d).is_empty());
}

#[test]
fn a_comment_after_the_last_semicolon_is_not_a_missing_semicolon() {
    let dir = tempfile::tempdir().unwrap();
    let out = shell_with(
        dir.path(),
        "SELECT 1 AS one; -- the end\n/* really */\n-- the very end\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("| one |"));
    let out = shell_with(dir.path(), "SELECT 1 AS one\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no closing ';'"));
    assert_eq!(out.status.code(), Some(1));
}

// ---- 20. Ctrl-C at a real terminal never kills the shell ----

#[test]
fn ctrl_c_at_a_terminal_cancels_and_the_shell_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/pty_shell.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_prefflow"))
        .arg(dir.path())
        .arg("12")
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .env_remove("PREFFLOW_CACHE_DIR")
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .output()
        .expect("python3 runs the pseudo-terminal driver");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

// ---- 14, 23. CREATE MODEL refuses what prefflow cannot run ----

/// A copy of the tiny llama fixture with config.json changed by `edit`.
fn model_like_llama(root: &Path, name: &str, edit: impl Fn(&mut serde_json::Value)) -> String {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoders/llama");
    let to = root.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(&from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    let path = to.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
    to.display().to_string()
}

#[test]
fn create_model_refuses_architectures_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let set = |pairs: Vec<(&'static str, serde_json::Value)>| {
        move |c: &mut serde_json::Value| {
            for (k, v) in &pairs {
                c[*k] = v.clone();
            }
        }
    };
    let cases = [
        (
            "falcon",
            set(vec![
                ("model_type", "falcon".into()),
                ("architectures", serde_json::json!(["FalconForCausalLM"])),
            ]),
            "model_type 'falcon' cannot generate (llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3 can)",
        ),
        (
            "mrope",
            set(vec![(
                "rope_parameters",
                serde_json::json!({"rope_type": "mrope", "factor": 2.0, "rope_theta": 10000.0}),
            )]),
            "rope scaling 'mrope' is not supported (default, linear, dynamic, yarn, llama3 and longrope are)",
        ),
        (
            "capped_llama",
            set(vec![("attn_logit_softcapping", 50.0.into())]),
            "attn_logit_softcapping is not supported for llama",
        ),
        (
            "yarn_without_context",
            // An older config: rope_scaling beside rope_theta, no rope_parameters.
            set(vec![
                ("rope_parameters", serde_json::Value::Null),
                (
                    "rope_scaling",
                    serde_json::json!({"type": "yarn", "factor": 4.0}),
                ),
            ]),
            "rope scaling 'yarn' needs original_max_position_embeddings",
        ),
        (
            "electra",
            set(vec![
                ("model_type", "electra".into()),
                ("architectures", serde_json::json!(["ElectraModel"])),
            ]),
            "ElectraModel (model_type 'electra') is not supported",
        ),
        (
            "deberta_xlarge",
            set(vec![
                ("model_type", "deberta-v2".into()),
                (
                    "architectures",
                    serde_json::json!(["DebertaV2ForSequenceClassification"]),
                ),
                ("conv_kernel_size", 3.into()),
            ]),
            "convolution layer (conv_kernel_size 3) is not supported",
        ),
    ];
    for (name, edit, needle) in cases {
        let path = model_like_llama(d, name, edit);
        fails(d, &format!("CREATE MODEL m FROM '{path}'"), &[needle]);
    }
    // Mistral without a window runs as Llama does.
    let path = model_like_llama(
        d,
        "mistral_full",
        set(vec![
            ("model_type", "mistral".into()),
            ("architectures", serde_json::json!(["MistralForCausalLM"])),
            ("sliding_window", serde_json::Value::Null),
        ]),
    );
    succeeds(
        d,
        &format!(
            "CREATE MODEL m FROM '{path}'; SELECT length(ai_generate('m', 'hi', named_struct('max_tokens', 2))) >= 0 AS ran"
        ),
    );
    // Two GGUF files: name one.
    std::fs::create_dir(d.join("two")).unwrap();
    std::fs::write(d.join("two/a.gguf"), b"x").unwrap();
    std::fs::write(d.join("two/b.gguf"), b"x").unwrap();
    fails(
        d,
        "CREATE MODEL m FROM 'two'",
        &["holds 2 GGUF files (a.gguf, b.gguf): name one"],
    );
    // A decoder given to ai_embed is refused while planning.
    let llama = super::trust::model("llama");
    fails(
        d,
        &format!("CREATE MODEL dec FROM '{llama}'; EXPLAIN SELECT ai_embed('dec', 'x')"),
        &["ai_embed", "it is a decoder LLM; it cannot embed text"],
    );
}

/// A sharded checkpoint missing a shard its index names fails at CREATE MODEL, naming the shard;
/// complete, it loads (its parity is in generate::tiny_safetensors_decoders_match_transformers).
#[test]
fn a_sharded_checkpoint_needs_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let from =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoders/qwen3_bf16_sharded");
    let to = d.join("sharded");
    std::fs::create_dir(&to).unwrap();
    for e in std::fs::read_dir(&from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    succeeds(d, "CREATE MODEL m FROM 'sharded'");
    std::fs::remove_file(to.join("model-00002-of-00002.safetensors")).unwrap();
    fails(
        d,
        "CREATE MODEL m FROM 'sharded'",
        &[
            "model-00002-of-00002.safetensors",
            "named by model.safetensors.index.json",
        ],
    );
}

/// What a model is (its kind, its GGUF file) is decided at CREATE MODEL: a second .gguf file
/// appearing in the folder afterwards neither changes the model nor makes it ambiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_file_is_decided_at_declaration() {
    let d = tempfile::tempdir().unwrap();
    let folder = d.path().join("smol");
    std::fs::create_dir(&folder).unwrap();
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    std::os::unix::fs::symlink(&gguf, folder.join("a.gguf")).unwrap();
    let e = super::support::engine();
    e.sql(&format!("CREATE MODEL m FROM '{}'", folder.display()))
        .await
        .unwrap();
    std::fs::write(folder.join("b.gguf"), b"not a model").unwrap();
    let counted = super::support::text(&e, "SELECT token_count('m', 'hello world') AS n").await;
    assert!(counted.contains("| 2 "), "{counted}");
    // Named by its path instead, the folder is now ambiguous and refused.
    let refused = e
        .sql(&format!(
            "SELECT token_count('{}', 'hello world')",
            folder.display()
        ))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(refused.contains("holds 2 GGUF files"), "{refused}");
}

// ---- 21. Secrets in addresses ----

#[test]
fn an_inline_address_with_a_password_is_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(
        dir.path(),
        "SELECT ai_generate('openai://user:pa55word@127.0.0.1:9/v1/x', 'hi')",
        &["declared before use", "openai://***@127.0.0.1:9/v1/x"],
    );
    assert!(!err.contains("pa55word"), "{err}");
}

// ---- 15. Reward templates see the tokenizer's special tokens ----

#[test]
fn reward_templates_render_the_tokenizers_bos_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reward/llama");
    let template = std::fs::read_to_string(from.join("chat_template.jinja")).unwrap();
    let copy = |name: &str, prefix: &str| {
        let to = d.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&from).unwrap().flatten() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        std::fs::write(
            to.join("chat_template.jinja"),
            format!("{prefix}{template}"),
        )
        .unwrap();
        let path = to.join("tokenizer_config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["bos_token"] = "<|im_start|>".into();
        std::fs::write(&path, config.to_string()).unwrap();
        to.display().to_string()
    };
    // `{{ bos_token }}` must render the tokenizer's BOS, as the same text written out does.
    let templated = copy("templated", "{{ bos_token }}");
    let literal = copy("literal", "<|im_start|>");
    let plain = copy("plain", "");
    let score = |path: &str| -> f64 {
        let out = succeeds(
            d,
            &format!(
                "CREATE MODEL rm FROM '{path}'; SELECT ai_reward('rm', 'What is 2 + 2?', 'It is 4.') AS s"
            ),
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["s"].as_f64().unwrap()
    };
    let (t, l, p) = (score(&templated), score(&literal), score(&plain));
    assert_eq!(t, l, "templated {t} vs literal {l}");
    assert_ne!(t, p, "the BOS token changes the input, so the score");
}

// ---- 8. Globs mean what they mean in a shell; folders are read whole ----

#[test]
fn globs_and_nested_folders_read_what_a_shell_would_list() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (path, x) in [
        ("data/top.jsonl", 1),
        ("data/a/one.jsonl", 10),
        ("data/b/two.jsonl", 100),
        ("data/b/deep/three.jsonl", 1000),
    ] {
        let p = d.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{{\"x\": {x}}}\n")).unwrap();
    }
    let sum = |from: &str| -> String {
        succeeds(d, &format!("SELECT sum(x) AS s FROM '{from}'"))
            .trim()
            .to_string()
    };
    assert_eq!(sum("data/"), "{\"s\":1111}", "a folder is read whole");
    assert_eq!(sum("data/**/*.jsonl"), "{\"s\":1111}", "** recurses");
    assert_eq!(sum("data/*.jsonl"), "{\"s\":1}", "* stays in its folder");
    assert_eq!(
        sum("data/*/*.jsonl"),
        "{\"s\":110}",
        "* matches one segment"
    );
    assert_eq!(sum("data/b/**/*.jsonl"), "{\"s\":1100}");
    fails(
        d,
        "SELECT * FROM 'data/*/none-*.jsonl'",
        &["no file matches this pattern"],
    );
}

// ---- 7, 25. CSV headers ----

#[test]
fn csv_files_with_other_header_orders_or_duplicate_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("csv")).unwrap();
    std::fs::write(d.join("csv/a.csv"), "prompt,score\nq1,1\n").unwrap();
    std::fs::write(d.join("csv/b.csv"), "score,prompt\n2,q2\n").unwrap();
    for from in ["csv/", "csv/*.csv"] {
        fails(
            d,
            &format!("SELECT * FROM '{from}'"),
            &["a.csv", "b.csv", "the same columns in another order"],
        );
    }
    std::fs::write(d.join("dup.csv"), "a,b,a\n1,2,3\n").unwrap();
    fails(
        d,
        "SELECT * FROM 'dup.csv'",
        &["dup.csv", "column 'a' twice"],
    );
    // Files that agree read as one table.
    std::fs::write(d.join("csv/b.csv"), "prompt,score\nq2,2\n").unwrap();
    let out = succeeds(d, "SELECT sum(score) AS s FROM 'csv/'");
    assert_eq!(out.trim(), "{\"s\":3}");
}

// ---- 25. Errors a user can act on ----

#[test]
fn errors_name_the_parameter_read_as_one_line_and_symlinks_are_followed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("p.sql"), "-- a job\nSELECT ${v} AS x;\n").unwrap();
    let o = prefflow(&["run", "p.sql", "--param", "v=1 FROM"], d);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--param v='1 FROM'"), "{err}");
    // A parser error is one plain line, in the shell too.
    let out = shell_with(d, "SELEC 1;\n");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("syntax error: Expected"), "{err}");
    assert!(!err.contains("ParserError"), "{err}");
    let o = super::trust::prefflow_env(&["sql", "SELEC 1"], d, &[("RUST_BACKTRACE", "1")]);
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    // A symlink to a folder is a folder: read, and written into where it points.
    std::fs::create_dir(d.join("real")).unwrap();
    std::fs::write(d.join("real/a.jsonl"), "{\"x\": 1}\n").unwrap();
    std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
    assert_eq!(
        succeeds(d, "SELECT sum(x) AS s FROM 'link'").trim(),
        "{\"s\":1}"
    );
    std::fs::create_dir(d.join("realout")).unwrap();
    std::os::unix::fs::symlink(d.join("realout"), d.join("out")).unwrap();
    succeeds(d, "COPY (SELECT 1 AS x) TO 'out/' STORED AS parquet");
    assert!(
        std::fs::symlink_metadata(d.join("out"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link stays a link"
    );
    assert_eq!(
        succeeds(d, "SELECT count(*) AS n FROM 'realout/'").trim(),
        "{\"n\":1}"
    );
}

#[test]
fn schema_conflicts_across_files_name_the_files_and_lines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("pq")).unwrap();
    succeeds(
        d,
        "COPY (SELECT arrow_cast(1, 'Int32') AS x) TO 'pq/a.parquet'",
    );
    succeeds(
        d,
        "COPY (SELECT arrow_cast(2, 'Int64') AS x) TO 'pq/b.parquet'",
    );
    fails(
        d,
        "SELECT sum(x) FROM 'pq/'",
        &[
            "column 'x' is Int32 in",
            "a.parquet",
            "but Int64 in",
            "b.parquet",
        ],
    );
    std::fs::create_dir(d.join("js")).unwrap();
    std::fs::write(d.join("js/a.jsonl"), "{\"x\": 1}\n").unwrap();
    std::fs::write(d.join("js/b.jsonl"), "{\"x\": \"one\"}\n").unwrap();
    fails(
        d,
        "SELECT * FROM 'js/'",
        &[
            "b.jsonl:1",
            "field 'x' is text here but a number on",
            "a.jsonl:1",
        ],
    );
    std::fs::write(
        d.join("nested.jsonl"),
        "{\"m\": {\"k\": 1}}\n{\"m\": {\"k\": [1]}}\n",
    )
    .unwrap();
    fails(
        d,
        "SELECT * FROM 'nested.jsonl'",
        &[
            "nested.jsonl:2",
            "field 'm.k' is a list here but a number on line 1",
        ],
    );
}

// ---- 25. on_error 'null' says what it made NULL; failures are not cached ----

#[test]
fn rows_refused_into_null_are_reported_and_asked_again_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = super::trust::server("401 Unauthorized", "", "{\"error\": \"bad key\"}");
    let sql = format!(
        "CREATE MODEL m FROM 'openai://{addr}/v1/x' OPTIONS (on_error 'null');
         SELECT count(*) AS n, count(ai_generate('m', p)) AS answered FROM (VALUES ('a'), ('b'), ('c')) t(p)"
    );
    let o = prefflow(&["sql", &sql, "--quiet"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("\"n\":3,\"answered\":0"),
        "{}",
        stdout(&o)
    );
    let err = stderr(&o);
    assert!(
        err.contains("3 of them NULL because their request failed") && err.contains("401"),
        "{err}"
    );
    let analyze = succeeds(
        d,
        &format!("{sql}; EXPLAIN ANALYZE SELECT ai_generate('m', 'z')"),
    );
    assert!(analyze.contains("failed_as_null=1"), "{analyze}");
    // The NULLs were not cached: the next run asks the server again (and says so again).
    let o = prefflow(&["sql", &sql], d);
    assert!(
        stderr(&o).contains("3 computed, 0 from cache"),
        "{}",
        stderr(&o)
    );
}

// ---- 25. --cache read on a read-only mount ----

/// A read-only bind mount of `src` at `at`, unmounted when dropped; None where this machine
/// does not allow mounts (not root, or no mount namespace rights).
struct ReadOnlyMount(std::path::PathBuf);

impl ReadOnlyMount {
    fn new(src: &Path, at: &Path) -> Option<Self> {
        let ok = |args: &[&str]| {
            Command::new("mount")
                .args(args)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let (src, at_s) = (src.display().to_string(), at.display().to_string());
        if !ok(&["--bind", &src, &at_s]) {
            return None;
        }
        let mount = Self(at.to_path_buf());
        ok(&["-o", "remount,bind,ro", &at_s]).then_some(mount)
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn cache_read_works_on_a_read_only_mount_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reward/bert");
    let sql = format!(
        "CREATE MODEL rm FROM '{}'; SELECT ai_reward('rm', 'q', 'a') AS s",
        model.display()
    );
    let cache = d.join("cache");
    let write = prefflow(
        &["sql", &sql, "--cache-dir", &cache.display().to_string()],
        d,
    );
    assert!(write.status.success(), "{}", stderr(&write));
    let ro = d.join("ro");
    std::fs::create_dir(&ro).unwrap();
    let Some(_mount) = ReadOnlyMount::new(&cache, &ro) else {
        eprintln!("skipped: this machine does not allow a read-only bind mount");
        return;
    };
    let before = snapshot(&cache);
    let read = prefflow(
        &[
            "sql",
            &sql,
            "--cache-dir",
            &ro.display().to_string(),
            "--cache",
            "read",
        ],
        d,
    );
    assert!(read.status.success(), "{}", stderr(&read));
    assert_eq!(stdout(&read), stdout(&write));
    assert!(stderr(&read).contains("1 from cache"), "{}", stderr(&read));
    assert_eq!(snapshot(&cache), before, "the cache bytes are unchanged");
}

// ---- 18. A template whose values grow without writing anything ----

/// Runs `sql` with the process's address space capped (so a regression fails this test with
/// an allocation failure instead of taking the machine's memory).
fn prefflow_capped(dir: &Path, sql: &str) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 8000000 && exec \"$0\" sql \"$1\"")
        .arg(env!("CARGO_BIN_EXE_prefflow"))
        .arg(sql)
        .current_dir(dir)
        .env("PREFFLOW_CACHE_DIR", dir.join(".prefflow-cache"))
        .output()
        .unwrap()
}

#[test]
fn a_template_whose_values_double_stops_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let grow = |op: &str| {
        format!(
            "{{% set ns = namespace(s=\"x\") %}}{{% for i in range(64) %}}{{% set ns.s = {op} %}}{{% endfor %}}{{{{ ns.s|length }}}}"
        )
    };
    for (function, template) in [
        ("render", grow("ns.s ~ ns.s")),
        ("render", grow("[ns.s, ns.s]|join")),
        ("apply_chat_template", grow("ns.s + ns.s")),
    ] {
        let call = match function {
            "render" => format!("render('{template}', named_struct('n', x))"),
            _ => format!("apply_chat_template('{template}', 'Hi')"),
        };
        // Three rows: the first stops at the budget, the others are refused at once.
        let sql = format!("SELECT {call} FROM (VALUES (1), (2), (3)) AS t(x)");
        let o = prefflow_capped(d, &sql);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{sql}\n{err}");
        assert!(
            err.contains(&format!("{function}:")) && err.contains("more than 256 MiB"),
            "{sql}\n{err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("memory allocation"),
            "{err}"
        );
    }
    // Under the same cap, a template that builds a 1 MiB value renders.
    let o = prefflow_capped(
        d,
        "SELECT render('{% set ns = namespace(s=''x'') %}{% for i in range(20) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}', named_struct('n', 1)) AS n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("1048576"), "{}", stdout(&o));
}
