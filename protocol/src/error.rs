//! Typed errors, classified by who is at fault, and their ONE mapping to the wire.
//!
//! Every decoding failure is a [`DecodeError`] naming the [`Rule`] that was broken. Every
//! failure a state machine reports is a [`ProtocolError`] carrying a [`Fault`] (who is to blame)
//! and a wire [`Condition`]. [`ProtocolError::to_wire`] is the single place where a failure
//! becomes an XMPP stanza error or a Vertebra `<error>` (`[VAP-ERR]`).

use std::fmt;

use serde::{Deserialize, Serialize};
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType as StanzaErrorType};

/// Who is at fault for a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// The bytes or element tree received are not a valid Vertebra element.
    Malformed,
    /// The peer sent well-formed elements in an order or state the protocol forbids.
    ProtocolViolation,
    /// The peer asked for something this implementation does not support (version, type).
    Unsupported,
    /// The local application called the API incorrectly (for example sent data after final).
    CallerMisuse,
}

/// Which decoding rule an input broke. The kebab-case names ([`Rule::as_str`]) are stable and are
/// the `error` values used by the language-neutral vectors in `fixtures/vectors/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// The bytes are not well-formed, namespace-well-formed XML.
    XmlSyntax,
    /// Element nesting deeper than the limit (values: 32 levels, [`crate::value::MAX_DEPTH`]).
    TooDeep,
    /// Input larger than the decoder accepts.
    TooLarge,
    /// The element is not in the Vertebra namespace [`crate::NS`].
    WrongNamespace,
    /// The element name is not the one expected here (or not a Vertebra payload at all).
    UnexpectedElement,
    /// A required attribute is absent.
    MissingAttribute,
    /// An attribute value is outside its grammar or range.
    BadAttribute,
    /// Non-whitespace text where only child elements are allowed, or a child element inside a
    /// scalar value.
    MixedContent,
    /// A child element that is not a known typed value.
    UnknownValueType,
    /// `i4` text is not a signed 32-bit decimal integer.
    BadI4,
    /// `double` text is not a finite decimal number.
    BadDouble,
    /// `boolean` text is not `1`, `0`, `true` or `false`.
    BadBoolean,
    /// `base64` text is not RFC 4648 base64.
    BadBase64,
    /// `dateTime.iso8601` text is not an accepted ISO 8601 form or not a valid instant.
    BadDateTime,
    /// A resource path breaks the resource grammar.
    BadResource,
    /// `nil` has content.
    BadNil,
    /// `exception` lacks `class` or `message` strings.
    BadException,
    /// Two named values with the same name in one container.
    DuplicateName,
    /// A named value lacks its `name` (or it is empty).
    MissingName,
    /// A token is not hex, or has the wrong number of `:` segments.
    BadToken,
    /// A token has more than two `:` segments.
    TooManyTokenSegments,
    /// The `version` attribute names a version this implementation does not speak.
    UnsupportedVersion,
    /// A helper payload (advertise, discover, authorize, load) lacks a value or has one of the
    /// wrong type.
    BadPayload,
    /// A JID does not parse.
    BadJid,
}

impl Rule {
    /// The stable kebab-case name used in fixtures and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::XmlSyntax => "xml-syntax",
            Rule::TooDeep => "too-deep",
            Rule::TooLarge => "too-large",
            Rule::WrongNamespace => "wrong-namespace",
            Rule::UnexpectedElement => "unexpected-element",
            Rule::MissingAttribute => "missing-attribute",
            Rule::BadAttribute => "bad-attribute",
            Rule::MixedContent => "mixed-content",
            Rule::UnknownValueType => "unknown-value-type",
            Rule::BadI4 => "bad-i4",
            Rule::BadDouble => "bad-double",
            Rule::BadBoolean => "bad-boolean",
            Rule::BadBase64 => "bad-base64",
            Rule::BadDateTime => "bad-date-time",
            Rule::BadResource => "bad-resource",
            Rule::BadNil => "bad-nil",
            Rule::BadException => "bad-exception",
            Rule::DuplicateName => "duplicate-name",
            Rule::MissingName => "missing-name",
            Rule::BadToken => "bad-token",
            Rule::TooManyTokenSegments => "too-many-token-segments",
            Rule::UnsupportedVersion => "unsupported-version",
            Rule::BadPayload => "bad-payload",
            Rule::BadJid => "bad-jid",
        }
    }

    /// Who is at fault when a received input breaks this rule.
    pub fn fault(self) -> Fault {
        match self {
            Rule::UnsupportedVersion | Rule::WrongNamespace => Fault::Unsupported,
            _ => Fault::Malformed,
        }
    }

    /// The condition a receiver reports when an incoming element breaks this rule
    /// (`[VAP-ERR]` table rows 1, 2, 3, 6 and 25):
    /// * an unusable token or an unknown element in [`crate::NS`] → `bad-request` (IQ error,
    ///   `[VAP-OPS-006]`, `[VAP-TRN-010]`);
    /// * an element of another namespace → `service-unavailable` (IQ error, `[VAP-TRN-011]`);
    /// * a version with another major number → `unsupported-version` (`[VAP-VER-004]`);
    /// * everything else (values, timeout, attributes) → `bad-value` (`[VAP-OPS-018]`,
    ///   `[VAP-OPS-051]`).
    pub fn condition(self) -> Condition {
        match self {
            Rule::XmlSyntax
            | Rule::TooLarge
            | Rule::UnexpectedElement
            | Rule::BadToken
            | Rule::TooManyTokenSegments => Condition::BadRequest,
            Rule::WrongNamespace => Condition::ServiceUnavailable,
            Rule::UnsupportedVersion => Condition::UnsupportedVersion,
            _ => Condition::BadValue,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoding failure: which rule was broken and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule}: {detail}")]
pub struct DecodeError {
    /// The broken rule (stable, machine-readable).
    pub rule: Rule,
    /// Human-readable detail (not stable; for logs).
    pub detail: String,
}

impl DecodeError {
    /// Build an error for `rule` with a detail message.
    pub fn new(rule: Rule, detail: impl Into<String>) -> Self {
        DecodeError {
            rule,
            detail: detail.into(),
        }
    }

    /// Who is at fault (see [`Rule::fault`]).
    pub fn fault(&self) -> Fault {
        self.rule.fault()
    }

    /// Turn this into a [`ProtocolError`] (keeps the rule's condition and fault).
    pub fn into_protocol(self) -> ProtocolError {
        ProtocolError {
            fault: self.rule.fault(),
            condition: self.rule.condition(),
            detail: self.to_string(),
        }
    }
}

/// The `type` attribute of a Vertebra `<error>`: `error`, `fatal` or `cancel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorType {
    /// The operation failed (handler failure, bad input).
    Error,
    /// The operation can never succeed here (no handler, unsupported).
    Fatal,
    /// The operation was stopped (cancel, deadline).
    Cancel,
}

impl ErrorType {
    /// Wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Error => "error",
            ErrorType::Fatal => "fatal",
            ErrorType::Cancel => "cancel",
        }
    }

    /// Parse wire text (exact, lowercase).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "error" => Some(ErrorType::Error),
            "fatal" => Some(ErrorType::Fatal),
            "cancel" => Some(ErrorType::Cancel),
            _ => None,
        }
    }
}

/// A failure name of the spec's error table (`[VAP-ERR]` §10.1): the `condition` of `<error>`,
/// the `reason` of `<nack>`, the two IQ-level rejections, and the requester's local outcomes.
/// Unknown conditions are kept verbatim in [`Condition::Other`] (`[VAP-ERR-004]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Condition {
    /// IQ error `bad-request` (unusable token, unknown element in NS). IQ level only.
    BadRequest,
    /// IQ error `service-unavailable` (child of an unknown namespace). IQ level only.
    ServiceUnavailable,
    /// nack: requester not allowed (or another domain).
    NotAuthorized,
    /// nack: no authorization decision within 2 s, or a broken answer.
    AuthorizationUnavailable,
    /// error fatal: no handler for the op type / resources.
    NoHandler,
    /// error fatal: undecodable values, missing or bad `timeout`, bad dispatcher arguments. Also
    /// the requester's local outcome for undecodable data/final.
    BadValue,
    /// error cancel: responder at capacity (before ack).
    Overloaded,
    /// error error: the handler failed.
    HandlerFailed,
    /// error error: responder-internal failure outside the handler.
    InternalError,
    /// error cancel: cancelled by the requester.
    Cancelled,
    /// error cancel: op deadline passed (also the requester's local outcome).
    DeadlineExpired,
    /// error fatal: op `version` with another major number.
    UnsupportedVersion,
    /// local: responder unavailable, unreachable or silent.
    ResponderGone,
    /// local: op IQ answered by a non-retryable IQ error.
    Rejected,
    /// local: op result without `op` child or with a foreign token.
    BadResponse,
    /// local: data `seq` gap or repeat; `count` mismatch; stanzas out of protocol order.
    OutOfOrder,
    /// local: more unanswered data IQs than the window.
    WindowExceeded,
    /// local: discover returned no agent.
    NoCapableAgent,
    /// local: the discover op failed.
    DispatcherUnavailable,
    /// local: a legacy error without `condition`.
    Unspecified,
    /// Any other condition, kept verbatim.
    Other(String),
}

impl Condition {
    /// Wire text.
    pub fn as_str(&self) -> &str {
        match self {
            Condition::BadRequest => "bad-request",
            Condition::ServiceUnavailable => "service-unavailable",
            Condition::NotAuthorized => "not-authorized",
            Condition::AuthorizationUnavailable => "authorization-unavailable",
            Condition::NoHandler => "no-handler",
            Condition::BadValue => "bad-value",
            Condition::Overloaded => "overloaded",
            Condition::HandlerFailed => "handler-failed",
            Condition::InternalError => "internal-error",
            Condition::Cancelled => "cancelled",
            Condition::DeadlineExpired => "deadline-expired",
            Condition::UnsupportedVersion => "unsupported-version",
            Condition::ResponderGone => "responder-gone",
            Condition::Rejected => "rejected",
            Condition::BadResponse => "bad-response",
            Condition::OutOfOrder => "out-of-order",
            Condition::WindowExceeded => "window-exceeded",
            Condition::NoCapableAgent => "no-capable-agent",
            Condition::DispatcherUnavailable => "dispatcher-unavailable",
            Condition::Unspecified => "unspecified",
            Condition::Other(s) => s,
        }
    }

    /// Parse wire text; unknown text becomes [`Condition::Other`].
    pub fn parse(s: &str) -> Self {
        match s {
            "bad-request" => Condition::BadRequest,
            "service-unavailable" => Condition::ServiceUnavailable,
            "not-authorized" => Condition::NotAuthorized,
            "authorization-unavailable" => Condition::AuthorizationUnavailable,
            "no-handler" => Condition::NoHandler,
            "bad-value" => Condition::BadValue,
            "overloaded" => Condition::Overloaded,
            "handler-failed" => Condition::HandlerFailed,
            "internal-error" => Condition::InternalError,
            "cancelled" => Condition::Cancelled,
            "deadline-expired" => Condition::DeadlineExpired,
            "unsupported-version" => Condition::UnsupportedVersion,
            "responder-gone" => Condition::ResponderGone,
            "rejected" => Condition::Rejected,
            "bad-response" => Condition::BadResponse,
            "out-of-order" => Condition::OutOfOrder,
            "window-exceeded" => Condition::WindowExceeded,
            "no-capable-agent" => Condition::NoCapableAgent,
            "dispatcher-unavailable" => Condition::DispatcherUnavailable,
            "unspecified" => Condition::Unspecified,
            other => Condition::Other(other.to_string()),
        }
    }

    /// How this condition travels when a responder (or any receiver) reports it — THE mapping of
    /// the spec's table (`[VAP-ERR]` §10.1, `[VAP-ERR-001]`, `[VAP-ERR-002]`).
    pub fn travel(&self) -> Travel {
        match self {
            Condition::BadRequest => Travel::IqError {
                type_: StanzaErrorType::Modify,
                condition: DefinedCondition::BadRequest,
            },
            Condition::ServiceUnavailable => Travel::IqError {
                type_: StanzaErrorType::Cancel,
                condition: DefinedCondition::ServiceUnavailable,
            },
            Condition::NotAuthorized | Condition::AuthorizationUnavailable => Travel::Nack,
            Condition::NoHandler | Condition::BadValue | Condition::UnsupportedVersion => {
                Travel::Error(ErrorType::Fatal)
            }
            Condition::Overloaded | Condition::Cancelled | Condition::DeadlineExpired => {
                Travel::Error(ErrorType::Cancel)
            }
            Condition::HandlerFailed | Condition::InternalError => Travel::Error(ErrorType::Error),
            _ => Travel::Local,
        }
    }

    /// The Vertebra `<error type>` for this condition (`error` for conditions that do not travel
    /// as an error).
    pub fn error_type(&self) -> ErrorType {
        match self.travel() {
            Travel::Error(t) => t,
            _ => ErrorType::Error,
        }
    }
}

/// How a condition travels (`[VAP-ERR]` §10.1 "how it travels").
#[derive(Debug, Clone, PartialEq)]
pub enum Travel {
    /// As an IQ error answering the offending IQ.
    IqError {
        /// Stanza error type.
        type_: StanzaErrorType,
        /// RFC 6120 condition.
        condition: DefinedCondition,
    },
    /// As the `reason` of a `<nack>`.
    Nack,
    /// As the `condition` of a terminal `<error>` of this type.
    Error(ErrorType),
    /// Never on the wire (requester-local outcome).
    Local,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Condition::parse(&s))
    }
}

impl schemars::JsonSchema for Condition {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Condition".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Vertebra error condition (kebab-case); unknown conditions are kept verbatim"
        })
    }
}

/// A failure reported by a state machine or decoder: who is at fault, the wire condition, and a
/// human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{condition} ({fault:?}): {detail}")]
pub struct ProtocolError {
    /// Who is at fault.
    pub fault: Fault,
    /// The Vertebra condition this maps to.
    pub condition: Condition,
    /// Human-readable detail. Never sent on the wire for `CallerMisuse`.
    pub detail: String,
}

impl ProtocolError {
    /// Build a protocol error.
    pub fn new(fault: Fault, condition: Condition, detail: impl Into<String>) -> Self {
        ProtocolError {
            fault,
            condition,
            detail: detail.into(),
        }
    }

    /// Caller misuse (local bug; never put on the wire).
    pub fn misuse(detail: impl Into<String>) -> Self {
        ProtocolError::new(Fault::CallerMisuse, Condition::BadRequest, detail)
    }

    /// Peer broke the ordering rules (reported as `out-of-order`).
    pub fn violation(detail: impl Into<String>) -> Self {
        ProtocolError::new(Fault::ProtocolViolation, Condition::OutOfOrder, detail)
    }

    /// THE mapping from a failure to the wire (`[VAP-ERR]`): what a receiver sends for it.
    /// Caller misuse never reaches the wire.
    pub fn to_wire(&self) -> WireError {
        if self.fault == Fault::CallerMisuse {
            return WireError::None;
        }
        match self.condition.travel() {
            Travel::IqError { type_, condition } => WireError::Iq {
                type_,
                condition,
                text: self.detail.clone(),
            },
            Travel::Nack => WireError::Nack {
                reason: self.condition.clone(),
            },
            Travel::Error(error_type) => WireError::Terminal {
                error_type,
                condition: self.condition.clone(),
                reason: self.detail.clone(),
            },
            Travel::Local => WireError::None,
        }
    }
}

impl From<DecodeError> for ProtocolError {
    fn from(e: DecodeError) -> Self {
        e.into_protocol()
    }
}

/// How a failure appears on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum WireError {
    /// Answer the offending IQ with this stanza error.
    Iq {
        /// Stanza error type.
        type_: StanzaErrorType,
        /// RFC 6120 defined condition.
        condition: DefinedCondition,
        /// Human-readable text.
        text: String,
    },
    /// End the op with `<nack reason>`.
    Nack {
        /// The reason.
        reason: Condition,
    },
    /// End the op with `<error type condition><string name="reason">`.
    Terminal {
        /// `type`.
        error_type: ErrorType,
        /// `condition`.
        condition: Condition,
        /// `reason` text.
        reason: String,
    },
    /// Nothing goes on the wire.
    None,
}

impl WireError {
    /// Build the `xmpp_parsers` stanza error, if any.
    pub fn to_stanza_error(&self) -> Option<xmpp_parsers::stanza_error::StanzaError> {
        match self {
            WireError::Iq {
                type_,
                condition,
                text,
            } => Some(xmpp_parsers::stanza_error::StanzaError::new(
                type_.clone(),
                condition.clone(),
                "en",
                text.clone(),
            )),
            _ => None,
        }
    }
}
