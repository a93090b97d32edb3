//! vertebra-reference-agent (under construction).
