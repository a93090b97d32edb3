//! The JSON form of the Vertebra payloads (used by the test vectors in `fixtures/vectors/`, by
//! the conformance harness's reports and by ports). Values use the tagged mapping of
//! `[VAP-VAL]` §4.3 ([`crate::Value`]'s serde implementation); payloads are objects tagged by
//! `"element"`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Condition, ErrorType};
use crate::resource::Resource;
use crate::stanza::{
    Ack, Cancel, Data, Final, Load, Nack, Op, OpError, OpResult, Scope, Version, VertebraPayload,
};
use crate::token::{OpToken, RequestToken};
use crate::value::{Args, Value};

/// A decoded Vertebra payload in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "element", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PayloadJson {
    /// `<op>` request.
    Op {
        /// `"1.0"`, or null for a legacy op.
        version: Option<String>,
        /// `token`.
        token: RequestToken,
        /// `type` (normalized path).
        #[serde(rename = "type")]
        op_type: String,
        /// `timeout` ms as sent (null when absent).
        timeout: Option<u32>,
        /// `scope`.
        scope: Option<Scope>,
        /// `window`.
        window: Option<u8>,
        /// Named values.
        args: Args,
        /// Legacy key-less resources.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unkeyed_resources: Vec<Resource>,
    },
    /// `<op>` in an IQ result.
    OpResult {
        /// T:S.
        token: OpToken,
        /// Fast path.
        ack: bool,
    },
    /// `<ack>`.
    Ack {
        /// T:S.
        token: OpToken,
    },
    /// `<nack>`.
    Nack {
        /// T:S.
        token: OpToken,
        /// Reason.
        reason: Condition,
    },
    /// `<data>`.
    Data {
        /// T:S.
        token: OpToken,
        /// `seq`.
        seq: Option<u64>,
        /// Named values.
        args: Args,
    },
    /// `<final>`.
    Final {
        /// T:S.
        token: OpToken,
        /// `count`.
        count: Option<u64>,
        /// Named values (fast path).
        args: Args,
    },
    /// `<error>`.
    Error {
        /// T:S.
        token: OpToken,
        /// `type`.
        #[serde(rename = "type")]
        error_type: ErrorType,
        /// `condition`.
        condition: Option<Condition>,
        /// `reason` text.
        reason: Option<String>,
    },
    /// `<cancel>`.
    Cancel {
        /// T:S.
        token: OpToken,
    },
    /// `<load>`.
    Load {
        /// Load value.
        value: f64,
        /// In-flight ops.
        inflight: Option<u32>,
        /// Capacity.
        capacity: Option<u32>,
        /// Interval ms.
        interval: Option<u32>,
    },
}

impl From<&VertebraPayload> for PayloadJson {
    fn from(p: &VertebraPayload) -> Self {
        match p {
            VertebraPayload::Op(o) => PayloadJson::Op {
                version: match o.version {
                    Version::V1_0 => Some(crate::stanza::VERSION_1_0.to_string()),
                    Version::Legacy => None,
                },
                token: o.token.clone(),
                op_type: o.op_type.to_string(),
                timeout: o.timeout,
                scope: o.scope,
                window: o.window,
                args: o.args.clone(),
                unkeyed_resources: o.unkeyed_resources.clone(),
            },
            VertebraPayload::Ack(Ack { token }) => PayloadJson::Ack {
                token: token.clone(),
            },
            VertebraPayload::Nack(Nack { token, reason }) => PayloadJson::Nack {
                token: token.clone(),
                reason: reason.clone(),
            },
            VertebraPayload::Data(Data { token, seq, args }) => PayloadJson::Data {
                token: token.clone(),
                seq: *seq,
                args: args.clone(),
            },
            VertebraPayload::Final(Final { token, count, args }) => PayloadJson::Final {
                token: token.clone(),
                count: *count,
                args: args.clone(),
            },
            VertebraPayload::Error(OpError {
                token,
                error_type,
                condition,
                reason,
            }) => PayloadJson::Error {
                token: token.clone(),
                error_type: *error_type,
                condition: condition.clone(),
                reason: reason.clone(),
            },
            VertebraPayload::Cancel(Cancel { token }) => PayloadJson::Cancel {
                token: token.clone(),
            },
            VertebraPayload::Load(Load {
                value,
                inflight,
                capacity,
                interval,
            }) => PayloadJson::Load {
                value: *value,
                inflight: *inflight,
                capacity: *capacity,
                interval: *interval,
            },
        }
    }
}

impl From<&OpResult> for PayloadJson {
    fn from(r: &OpResult) -> Self {
        PayloadJson::OpResult {
            token: r.token.clone(),
            ack: r.ack,
        }
    }
}

impl PayloadJson {
    /// Back to the typed payload (`None` for an op result, which is not a [`VertebraPayload`]).
    pub fn to_payload(&self) -> Option<VertebraPayload> {
        Some(match self.clone() {
            PayloadJson::Op {
                version,
                token,
                op_type,
                timeout,
                scope,
                window,
                args,
                unkeyed_resources,
            } => VertebraPayload::Op(Op {
                version: if version.is_some() {
                    Version::V1_0
                } else {
                    Version::Legacy
                },
                token,
                op_type: op_type.into(),
                timeout,
                scope,
                window,
                args,
                unkeyed_resources,
            }),
            PayloadJson::OpResult { .. } => return None,
            PayloadJson::Ack { token } => VertebraPayload::Ack(Ack { token }),
            PayloadJson::Nack { token, reason } => VertebraPayload::Nack(Nack { token, reason }),
            PayloadJson::Data { token, seq, args } => {
                VertebraPayload::Data(Data { token, seq, args })
            }
            PayloadJson::Final { token, count, args } => {
                VertebraPayload::Final(Final { token, count, args })
            }
            PayloadJson::Error {
                token,
                error_type,
                condition,
                reason,
            } => VertebraPayload::Error(OpError {
                token,
                error_type,
                condition,
                reason,
            }),
            PayloadJson::Cancel { token } => VertebraPayload::Cancel(Cancel { token }),
            PayloadJson::Load {
                value,
                inflight,
                capacity,
                interval,
            } => VertebraPayload::Load(Load {
                value,
                inflight,
                capacity,
                interval,
            }),
        })
    }
}

/// Root of the generated `spec/schema/values.schema.json`: one typed value.
pub fn values_schema() -> schemars::Schema {
    schemars::schema_for!(Value)
}

/// Root of the generated `spec/schema/payloads.schema.json`: one payload in JSON.
pub fn payloads_schema() -> schemars::Schema {
    schemars::schema_for!(PayloadJson)
}
