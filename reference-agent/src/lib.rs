//! Vertebra reference agent, requester API, dispatcher and the `vertebra` CLI on tokio-xmpp.
//!
//! The tokio layer here only moves bytes and time; protocol decisions live in
//! `vertebra-protocol`.

pub mod agent;
pub mod config;
pub mod conn;
pub mod dispatcher;
pub mod node;
pub mod policy;
pub mod requester;

pub use tokio_xmpp;
pub use vertebra_protocol as protocol;
pub mod cli;
pub mod local;
