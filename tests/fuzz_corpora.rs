//! Replays every input of the fuzzers' corpora (`fuzz/corpus/<target>/`) through the same
//! checks the fuzzers run, so `cargo test` keeps what fuzzing found (crashes fixed since are
//! kept there too) without nightly or libFuzzer.

use std::fs;
use std::path::Path;

use keywarden::fuzzing;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        inputs += 1;
    }
    assert!(inputs > 0, "{}: an empty corpus", dir.display());
}

#[test]
fn parser_corpus() {
    replay("parser", fuzzing::parse_requests);
}

#[test]
fn scanner_corpus() {
    replay("scanner", fuzzing::scan_replies);
}

#[test]
fn config_corpus() {
    replay("config", fuzzing::load_config);
}

#[test]
fn engine_corpus() {
    replay("engine", fuzzing::run_engine);
}
