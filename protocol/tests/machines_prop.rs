//! Property tests: the state machines and the directory driven by random event sequences,
//! checked against the protocol rules by the same oracles the fuzz targets use.

use proptest::prelude::*;
use vertebra_protocol::fuzzing;

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn requester_rules_hold(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        fuzzing::check_requester(&data);
    }

    #[test]
    fn responder_rules_hold(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        fuzzing::check_responder(&data);
    }

    #[test]
    fn directory_matches_model(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::check_dispatch(&data);
    }
}
