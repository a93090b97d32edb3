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
            Rule::UnsupportedVersion => Fault::Unsupported,
            _ => Fault::Malformed,
        }
    }

    /// The Vertebra condition a responder reports when an incoming op breaks this rule.
    ///
    /// Value-level problems are `bad-value` (`[VAP-VAL]`); a version we do not speak is
    /// `unsupported-version` (`[VAP-VER]`); everything else is `bad-request`.
    pub fn condition(self) -> Condition {
        match self {
            Rule::UnknownValueType
            | Rule::BadI4
            | Rule::BadDouble
            | Rule::BadBoolean
            | Rule::BadBase64
            | Rule::BadDateTime
            | Rule::BadResource
            | Rule::BadNil
            | Rule::BadException
            | Rule::DuplicateName
            | Rule::MissingName
            | Rule::TooDeep
            | Rule::MixedContent
            | Rule::BadPayload => Condition::BadValue,
            Rule::UnsupportedVersion => Condition::UnsupportedVersion,
            _ => Condition::BadRequest,
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

/// A Vertebra error condition (the `condition` attribute of `<error>`, the `reason` attribute of
/// `<nack>`, and the conditions a requester reports locally). Unknown conditions are kept
/// verbatim in [`Condition::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Authorization denied (nack reason).
    NotAuthorized,
    /// The op deadline passed (`[VAP-OPS]` deadlines).
    DeadlineExpired,
    /// The requester cancelled the op.
    Cancelled,
    /// No handler for the operation.
    NoHandler,
    /// The handler failed; reason is its public message only.
    HandlerFailed,
    /// A named value is malformed or of an unknown type.
    BadValue,
    /// Data arrived with a gap or repeat in `seq`.
    OutOfOrder,
    /// The responder disappeared mid-op.
    ResponderGone,
    /// The request is malformed beyond a single value.
    BadRequest,
    /// The op names a protocol version this peer does not speak.
    UnsupportedVersion,
    /// The peer broke the protocol's ordering rules.
    ProtocolViolation,
    /// Any other condition, kept verbatim.
    Other(String),
}

impl Condition {
    /// Wire text.
    pub fn as_str(&self) -> &str {
        match self {
            Condition::NotAuthorized => "not-authorized",
            Condition::DeadlineExpired => "deadline-expired",
            Condition::Cancelled => "cancelled",
            Condition::NoHandler => "no-handler",
            Condition::HandlerFailed => "handler-failed",
            Condition::BadValue => "bad-value",
            Condition::OutOfOrder => "out-of-order",
            Condition::ResponderGone => "responder-gone",
            Condition::BadRequest => "bad-request",
            Condition::UnsupportedVersion => "unsupported-version",
            Condition::ProtocolViolation => "protocol-violation",
            Condition::Other(s) => s,
        }
    }

    /// Parse wire text; unknown text becomes [`Condition::Other`].
    pub fn parse(s: &str) -> Self {
        match s {
            "not-authorized" => Condition::NotAuthorized,
            "deadline-expired" => Condition::DeadlineExpired,
            "cancelled" => Condition::Cancelled,
            "no-handler" => Condition::NoHandler,
            "handler-failed" => Condition::HandlerFailed,
            "bad-value" => Condition::BadValue,
            "out-of-order" => Condition::OutOfOrder,
            "responder-gone" => Condition::ResponderGone,
            "bad-request" => Condition::BadRequest,
            "unsupported-version" => Condition::UnsupportedVersion,
            "protocol-violation" => Condition::ProtocolViolation,
            other => Condition::Other(other.to_string()),
        }
    }

    /// The Vertebra `<error type>` that goes with this condition when a responder reports it.
    pub fn error_type(&self) -> ErrorType {
        match self {
            Condition::DeadlineExpired | Condition::Cancelled => ErrorType::Cancel,
            Condition::NoHandler | Condition::UnsupportedVersion => ErrorType::Fatal,
            _ => ErrorType::Error,
        }
    }
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

    /// Peer protocol violation.
    pub fn violation(detail: impl Into<String>) -> Self {
        ProtocolError::new(
            Fault::ProtocolViolation,
            Condition::ProtocolViolation,
            detail,
        )
    }

    /// THE mapping from a failure to the wire (`[VAP-ERR]`). Used by the state machines for every
    /// error they put on the wire, and by shells that must answer an IQ with an error.
    pub fn to_wire(&self) -> WireError {
        match self.fault {
            Fault::CallerMisuse => WireError::None,
            Fault::Malformed => WireError::Iq {
                type_: StanzaErrorType::Modify,
                condition: DefinedCondition::BadRequest,
                text: self.detail.clone(),
            },
            Fault::Unsupported => WireError::Iq {
                type_: StanzaErrorType::Cancel,
                condition: DefinedCondition::FeatureNotImplemented,
                text: self.detail.clone(),
            },
            Fault::ProtocolViolation => WireError::Iq {
                type_: StanzaErrorType::Modify,
                condition: DefinedCondition::UnexpectedRequest,
                text: self.detail.clone(),
            },
        }
    }

    /// The Vertebra `<error>` a responder sends as the op's terminal stanza for this failure
    /// (`[VAP-ERR]`): type derived from the condition, reason = `detail` unless the fault is a
    /// local one (then the generic condition text).
    pub fn to_vertebra_error(&self) -> (ErrorType, Condition, String) {
        let reason = match self.fault {
            Fault::CallerMisuse => self.condition.as_str().to_string(),
            _ => self.detail.clone(),
        };
        (self.condition.error_type(), self.condition.clone(), reason)
    }
}

impl From<DecodeError> for ProtocolError {
    fn from(e: DecodeError) -> Self {
        e.into_protocol()
    }
}

/// How a failure appears on the wire: an IQ `type='error'` answer, or nothing (local failures).
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
    /// Local failure: nothing goes on the wire.
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
            WireError::None => None,
        }
    }
}
