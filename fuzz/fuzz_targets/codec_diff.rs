//! Fuzz target `codec_diff`: calls `vertebra_protocol::fuzzing::check_codec`, the differential
//! oracle streaming codec vs tree codec, which the crate's tests replay the committed corpus
//! through (`protocol/tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vertebra_protocol::fuzzing::check_codec(data);
});
