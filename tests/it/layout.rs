//! The udfs crate keeps its layering: no import cycle among its modules
//! (`scripts/module-graph` prints the graph).

#[test]
fn udfs_has_no_import_cycle() {
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
