//! Requirement index used by the harness: level and sentence per requirement ID, from the
//! spec engineer's extractor (`requirements.rs`).

use crate::case::LevelLookup;
use crate::verdict::Level;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct ReqInfo {
    pub id: String,
    pub level: Level,
    pub role: String,
    pub text: String,
    pub page: String,
}

#[derive(Debug, Clone, Default)]
pub struct ReqIndex {
    pub reqs: BTreeMap<String, ReqInfo>,
}

impl ReqIndex {
    pub fn from_entries(entries: impl IntoIterator<Item = ReqInfo>) -> ReqIndex {
        ReqIndex {
            reqs: entries.into_iter().map(|r| (r.id.clone(), r)).collect(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&ReqInfo> {
        self.reqs.get(&id.to_ascii_uppercase())
    }
}

impl LevelLookup for ReqIndex {
    fn level(&self, id: &str) -> Option<Level> {
        self.get(id).map(|r| r.level)
    }
}
