//! Snapshot tests of manifest diagnostics: each `ui/NAME.toml` sits beside `ui/NAME.err` holding
//! the exact error text (or `ui/NAME.ok` for manifests that must load). `NIMBUS_BLESS=1` rewrites
//! the expectations from the current output.

use std::path::Path;

#[test]
fn manifests_give_the_expected_diagnostics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let bless = std::env::var_os("NIMBUS_BLESS").is_some();
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries.iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        let text = std::fs::read_to_string(path).unwrap();
        let name = Path::new(path.file_name().unwrap());
        let (actual, ext) = match nimbus_config::parse(name, &text) {
            Ok(manifest) => (format!("{manifest:#?}\n"), "ok"),
            Err(e) => (format!("{e}\n"), "err"),
        };
        let expected_path = path.with_extension(ext);
        if bless {
            std::fs::write(&expected_path, &actual).unwrap();
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!("{}:\n--- expected\n{expected}--- actual\n{actual}", path.display())),
            Err(_) => failures.push(format!("{}: no {} file; actual output:\n{actual}", path.display(), ext)),
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} cases found in {}", dir.display());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
