//! vertebra-protocol (under construction).
