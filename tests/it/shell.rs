//! The interactive shell, driven through a pipe: multi-line statements, tables, dot commands,
//! errors that do not end the session, and Ctrl-C (SIGINT) cancelling a running statement.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `prefflow ARGS` in `dir`, its standard streams piped; the result cache and history go to
/// `dir/.prefflow-cache` (XDG_CACHE_HOME / XDG_STATE_HOME, so `prefflow` alone, which takes
/// no options, uses them too; file snapshots of `dir` leave that folder out).
pub(crate) fn shell(dir: &std::path::Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_prefflow"))
        .args(args)
        .env("XDG_CACHE_HOME", dir.join(".prefflow-cache"))
        .env_remove("PREFFLOW_CACHE_DIR")
        .env("XDG_STATE_HOME", dir.join(".prefflow-cache/state"))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn piped_statements_run_with_dot_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("answer.txt");
    let input = format!(
        "CREATE TABLE t AS VALUES (1),\n  (2), (3);\nSELECT count(*) AS n\nFROM t;\n.timer on\nSELECT 'a;b' AS quoted; SELECT 2 AS two;\n.models\n.output {}\nSELECT 42 AS answer;\n.output\nSELECT nope;\n.bogus\nSELECT strip_think('<think>x</think> 7') AS stripped;\n",
        out_file.display()
    );
    let mut child = shell(dir.path(), &["shell"]);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Multi-line statements, a ';' inside quotes, several statements on one line.
    assert!(
        stdout.contains("| n |") && stdout.contains("| 3 |"),
        "{stdout}"
    );
    assert!(stdout.contains("| a;b    |"), "{stdout}");
    assert!(stdout.contains("| two |"), "{stdout}");
    assert!(
        stdout.contains(
            "| name | kind | architecture | parameters | dtype | context | uri | path | options |"
        ),
        "{stdout}"
    );
    // .output sends a result to the file, and back.
    assert!(!stdout.contains("answer"), "{stdout}");
    assert!(
        std::fs::read_to_string(&out_file)
            .unwrap()
            .contains("| 42     |")
    );
    assert!(stdout.contains("| 7        |"), "{stdout}");
    // .timer, errors that do not end the session, and the exit status of a failed pipe.
    assert!(stderr.contains("Run Time: "), "{stderr}");
    assert!(
        stderr.contains("prefflow: error: Schema error: No field named nope"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown command '.bogus'"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
}

#[test]
fn prefflow_alone_reads_a_pipe_and_ctrl_c_cancels_a_statement() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = shell(dir.path(), &[]);
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"SELECT count(*) AS n FROM generate_series(1, 100000000000);\n")
        .unwrap();
    // Long enough for the process to start and the statement to run.
    std::thread::sleep(Duration::from_millis(3000));
    let sigint = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sigint.success());
    stdin.write_all(b"SELECT 42 AS after;\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("prefflow: cancelled"), "{stderr}");
    assert!(stdout.contains("| 42    |"), "{stdout}");
    // A cancelled statement is a failure of the script.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
}
