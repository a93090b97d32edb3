//! Small minidom helpers (attribute names are `NcName`s in minidom 0.19).

use minidom::rxml::{Namespace, NcName};
use minidom::{Element, ElementBuilder};

/// An attribute name; the harness only uses literal, valid names (a bad name is a harness bug
/// and falls back to `invalid`).
pub fn nc(name: &str) -> NcName {
    NcName::try_from(name.to_string())
        .unwrap_or_else(|_| NcName::try_from("invalid".to_string()).expect("valid NCName"))
}

/// `ElementBuilder::attr` with a string name.
pub trait AttrExt {
    fn at(self, name: &str, value: impl Into<String>) -> Self;
}

impl AttrExt for ElementBuilder {
    fn at(self, name: &str, value: impl Into<String>) -> Self {
        self.attr(nc(name), value.into())
    }
}

/// Set (or replace) an attribute.
pub fn set(el: &mut Element, name: &str, value: impl Into<String>) {
    el.attrs_mut()
        .insert(Namespace::NONE, nc(name), value.into());
}

/// Remove an attribute.
pub fn unset(el: &mut Element, name: &str) {
    el.attrs_mut().remove(&Namespace::NONE, name);
}
