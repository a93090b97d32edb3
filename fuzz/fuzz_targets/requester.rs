//! Fuzz target `requester`: calls `vertebra_protocol::fuzzing::check_requester`, the same checking function the
//! crate's tests replay the committed corpus through (`protocol/tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vertebra_protocol::fuzzing::check_requester(data);
});
