//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the same checking
//! functions the cargo-fuzz targets call, so every seed and every fixed crasher stays green in a
//! normal `cargo test`.

use std::path::PathBuf;

use vertebra_protocol::fuzzing;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        check(&std::fs::read(&p).unwrap());
        n += 1;
    }
    assert!(n >= 10, "{target}: only {n} corpus entries");
}

#[test]
fn corpus_stanza_decode() {
    replay("stanza_decode", fuzzing::check_stanza);
}

#[test]
fn corpus_codec_diff() {
    replay("codec_diff", fuzzing::check_codec);
}

#[test]
fn corpus_value_decode() {
    replay("value_decode", fuzzing::check_value);
}

#[test]
fn corpus_requester() {
    replay("requester", fuzzing::check_requester);
}

#[test]
fn corpus_responder() {
    replay("responder", fuzzing::check_responder);
}

#[test]
fn corpus_dispatch() {
    replay("dispatch", fuzzing::check_dispatch);
}
