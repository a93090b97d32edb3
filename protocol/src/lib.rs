//! # vertebra-protocol
//!
//! The Vertebra Agent Protocol 1.0 as data: typed values ([`value`]), resources ([`resource`]),
//! tokens ([`token`]), the stanza payloads ([`stanza`]), the dispatcher's operation payloads
//! ([`payloads`]), typed errors with their single wire mapping ([`error`]), and XML plumbing on
//! minidom ([`xml`]).
//!
//! Everything here is sans-IO: no sockets, no clock, no tasks. Decoding takes a
//! `minidom::Element` (or bytes through [`xml::parse_element`]); encoding produces one. For
//! bytes, [`codec`] decodes straight from quick-xml events and encodes with a streaming writer
//! (`VertebraPayload::from_xml` / `write_xml`), with the same results and error kinds as the
//! element path and byte-identical output.
//!
//! Requirement IDs (`[VAP-…]`) in the docs name the spec sentence a piece of code enforces.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod dispatch;
pub mod error;
pub mod fuzzing;
pub mod json;
pub mod machine;
pub mod mux;
pub mod payloads;
pub mod requester;
pub mod resource;
pub mod responder;
pub mod stanza;
mod swar;
pub mod token;
pub mod value;
pub mod xml;

pub use codec::EncodeError;
/// The string type of [`value::Value::String`] (inline up to 24 bytes), re-exported.
pub use compact_str::CompactString;
pub use error::{Condition, DecodeError, ErrorType, Fault, ProtocolError, Rule, WireError};
pub use resource::{KeyedResource, Resource, ResourceScope};
pub use stanza::{
    Ack, Cancel, Data, Final, Load, Nack, Op, OpError, OpResult, Scope, Version, VertebraPayload,
};
pub use token::{OpToken, RequestToken, Token};
pub use value::{Args, DateTime, Exception, Value};

/// The Vertebra namespace (historical; unchanged in 1.0).
pub const NS: &str = "http://xmlschema.engineyard.com/agent/api";

/// Disco#info feature every 1.0 agent advertises.
pub const FEATURE_1_0: &str = "urn:vertebra:1.0";
/// Disco#info feature of an agent running the conformance test profile.
pub const FEATURE_TEST_PROFILE: &str = "urn:vertebra:1.0:test-profile";
/// Disco#info feature: supports `<cancel>`.
pub const FEATURE_CANCEL: &str = "urn:vertebra:1.0:cancel";
/// Disco#info feature: reports load.
pub const FEATURE_LOAD: &str = "urn:vertebra:1.0:load";
/// Disco#info feature of a dispatcher.
pub const FEATURE_DISPATCHER: &str = "urn:vertebra:1.0:dispatcher";
/// Disco identity category.
pub const IDENTITY_CATEGORY: &str = "automation";
/// Disco identity type of an agent.
pub const IDENTITY_TYPE_AGENT: &str = "vertebra-agent";
/// Disco identity type of a dispatcher.
pub const IDENTITY_TYPE_DISPATCHER: &str = "vertebra-dispatcher";
