//! `vertebra-conformance`: the conformance harness (under construction).
pub mod requirements;
