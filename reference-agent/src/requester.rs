//! The requester API: `direct` (call one JID), `single` (discover, call the least-loaded
//! capable agent, move on to the next on nack / no-handler / overloaded / gone before ack),
//! and `all` (discover, call every agent in parallel, gather per-JID outcomes in discover
//! order, optional reduce). Every call ends with a terminal outcome by its deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_xmpp::parsers::jid::Jid;
use vertebra_protocol::payloads::{DiscoverRequest, DiscoverResponse, OP_DISCOVER};
use vertebra_protocol::{Args, Resource, ResourceScope, Scope, Value};

use crate::node::{merge_chunks, CallError, CallOptions, Node};

/// Outcome of one agent in an `all` dispatch.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentOutcome {
    /// Responder.
    pub jid: Jid,
    /// Its chunks, or its failure.
    pub result: Result<Vec<Args>, CallError>,
}

/// Result of an `all` dispatch ([VAP-DSP-014], [VAP-DSP-018]).
#[derive(Debug, Clone, PartialEq)]
pub struct Gathered {
    /// Per agent, in discover order.
    pub outcomes: Vec<AgentOutcome>,
    /// The reduced value over the successes, when a reducer was given.
    pub reduced: Option<Value>,
}

impl Gathered {
    /// The failed agents.
    pub fn failures(&self) -> impl Iterator<Item = (&Jid, &CallError)> {
        self.outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().err().map(|e| (&o.jid, e)))
    }
}

/// A reduce step: folds the successes (in discover order) into one value.
pub type Reducer = Arc<dyn Fn(&[(Jid, Args)]) -> Value + Send + Sync>;

/// The op scoping resources: top-level named `res` values ([VAP-DSP-004]).
pub fn scope_of(args: &Args) -> ResourceScope {
    let mut s = ResourceScope::new();
    for (k, r) in args.keyed_resources() {
        s.push(Some(k), r.clone());
    }
    s
}

/// Ask the dispatcher who can do `operation` (least loaded first).
pub async fn discover(
    node: &Node,
    dispatcher: &Jid,
    operation: &str,
    resources: &ResourceScope,
    limit: Option<u32>,
    timeout: Duration,
) -> Result<Vec<(Jid, f64)>, CallError> {
    let op = Resource::parse(operation)
        .map_err(|e| CallError::local("bad-request", format!("operation: {}", e.detail)))?;
    let req = DiscoverRequest {
        operation: op,
        resources: resources.clone(),
        limit,
    };
    let chunks = node
        .call_collect(
            dispatcher.clone(),
            OP_DISCOVER,
            req.to_args(),
            CallOptions {
                timeout,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| CallError {
            condition: "dispatcher-unavailable".into(),
            kind: "local".into(),
            reason: Some(e.to_string()),
            acked: false,
        })?;
    let resp = DiscoverResponse::from_args(&merge_chunks(&chunks))
        .map_err(|e| CallError::local("bad-response", e.detail))?;
    Ok(resp.jids.into_iter().zip(resp.loads).collect())
}

/// `direct`: call one full JID.
pub async fn call_direct(
    node: &Node,
    to: Jid,
    operation: &str,
    args: Args,
    timeout: Duration,
) -> Result<Vec<Args>, CallError> {
    node.call_collect(
        to,
        operation,
        args,
        CallOptions {
            timeout,
            scope: Some(Scope::Direct),
            ..Default::default()
        },
    )
    .await
}

/// `single`: returns the JID that served the call and its chunks.
pub async fn call_single(
    node: &Node,
    dispatcher: &Jid,
    operation: &str,
    args: Args,
    timeout: Duration,
) -> Result<(Jid, Vec<Args>), CallError> {
    let deadline = Instant::now() + timeout;
    let list = discover(node, dispatcher, operation, &scope_of(&args), None, timeout).await?;
    if list.is_empty() {
        // [VAP-DSP-005]
        return Err(CallError::local(
            "no-capable-agent",
            format!("no agent can do {operation}"),
        ));
    }
    let mut last = CallError::local("no-capable-agent", "no candidate left");
    for (jid, _) in list {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break; // [VAP-DSP-011]
        }
        let r = node
            .call_collect(
                jid.clone(),
                operation,
                args.clone(),
                CallOptions {
                    timeout: left,
                    scope: Some(Scope::Single),
                    ..Default::default()
                },
            )
            .await;
        match r {
            Ok(chunks) => return Ok((jid, chunks)),
            Err(e) if e.try_next() => last = e, // [VAP-DSP-009]
            Err(e) => return Err(e),            // [VAP-DSP-010]
        }
    }
    Err(last)
}

/// `all`: call every capable agent, gather, optionally reduce.
pub async fn call_all(
    node: &Node,
    dispatcher: &Jid,
    operation: &str,
    args: Args,
    timeout: Duration,
    reducer: Option<Reducer>,
) -> Result<Gathered, CallError> {
    let deadline = Instant::now() + timeout;
    let list = discover(node, dispatcher, operation, &scope_of(&args), None, timeout).await?;
    if list.is_empty() {
        return Err(CallError::local(
            "no-capable-agent",
            format!("no agent can do {operation}"),
        ));
    }
    let left = deadline.saturating_duration_since(Instant::now());
    // Start every call (calls are independent tasks); [VAP-DSP-013]'s limit of 64 ops waiting
    // for their op result at once is kept by starting in batches.
    let mut handles = Vec::with_capacity(list.len());
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    for (jid, _) in &list {
        let n = node.clone();
        let j = jid.clone();
        let a = args.clone();
        let op = operation.to_string();
        let sem = sem.clone();
        handles.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let mut h = n.call(
                j,
                &op,
                a,
                CallOptions {
                    timeout: left,
                    scope: Some(Scope::All),
                    ..Default::default()
                },
            );
            let mut chunks = vec![];
            let mut permit = permit.ok();
            while let Some(ev) = h.next().await {
                match ev {
                    // [VAP-DSP-013] counts ops waiting for their op result.
                    crate::node::CallEvent::Accepted | crate::node::CallEvent::Acked => {
                        permit.take();
                    }
                    crate::node::CallEvent::Data(d) => {
                        permit.take();
                        chunks.push(d)
                    }
                    crate::node::CallEvent::Done { .. } => return Ok(chunks),
                    crate::node::CallEvent::Failed(e) => return Err(e),
                }
            }
            Err(CallError::local("internal", "call ended without outcome"))
        }));
    }
    let mut outcomes = Vec::with_capacity(list.len());
    for ((jid, _), h) in list.into_iter().zip(handles) {
        let result = match tokio::time::timeout_at(deadline + crate::node::DEADLINE_GRACE, h).await
        {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(CallError::local("internal", "call task failed")),
            Err(_) => Err(CallError::local(
                "deadline-expired",
                "no outcome by the deadline",
            )),
        };
        outcomes.push(AgentOutcome { jid, result });
    }
    let reduced = reducer.map(|r| {
        let ok: Vec<(Jid, Args)> = outcomes
            .iter()
            .filter_map(|o| {
                o.result
                    .as_ref()
                    .ok()
                    .map(|c| (o.jid.clone(), merge_chunks(c)))
            })
            .collect();
        r(&ok)
    });
    Ok(Gathered { outcomes, reduced })
}
