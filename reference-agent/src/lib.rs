//! Vertebra reference agent, requester API, dispatcher and the `vertebra` CLI on tokio-xmpp.
//!
//! The tokio layer here only moves bytes and time; protocol decisions live in
//! `vertebra-protocol`.

pub mod conn;
pub mod config;
pub mod policy;
pub mod node;
pub mod requester;
pub mod agent;
pub mod dispatcher;

pub use tokio_xmpp;
pub use vertebra_protocol as protocol;
pub mod cli;
pub mod local;
