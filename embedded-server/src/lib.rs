//! vertebra-embedded-server (under construction).
