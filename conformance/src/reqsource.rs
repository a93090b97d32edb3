//! Loads the requirement index from the spec extractor's compiled-in registry
//! (`spec/requirements.json`, see [`crate::requirements`]).

use crate::reqindex::{ReqIndex, ReqInfo};
use crate::requirements;
use crate::verdict::Level;

pub fn load() -> ReqIndex {
    let reg = match requirements::committed() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warning: spec/requirements.json does not parse: {e}");
            return ReqIndex::default();
        }
    };
    ReqIndex::from_entries(reg.requirements.into_iter().map(|r| ReqInfo {
        level: match r.level {
            requirements::Level::Must => Level::Must,
            requirements::Level::Should => Level::Should,
            requirements::Level::May => Level::May,
        },
        role: r.role.as_str().to_string(),
        text: r.sentence,
        page: r.page,
        id: r.id,
    }))
}
