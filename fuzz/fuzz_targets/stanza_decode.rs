//! Fuzz target `stanza_decode`: calls `vertebra_protocol::fuzzing::check_stanza`, the same checking function the
//! crate's tests replay the committed corpus through (`protocol/tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vertebra_protocol::fuzzing::check_stanza(data);
});
