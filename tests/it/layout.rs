//! Every crate of the workspace keeps its layering: no import cycle among its modules, nor
//! among its folders (`scripts/module-graph` prints the graph).

#[test]
fn no_crate_has_an_import_cycle() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/module-graph");
    let out = std::process::Command::new("python3")
        .arg(script)
        .output()
        .expect("python3 runs scripts/module-graph");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The check itself finds a loop between folders (so a passing run above means something).
#[test]
fn the_cycle_check_finds_a_loop_between_folders() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("sinks")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod engine;\npub mod sinks;\n").unwrap();
    std::fs::write(src.join("engine.rs"), "use crate::sinks::hub::push;\n").unwrap();
    std::fs::write(src.join("sinks/mod.rs"), "pub mod hub;\npub mod dpo;\n").unwrap();
    std::fs::write(src.join("sinks/hub.rs"), "pub fn push() {}\n").unwrap();
    std::fs::write(src.join("sinks/dpo.rs"), "use crate::engine::run;\n").unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/module-graph");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(src)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("engine -> sinks -> engine"), "{text}");
}
