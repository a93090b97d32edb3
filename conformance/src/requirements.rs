//! Requirement registry extracted from `spec/` (under construction).
