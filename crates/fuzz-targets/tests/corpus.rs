//! The committed seed corpus (`fuzz/corpus/<target>/`) through the target
//! bodies on stable, and the fuzz crate kept in step with [`TARGETS`].

use std::path::{Path, PathBuf};

use dispatcher_fuzz_targets::{self as targets, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn run(target: &str, data: &[u8]) {
    match target {
        "signature_header" => targets::signature_header(data),
        "intake" => targets::intake(data),
        "events_query" => targets::events_query(data),
        "config" => targets::config(data),
        "cel" => targets::cel(data),
        other => unreachable!("unknown target {other}"),
    }
}

#[test]
fn every_seed_passes_its_target() {
    for target in TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        let mut seeds = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            run(target, &data);
            seeds += 1;
        }
        assert!(seeds > 0, "no seed for {target}");
    }
}

/// The recorded configs reach validation, so the fuzzer starts from valid
/// settings rather than from errors.
#[test]
fn the_config_seeds_are_valid_settings() {
    for name in ["dev.json", "dispatcher_config.example.json"] {
        let path = fuzz_dir().join("corpus/config").join(name);
        let text = std::fs::read(&path).unwrap_or_default();
        let mut tree = serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let settings = targets::config_tree(&mut tree);
        assert!(settings.is_some_and(|s| !s.items.is_empty()), "{name}");
    }
}

#[test]
fn the_fuzz_crate_has_every_target() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap_or_default();
    let script = std::fs::read_to_string(fuzz_dir().join("../scripts/fuzz")).unwrap_or_default();
    for target in TARGETS {
        let source = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        let body = std::fs::read_to_string(&source).unwrap_or_default();
        assert!(
            body.contains(&format!("dispatcher_fuzz_targets::{target}(data)")),
            "{}",
            source.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "{target}"
        );
        assert!(script.contains(target), "{target} in scripts/fuzz");
    }
}
