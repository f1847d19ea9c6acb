//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through its target's checks.
//!
//! This is how CI keeps what the fuzzers found fixed without fuzzing anew: the corpora hold the
//! inputs libFuzzer kept for new coverage, and every crash it found is added to them once fixed.

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}

#[test]
fn every_corpus_input_passes_its_target() {
    let mut failures = Vec::new();
    for (target, check) in amphi_fuzzing::TARGETS {
        let dir = corpus_dir(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("the corpus of `{target}` ({}) cannot be read: {e}", dir.display()));
        let mut inputs = 0;
        for entry in entries {
            let path = entry.expect("list the corpus").path();
            let data = std::fs::read(&path).expect("read a corpus input");
            inputs += 1;
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failures.push(path.display().to_string());
            }
        }
        assert!(
            inputs >= 10,
            "the corpus of `{target}` holds only {inputs} inputs; run the fuzzer (fuzz/README.md)"
        );
        println!("{target}: {inputs} inputs replayed");
    }
    assert!(failures.is_empty(), "inputs that fail their target's checks:\n{}", failures.join("\n"));
}
