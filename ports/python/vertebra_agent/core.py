"""The protocol logic of a Vertebra agent: responder lifecycle, requester calls, duplicates.

Everything here is independent of the XMPP library: the core receives IQ sets through
:meth:`AgentCore.handle_iq` (which returns the IQ answer synchronously, so the caller sends it
before anything the op does next) and sends through a :class:`~vertebra_agent.transport.Transport`.
Requirement IDs in comments refer to ``spec/``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from .actor import Actor, Context, Handler, HandlerError, OpFailure
from .resources import Resource, ResourceError
from .tokens import TokenError, new_token, parse_token
from .transport import IqError, IqTimeout, Reply, Transport, bare, domain
from .values import NS, BadValue, _local, decode_named, decode_value, encode_named, format_double

log = logging.getLogger("vertebra_agent")

__all__ = ["AgentCore", "CallResult", "Registration", "q"]

DUPLICATE_WINDOW_S = 300.0  # [VAP-OPS-065]
DEFAULT_WINDOW = 8  # [VAP-OPS-035]
MAX_WINDOW = 64  # [VAP-OPS-014]
LEGACY_TIMEOUT_MS = 60_000  # [VAP-OPS-060]
MAX_TIMEOUT_MS = 86_400_000  # [VAP-OPS-011]
PER_IQ_TIMEOUT_S = 10.0  # [VAP-OPS-063]
GRACE_S = 2.0  # [VAP-OPS-062]
RETRY_BASE_S = 0.1  # [VAP-OPS-073]
MAX_ATTEMPTS = 4  # [VAP-OPS-074]
RETRYABLE_CONDITIONS = {"service-unavailable", "recipient-unavailable"}  # [VAP-OPS-071]
GONE_CONDITIONS = {"service-unavailable", "recipient-unavailable", "item-not-found"}  # [VAP-OPS-078]
AUTHORIZE_TIMEOUT_MS = 2000  # [VAP-SEC] deny when the dispatcher does not answer in 2 s


# the conditions that travel as <error>, with the type spec/10-errors.md assigns them
ERROR_CONDITIONS = {
    "no-handler": "fatal",
    "bad-value": "fatal",
    "unsupported-version": "fatal",
    "overloaded": "cancel",
    "cancelled": "cancel",
    "deadline-expired": "cancel",
    "handler-failed": "error",
    "internal-error": "error",
}


def q(local: str) -> str:
    """Clark name of a Vertebra element."""
    return f"{{{NS}}}{local}"


def element(local: str, token: str, **attrs: str) -> ET.Element:
    el = ET.Element(q(local), {"token": token})
    for k, v in attrs.items():
        el.set(k, v)
    return el


def error_element(token: str, etype: str, condition: str, reason: str) -> ET.Element:
    el = element("error", token, type=etype, condition=condition)
    encode_named({"reason": reason}, el)  # [VAP-OPS-048]
    return el


# ---------------------------------------------------------------------------------------------
# registrations


@dataclass
class Registration:
    """One handler registered for an operation path, with the keyed resources it provides."""

    path: Resource
    handler: Handler
    resources: dict[str, list[Resource]] = field(default_factory=dict)
    scoped: bool = True

    def in_scope(self, scoping: dict[str, Resource], keyless: list[Resource] = ()) -> bool:
        """[VAP-RES-014] [VAP-RES-015]; key-less legacy resources match any key [VAP-VER-009]."""
        if not self.scoped:
            return True
        for key, wanted in scoping.items():
            provided = self.resources.get(key, [])
            if not any(p.matches(wanted) for p in provided):
                return False
        for wanted in keyless:
            if not any(p.matches(wanted) for lst in self.resources.values() for p in lst):
                return False
        return True


def select_handler(
    regs: list[Registration],
    op_type: Resource,
    scoping: dict[str, Resource],
    keyless: list[Resource] = (),
):
    """[VAP-RES-013] [VAP-RES-016] [VAP-RES-017]: most specific path in scope, first on ties."""
    best: Registration | None = None
    for reg in regs:
        if not reg.path.is_prefix_of(op_type) or not reg.in_scope(scoping, keyless):
            continue
        if best is None or len(reg.path.segments) > len(best.path.segments):
            best = reg
    return best


# ---------------------------------------------------------------------------------------------
# requester side


@dataclass
class CallResult:
    """The terminal outcome of a call made by this agent.

    ``outcome`` is ``"final"`` on success, otherwise the condition (``not-authorized``,
    ``handler-failed``, ``deadline-expired``, ``responder-gone``, ``out-of-order``,
    ``bad-response`` …).
    """

    outcome: str
    chunks: list[dict[str, Any]] = field(default_factory=list)
    error_type: str | None = None
    reason: str = ""
    acked: bool = False  # the responder acked (so work may have started)

    @property
    def ok(self) -> bool:
        return self.outcome == "final"

    def merged(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c in self.chunks:
            out.update(c)
        return out


class _Call:
    def __init__(self, to: str, t: str, loop: asyncio.AbstractEventLoop):
        self.to = to
        self.t = t
        self.token: str | None = None  # T:S once known
        self.chunks: list[dict[str, Any]] = []
        self.next_seq = 0
        self.window = DEFAULT_WINDOW
        self.ahead: dict[int, dict[str, Any]] = {}  # chunks held back behind a gap
        self.saw_seq = False
        self.acked = False
        self.done: asyncio.Future[CallResult] = loop.create_future()

    def finish(self, result: CallResult) -> None:
        if not self.done.done():
            result.acked = self.acked
            self.done.set_result(result)


# ---------------------------------------------------------------------------------------------
# responder side


class _Served:
    """One op instance this agent serves, identified by (our JID, T:S) [VAP-OPS-008]."""

    def __init__(self, requester: str, token: str, deadline: float, window: int, legacy: bool):
        self.requester = requester
        self.token = token
        self.deadline = deadline
        self.window = window
        self.legacy = legacy
        self.task: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.end_reason: str | None = None  # "cancelled" | "deadline-expired"
        self.terminal_sent = False
        self.acked = False
        self.seq = 0
        self.inflight: set[asyncio.Task] = set()
        self.slots = asyncio.Semaphore(window)
        self.data_failed: BaseException | None = None


_FOREIGN = "requester of another domain"
_UNSUPPORTED = "unsupported protocol version"
_VERSION_RE = re.compile(r"([0-9]+)\.[0-9]+\Z")


def _supported_version(version: str) -> bool:
    """Major 1, any minor [VAP-VER-003]."""
    m = _VERSION_RE.match(version)
    return m is not None and int(m.group(1)) == 1


class _Abandon(Exception):
    """The requester stopped answering: end the op without sending anything more."""


class AgentCore:
    """A Vertebra agent's protocol engine (responder, requester, load reporter)."""

    def __init__(
        self,
        transport: Transport,
        *,
        dispatchers: list[str] | None = None,
        authorize: bool = True,
        capacity: int = 8,
        load_interval_ms: int = 1000,
        advertise_ttl: int = 3600,
        reject_when_full: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.transport = transport
        self.dispatchers = list(dispatchers or [])
        self.authorize_enabled = authorize
        self.capacity = capacity
        self.load_interval_ms = load_interval_ms
        self.advertise_ttl = advertise_ttl
        self.reject_when_full = reject_when_full
        self.load_enabled = True  # False: presence without <load> (the agent reports no load)
        self.registrations: list[Registration] = []
        self._clock = clock
        self._seen: OrderedDict[tuple[str, str], tuple[float, Reply]] = OrderedDict()
        self._served: dict[str, _Served] = {}
        self._calls: dict[tuple[str, str], _Call] = {}
        self._auth_cache: dict[tuple, tuple[float, bool]] = {}
        self._load_override: float | None = None
        self._last_load_sent: tuple | None = None
        self._last_load_time = float("-inf")
        self._load_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self._presence_to: set[str] = set()
        self.features: set[str] = set()

    # -- registration -----------------------------------------------------------------------

    def add_handler(self, path: str, handler: Handler, resources: dict | None = None,
                    *, scoped: bool = True) -> None:
        res = {k: [Resource(r) for r in v] for k, v in (resources or {}).items()}
        self.registrations.append(Registration(Resource(path), handler, res, scoped))

    def add_actor(self, actor: Actor) -> None:
        for path, handler in actor.operations().items():
            self.add_handler(path, handler, actor.resources, scoped=actor.scoped)

    # -- incoming IQs -----------------------------------------------------------------------

    def handle_iq_children(
        self, frm: str, iq_id: str, iq_type: str, children: list[ET.Element]
    ) -> Reply:
        """An IQ get/set with Vertebra content: exactly one child is allowed [VAP-TRN-005]
        (two children: ``bad-request``; the spec leaves it open, SPEC-FINDINGS.md B18)."""
        if len(children) != 1:
            return Reply.error("modify", "bad-request")
        return self.handle_iq(frm, iq_id, iq_type, children[0])

    def handle_iq(self, frm: str, iq_id: str, iq_type: str, child: ET.Element) -> Reply:
        """Answer one IQ get/set whose child is in NS. Called in stream order [VAP-TRN-027]."""
        key = (frm, iq_id)
        now = self._clock()
        self._expire_seen(now)
        if key in self._seen:  # [VAP-OPS-066] [VAP-OPS-067]
            return self._seen[key][1]
        reply = self._dispatch(frm, iq_type, child)
        self._seen[key] = (now, reply)  # [VAP-OPS-065]
        return reply

    def _expire_seen(self, now: float) -> None:
        while self._seen:
            k, (t, _) = next(iter(self._seen.items()))
            if now - t < DUPLICATE_WINDOW_S:
                break
            del self._seen[k]

    def _dispatch(self, frm: str, iq_type: str, child: ET.Element) -> Reply:
        local = child.tag[len(NS) + 2 :] if child.tag.startswith(f"{{{NS}}}") else None
        if local == "op":
            if iq_type == "get" and child.get("version") is not None:
                return Reply.error("modify", "bad-request")  # a 1.0 op must be a set
            return self._on_op(frm, child)  # [VAP-TRN-012] legacy get accepted
        if iq_type != "set":
            return Reply.error("modify", "bad-request")
        if local == "cancel":
            return self._on_cancel(frm, child)
        if local in ("ack", "nack", "data", "final", "error"):
            return self._on_call_stanza(frm, local, child)
        return Reply.error("modify", "bad-request")  # [VAP-TRN-010]

    # -- responder: op ----------------------------------------------------------------------

    def _on_op(self, frm: str, el: ET.Element) -> Reply:
        loop = asyncio.get_running_loop()
        received = loop.time()  # [VAP-OPS-060]
        token_in = el.get("token", "")
        try:
            parse_token(token_in)
        except TokenError:
            return Reply.error("modify", "bad-request")  # [VAP-OPS-006]
        version = el.get("version")
        legacy = version is None
        s = new_token()  # [VAP-OPS-002]
        token = f"{token_in.split(':')[-1]}:{s}"  # [VAP-OPS-003]

        problem: str | None = None
        timeout_ms = LEGACY_TIMEOUT_MS
        raw_timeout = el.get("timeout")
        if raw_timeout is not None or not legacy:
            try:
                timeout_ms = int((raw_timeout or "").strip())
                if not 1 <= timeout_ms <= MAX_TIMEOUT_MS:
                    raise ValueError
            except ValueError:
                problem = "bad timeout"  # [VAP-OPS-018]
                timeout_ms = LEGACY_TIMEOUT_MS
        window = DEFAULT_WINDOW
        raw_window = el.get("window")
        if raw_window is not None:
            try:
                window = int(raw_window.strip())
                if not 1 <= window <= MAX_WINDOW:
                    raise ValueError
            except ValueError:
                problem = problem or "bad window"
                window = DEFAULT_WINDOW
        scope = el.get("scope")
        if scope is not None and scope not in ("all", "single", "direct"):
            problem = problem or f"bad scope {scope!r}"  # as fixtures/vectors (SPEC-FINDINGS B19)
        op_type: Resource | None = None
        try:
            op_type = Resource(el.get("type", ""))
        except ResourceError:
            problem = problem or "bad operation type"
        values: dict[str, Any] = {}
        keyless: list[Resource] = []
        try:
            if legacy:
                values, keyless = _decode_legacy(el)
            else:
                values = decode_named(el)
        except BadValue as e:
            problem = problem or f"bad value: {e}"  # [VAP-OPS-051]
        if not legacy and not _supported_version(version):
            problem = _UNSUPPORTED  # [VAP-VER-004]

        served = _Served(frm, token, received + timeout_ms / 1000.0, window, legacy)
        self._served[token] = served
        self._load_changed()  # one more op in flight [VAP-LOAD-006]
        scoping = {k: v for k, v in values.items() if isinstance(v, Resource)}  # [VAP-RES-011]
        foreign = domain(frm) != domain(self.transport.jid)  # [VAP-SEC-021]
        reg = None if foreign or problem or op_type is None else select_handler(
            self.registrations, op_type, scoping, keyless
        )
        fast = False
        if foreign:
            problem = _FOREIGN
        elif reg is not None and not legacy and not self._full():  # [VAP-OPS-026]
            fast = self._cached_decision(frm, op_type, scoping) is True
        served.timer = loop.call_at(served.deadline, self._expire, served)
        served.task = loop.create_task(
            self._serve(served, problem, reg, op_type, values, scoping, fast)
        )
        result = ET.Element(q("op"), {"token": token})  # [VAP-OPS-019]
        if fast:
            result.set("ack", "true")  # [VAP-OPS-024]
        return Reply.result(result)

    def _expire(self, served: _Served) -> None:
        if not served.terminal_sent and served.end_reason is None:
            served.end_reason = "deadline-expired"  # [VAP-OPS-061]
            if served.task is not None:
                served.task.cancel()

    def _on_cancel(self, frm: str, el: ET.Element) -> Reply:
        served = self._served.get(el.get("token", ""))
        # [VAP-OPS-057] only the requester may cancel; [VAP-OPS-054] always an IQ result
        if served is not None and served.requester == frm and not served.terminal_sent:
            if served.end_reason is None:
                served.end_reason = "cancelled"  # [VAP-OPS-055]
                if served.task is not None:
                    served.task.cancel()
        return Reply.result()

    async def _serve(self, op: _Served, problem, reg, op_type, values, scoping, fast) -> None:
        try:
            try:
                if problem is _FOREIGN:
                    await self._terminal(op, element("nack", op.token, reason="not-authorized"))
                    return
                if problem is _UNSUPPORTED:
                    await self._terminal(
                        op, error_element(op.token, "fatal", "unsupported-version", problem)
                    )
                    return
                if problem is not None:
                    await self._terminal(op, error_element(op.token, "fatal", "bad-value", problem))
                    return
                if reg is None:  # [VAP-OPS-049] no ack/nack, no authorization
                    await self._terminal(
                        op, error_element(op.token, "fatal", "no-handler", f"no handler for {op_type}")
                    )
                    return
                if not fast:
                    # [VAP-OPS-084] step 6: capacity, before authorization and before any ack
                    if self._full():
                        await self._terminal(  # [VAP-OPS-082] [VAP-OPS-083]
                            op, error_element(op.token, "cancel", "overloaded", "at capacity")
                        )
                        return
                    allowed, why = await self._authorize(op.requester, op_type, scoping, op)
                    if not allowed:
                        await self._terminal(op, element("nack", op.token, reason=why))
                        return
                    # [VAP-OPS-028] ack, then [VAP-OPS-029] wait for its IQ result before work
                    await self._send_reliably(op, element("ack", op.token))
                op.acked = True
                self._load_changed()
                await self._run_handler(op, reg, op_type, values, scoping)
            except asyncio.CancelledError:
                if op.end_reason is None:
                    raise  # shutdown: not ours to report
                await self._cancel_inflight(op)
                reason = (
                    "cancelled by requester"
                    if op.end_reason == "cancelled"
                    else "deadline expired"
                )
                await self._terminal(
                    op, error_element(op.token, "cancel", op.end_reason, reason), wait=False
                )
        except _Abandon as e:
            log.info("op %s abandoned: %s", op.token, e)
            op.terminal_sent = True
        except Exception:  # noqa: BLE001 - failure outside the handler [VAP-ERR-003]
            log.exception("internal error serving %s", op.token)
            try:
                await self._terminal(
                    op, error_element(op.token, "error", "internal-error", "internal error")
                )
            except _Abandon:
                pass
        finally:
            if op.timer is not None:
                op.timer.cancel()
            self._forget_later(op)
            self._load_changed()

    async def _run_handler(self, op: _Served, reg: Registration, op_type, values, scoping):
        ctx = Context(
            requester=op.requester,
            token=op.token,
            operation=op_type,
            values=values,
            resources=scoping,
            deadline=op.deadline,
            _send=lambda chunk: self._send_data(op, chunk),
            _set_load=self.set_load,
        )
        self._load_changed()
        try:
            if inspect.isasyncgenfunction(reg.handler):
                async for chunk in reg.handler(ctx):
                    if chunk is not None:
                        await self._send_data(op, chunk)
            else:
                ret = reg.handler(ctx)
                if inspect.isawaitable(ret):
                    ret = await ret
                if ret is not None:
                    await self._send_data(op, ret)
            await self._drain(op)
        except asyncio.CancelledError:
            raise
        except _Abandon:
            raise
        except OpFailure as e:
            await self._drain_quietly(op)
            etype = ERROR_CONDITIONS.get(e.condition)
            if etype is None:  # only conditions of the errors table [VAP-ERR-001]
                etype, condition, reason = "error", "handler-failed", e.reason
            else:
                condition, reason = e.condition, e.reason
            await self._terminal(op, error_element(op.token, etype, condition, reason))
            return
        except HandlerError as e:
            await self._drain_quietly(op)
            await self._terminal(
                op, error_element(op.token, "error", "handler-failed", e.public_message)
            )
            return
        except BadValue as e:
            await self._drain_quietly(op)
            await self._terminal(
                op, error_element(op.token, "error", "handler-failed", f"bad result value: {e}")
            )
            return
        except Exception:  # noqa: BLE001 - reported without internals [VAP-OPS-050]
            log.exception("handler for %s failed", op_type)
            await self._drain_quietly(op)
            await self._terminal(
                op, error_element(op.token, "error", "handler-failed", "the handler failed")
            )
            return
        if op.end_reason is not None:  # the handler swallowed its cancellation
            raise asyncio.CancelledError
        count = op.seq
        await self._terminal(op, element("final", op.token, count=str(count)))  # [VAP-OPS-042]

    async def _send_data(self, op: _Served, chunk: dict[str, Any]) -> None:
        if op.end_reason is not None:  # cancelled or expired: nothing more for this op
            raise asyncio.CancelledError
        if op.data_failed is not None:
            raise _Abandon(str(op.data_failed))
        el = element("data", op.token, seq=str(op.seq))  # [VAP-OPS-034]
        encode_named(chunk, el)
        await op.slots.acquire()  # [VAP-OPS-035] bounded window
        op.seq += 1
        task = asyncio.get_running_loop().create_task(self._data_iq(op, el))
        op.inflight.add(task)
        task.add_done_callback(op.inflight.discard)

    async def _data_iq(self, op: _Served, el: ET.Element) -> None:
        try:
            await self._send_reliably(op, el)
        except _Abandon as e:
            op.data_failed = e
            self._abandon(op, e)
        finally:
            op.slots.release()

    def _abandon(self, op: _Served, why: Exception) -> None:
        """A data IQ of the op failed for good: stop its work now and send nothing more for it,
        not even ``deadline-expired`` later [VAP-OPS-085] (SPEC-FINDINGS B9)."""
        if op.terminal_sent:
            return
        log.info("op %s abandoned: %s", op.token, why)
        op.terminal_sent = True
        if op.timer is not None:
            op.timer.cancel()
        me = asyncio.current_task()
        for t in list(op.inflight):
            if t is not me:
                t.cancel()
        if op.task is not None and not op.task.done():
            op.task.cancel()

    async def _drain(self, op: _Served) -> None:
        """[VAP-OPS-041] every data result before the terminal stanza."""
        if op.inflight:
            await asyncio.gather(*list(op.inflight))
        if op.data_failed is not None:
            raise _Abandon(str(op.data_failed))

    async def _drain_quietly(self, op: _Served) -> None:
        if op.inflight:
            await asyncio.gather(*list(op.inflight), return_exceptions=True)
        if op.data_failed is not None:
            raise _Abandon(str(op.data_failed))

    async def _cancel_inflight(self, op: _Served) -> None:
        for t in list(op.inflight):
            t.cancel()
        if op.inflight:
            await asyncio.gather(*list(op.inflight), return_exceptions=True)

    async def _terminal(self, op: _Served, el: ET.Element, wait: bool = True) -> None:
        """Send the op's one terminal stanza [VAP-OPS-045]."""
        if op.terminal_sent:
            return
        op.terminal_sent = True
        if op.timer is not None:
            op.timer.cancel()
        if not wait:
            # after the deadline we must not wait for the answer [VAP-OPS-064]
            self._spawn(self._fire_and_forget(op.requester, el))
            return
        try:
            await self._send_reliably(op, el)
        except _Abandon as e:
            log.info("terminal stanza of %s not acknowledged: %s", op.token, e)

    async def _fire_and_forget(self, to: str, el: ET.Element) -> None:
        try:
            await self.transport.send_set(to, el, iq_id=self.transport.new_id(), timeout=GRACE_S)
        except (IqError, IqTimeout) as e:
            log.info("late terminal stanza to %s not acknowledged: %s", to, e)

    async def _send_reliably(self, op: _Served, el: ET.Element) -> None:
        """Send an IQ set of a served op, retrying within the op deadline [VAP-OPS-064]."""
        loop = asyncio.get_running_loop()
        try:
            await send_with_retries(self.transport, op.requester, el, op.deadline, loop)
        except (IqError, IqTimeout) as e:
            raise _Abandon(f"{el.tag}: {e}") from None

    def _forget_later(self, op: _Served) -> None:
        # keep the instance a little so late cancels are recognised, then drop it
        loop = asyncio.get_running_loop()
        loop.call_later(DUPLICATE_WINDOW_S, self._served.pop, op.token, None)

    # -- authorization ----------------------------------------------------------------------

    def _auth_key(self, requester: str, op_type: Resource, scoping: dict[str, Resource]):
        # [VAP-SEC-011] keyed by the requester's bare JID
        return (bare(requester), str(op_type), tuple(sorted((k, str(v)) for k, v in scoping.items())))

    def _cached_decision(self, requester, op_type, scoping) -> bool | None:
        if not self.authorize_enabled:
            return True
        hit = self._auth_cache.get(self._auth_key(requester, op_type, scoping))
        if hit is None:
            return None
        expires, allowed = hit
        if self._clock() >= expires:
            return None
        return allowed

    async def _authorize(self, requester, op_type, scoping, op: _Served) -> tuple[bool, str]:
        """Ask the dispatcher before ack; no answer in time → deny."""
        cached = self._cached_decision(requester, op_type, scoping)
        if cached is not None:
            return cached, "not-authorized"
        if not self.dispatchers:
            return False, "not-authorized"  # [VAP-SEC-010]
        loop = asyncio.get_running_loop()
        budget_ms = int(min(AUTHORIZE_TIMEOUT_MS, max(1.0, (op.deadline - loop.time()) * 1000)))
        args = {
            "from": requester,
            "to": self.transport.jid,
            "operation": op_type,
            "resources": dict(scoping),
        }
        result = await self.call(
            self.dispatchers[0], "/security/authorize", args, timeout_ms=budget_ms, grace_s=0.0
        )
        answer = result.merged()
        if not result.ok or not isinstance(answer.get("response"), str):  # [VAP-SEC-009]
            log.warning("authorization for %s failed: %s", op.token, result.outcome)
            return False, "authorization-unavailable"
        allowed = answer.get("response") == "authorized"  # [VAP-SEC-008]
        ttl = answer.get("ttl", 0)
        if allowed and isinstance(ttl, int) and not isinstance(ttl, bool) and ttl > 0:
            # [VAP-SEC-011] cache only "authorized"; [VAP-SEC-012] never ttl 0/absent
            self._auth_cache[self._auth_key(requester, op_type, scoping)] = (
                self._clock() + ttl,
                allowed,
            )
        return allowed, "not-authorized"

    # -- requester ---------------------------------------------------------------------------

    async def call(
        self,
        to: str,
        op_type: str,
        values: dict[str, Any] | None = None,
        *,
        timeout_ms: int = 10_000,
        window: int | None = None,
        scope: str | None = "direct",
        grace_s: float = GRACE_S,
        cancel: asyncio.Event | None = None,
    ) -> CallResult:
        """Call operation ``op_type`` on ``to`` and wait for its terminal outcome.

        Setting ``cancel`` sends ``<cancel>`` [VAP-OPS-053]; the call then ends as ``cancelled``
        when the responder's cancelled error arrives or the deadline passes [VAP-OPS-058].
        """
        loop = asyncio.get_running_loop()
        t = new_token()  # [VAP-OPS-001]
        deadline = loop.time() + timeout_ms / 1000.0
        hard = deadline + grace_s  # [VAP-OPS-062]
        el = ET.Element(
            q("op"),
            {"version": "1.0", "token": t, "type": str(Resource(op_type)),
             "timeout": str(timeout_ms)},
        )
        if scope:
            el.set("scope", scope)
        if window is not None:
            el.set("window", str(window))
        encode_named(values, el)
        if to not in self._presence_to:
            # so that the responder's unavailable presence reaches us [VAP-LOAD-016]
            self._presence_to.add(to)
            try:
                self.transport.send_presence(to, None)
            except Exception:  # noqa: BLE001 - best effort (a SHOULD)
                log.debug("directed presence to %s failed", to, exc_info=True)
        c = _Call(to, t, loop)
        if window is not None:
            c.window = window
        self._calls[(to, t)] = c
        try:
            try:
                res = await send_with_retries(self.transport, to, el, hard, loop)
            except IqError as e:  # [VAP-OPS-078] / [VAP-ERR-006]
                c.finish(CallResult("responder-gone" if e.condition in GONE_CONDITIONS
                                    else "rejected", reason=str(e)))
                return c.done.result()
            except IqTimeout:
                c.finish(CallResult("responder-gone" if loop.time() < hard
                                    else "deadline-expired", reason="no answer to op"))
                return c.done.result()
            # [VAP-VER-015] accept an op child without our namespace (R style) or an echo (E)
            is_op = res is not None and res.tag in (q("op"), "op", "{jabber:client}op")
            token = res.get("token") if is_op else None
            if token is None or not token.startswith(t + ":"):  # [VAP-OPS-023]
                c.finish(CallResult("bad-response", reason="bad op result"))
                return c.done.result()
            if c.token is None:
                c.token = token  # [VAP-OPS-022]
            if res.get("ack") == "true":
                c.acked = True  # [VAP-OPS-027]
            if cancel is not None:
                watcher = loop.create_task(self._cancel_when(cancel, c, hard))
                c.done.add_done_callback(lambda _f: watcher.cancel())
            try:
                return await asyncio.wait_for(asyncio.shield(c.done), max(0.0, hard - loop.time()))
            except asyncio.TimeoutError:
                outcome = "cancelled" if cancel is not None and cancel.is_set() else "deadline-expired"
                c.finish(CallResult(outcome, c.chunks, reason="no terminal stanza"))
                return c.done.result()
        finally:
            c.finish(CallResult("cancelled", c.chunks))
            self._calls.pop((to, t), None)

    async def _cancel_when(self, event: asyncio.Event, c: _Call, hard: float) -> None:
        await event.wait()
        if c.done.done() or c.token is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await send_with_retries(self.transport, c.to, element("cancel", c.token), hard, loop)
        except (IqError, IqTimeout) as e:
            c.finish(CallResult("cancelled", c.chunks, reason=f"cancel not delivered: {e}"))

    def _on_call_stanza(self, frm: str, kind: str, el: ET.Element) -> Reply:
        """ack/nack/data/final/error for a call we made; always an IQ result [VAP-OPS-031]."""
        token = el.get("token", "")
        try:
            parts = parse_token(token)
            if len(parts) != 2:
                raise TokenError("not T:S")
        except TokenError:
            return Reply.error("modify", "bad-request")  # as fixtures/vectors (B20)
        c = self._calls.get((frm, parts[0]))
        if c is None or c.done.done():  # [VAP-OPS-046]
            return Reply.result()
        if c.token is None:
            if not token.startswith(c.t + ":"):
                return Reply.result()
            c.token = token
        elif token != c.token:  # [VAP-OPS-004]
            return Reply.result()
        if kind == "ack":
            c.acked = True
        elif kind == "nack":  # [VAP-OPS-032] [VAP-ERR-005]
            reason = el.get("reason")
            if reason not in ("not-authorized", "authorization-unavailable"):
                reason = "not-authorized"
            c.finish(CallResult(reason, c.chunks))
        elif kind == "data":
            try:
                values = decode_named(el)
            except BadValue as e:  # [VAP-ERR-007]
                c.finish(CallResult("bad-value", c.chunks, reason=str(e)))
                return Reply.result()
            raw = el.get("seq")
            if raw is None and not c.saw_seq:  # legacy responder: arrival order [VAP-VER-013]
                c.chunks.append(values)
                c.next_seq += 1
                return Reply.result()
            c.saw_seq = True
            try:
                seq = int((raw or "").strip())
            except ValueError:
                seq = -1
            # [VAP-OPS-038]: a repeat in a new IQ, or beyond the window, is out-of-order;
            # a gap inside the window is held back [VAP-OPS-037]
            if seq < c.next_seq or seq in c.ahead or seq >= c.next_seq + c.window:
                c.finish(CallResult("out-of-order", c.chunks, reason=f"seq {raw}"))
                return Reply.result()
            c.ahead[seq] = values
            while c.next_seq in c.ahead:
                c.chunks.append(c.ahead.pop(c.next_seq))
                c.next_seq += 1
        elif kind == "final":
            try:
                last = decode_named(el)
            except BadValue as e:
                c.finish(CallResult("bad-value", c.chunks, reason=str(e)))
                return Reply.result()
            if len(el):
                c.chunks.append(last)
            count = el.get("count")
            if c.ahead:  # a chunk never arrived
                c.finish(CallResult("out-of-order", c.chunks, reason="gap before final"))
            elif count is not None and count.strip() != str(len(c.chunks)):  # [VAP-OPS-044]
                c.finish(CallResult("out-of-order", c.chunks, reason=f"count {count}"))
            else:
                c.finish(CallResult("final", c.chunks))
        elif kind == "error":
            reason = ""
            try:
                reason = str(decode_named(el).get("reason", ""))
            except BadValue:
                pass
            c.finish(CallResult(el.get("condition") or "unspecified", c.chunks,  # [VAP-VER-016]
                                error_type=el.get("type"), reason=reason))
        return Reply.result()

    def peer_unavailable(self, frm: str) -> None:
        """Unavailable presence from ``frm``: its calls end with responder-gone [VAP-OPS-077]."""
        for (to, _), c in list(self._calls.items()):
            if to == frm:
                c.finish(CallResult("responder-gone", c.chunks, reason="unavailable presence"))

    # -- load --------------------------------------------------------------------------------

    def _full(self) -> bool:
        """At capacity: as many acked ops running as ``capacity`` [VAP-OPS-082]."""
        running = sum(1 for s in self._served.values() if s.acked and not s.terminal_sent)
        return self.reject_when_full and running >= self.capacity

    def inflight(self) -> int:
        """Ops accepted (op result sent) and not yet ended, acked or not [VAP-LOAD-002] (the
        ``inflight`` row of spec §7.2; SPEC-FINDINGS B6)."""
        return sum(1 for s in self._served.values() if not s.terminal_sent)

    def load_value(self) -> float:
        if self._load_override is not None:
            return self._load_override
        return min(1.0, self.inflight() / self.capacity) if self.capacity > 0 else 0.0

    def set_load(self, value: float) -> None:
        self._load_override = float(value)
        self._load_changed()

    def load_element(self) -> ET.Element:
        return ET.Element(
            q("load"),
            {
                "value": _fmt_load(self.load_value()),
                "inflight": str(self.inflight()),
                "capacity": str(self.capacity),
                "interval": str(self.load_interval_ms),
            },
        )

    def report_load(self, force: bool = False) -> None:
        """Directed presence with ``<load>`` to each dispatcher bare JID [VAP-LOAD-001]."""
        el = self.load_element()
        key = (el.get("value"), el.get("inflight"))
        if not force and key == self._last_load_sent:
            return
        self._last_load_sent = key
        self._last_load_time = asyncio.get_running_loop().time()
        for d in self._dispatcher_bares():
            self.transport.send_presence(d, el)

    def _dispatcher_bares(self) -> list[str]:
        seen: list[str] = []
        for d in self.dispatchers:
            if bare(d) not in seen:
                seen.append(bare(d))
        return seen

    def _load_changed(self) -> None:
        """Report a change within 100 ms, at most 10 reports per second [VAP-LOAD-006]."""
        if self._load_timer is not None or not self.dispatchers:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._last_load_time + 0.1 - loop.time())
        self._load_timer = loop.call_later(delay, self._flush_load)

    def _flush_load(self) -> None:
        self._load_timer = None
        try:
            self.report_load()
        except Exception:  # noqa: BLE001 - a closed stream must not break an op
            log.debug("load report failed", exc_info=True)

    def announce(self, with_load: bool = True) -> None:
        """Directed presence to each dispatcher bare JID before the first advertise
        [VAP-LOAD-017]; with the load element when reporting load."""
        if with_load:
            self.report_load(force=True)
        else:
            for d in self._dispatcher_bares():
                self.transport.send_presence(d, None)

    async def load_loop(self) -> None:
        """A report at least every interval [VAP-LOAD-005]."""
        while True:
            try:
                self.report_load(force=True)
            except Exception:  # noqa: BLE001 - a closing stream must not end the loop
                log.debug("load report failed", exc_info=True)
            await asyncio.sleep(self.load_interval_ms / 1000.0)

    # -- advertise ---------------------------------------------------------------------------

    def advertisement(self, ttl: int) -> dict[str, Any]:
        ops: list[Resource] = []
        resources: dict[str, list[Resource]] = {}
        for reg in self.registrations:
            if reg.path not in ops:
                ops.append(reg.path)
            for key, lst in reg.resources.items():
                bucket = resources.setdefault(key, [])
                bucket.extend(r for r in lst if r not in bucket)
        return {"operations": ops, "resources": resources, "ttl": ttl}

    async def advertise(self, ttl: int | None = None) -> bool:
        """Advertise to every dispatcher [VAP-DSC-023]; True when all accepted."""
        ttl = self.advertise_ttl if ttl is None else ttl
        if ttl > 0:
            # presence first, every time: a dispatcher that came online after our start-up
            # presence must still see it before the advertise [VAP-LOAD-017]
            self.announce(with_load=self.load_enabled)
        args = self.advertisement(ttl)
        if ttl == 0:
            args = {"operations": [], "resources": {}, "ttl": 0}
        ok = True
        for d in self.dispatchers:
            r = await self.call(d, "/security/advertise", args, timeout_ms=10_000)
            accepted = r.ok and r.merged().get("response") is True
            if not accepted:
                log.warning("advertise to %s failed: %s %s", d, r.outcome, r.reason)
            ok = ok and accepted
        return ok

    async def advertise_loop(self) -> None:
        """Advertise now and again at 0.9 × ttl [VAP-DSC-010]. A failed advertise (dispatcher
        not online yet, …) is retried with back-off from 250 ms up to 2 s (the spec leaves the
        retry open: SPEC-FINDINGS.md B15)."""
        failures = 0
        while True:
            if await self.advertise():
                failures = 0
                await asyncio.sleep(0.9 * self.advertise_ttl)
            else:
                failures += 1
                await asyncio.sleep(min(2.0, 0.25 * 2 ** (failures - 1), 0.9 * self.advertise_ttl))

    # -- housekeeping ------------------------------------------------------------------------

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def abort_all(self) -> None:
        """The session is gone: stop every op without resuming it later [VAP-OPS-081]."""
        for s in list(self._served.values()):
            s.terminal_sent = True
            if s.timer is not None:
                s.timer.cancel()
            if s.task is not None:
                s.task.cancel()
        for c in list(self._calls.values()):
            c.finish(CallResult("responder-gone", c.chunks, reason="session lost"))


def _fmt_load(v: float) -> str:
    return format_double(v)


def _decode_legacy(el: ET.Element) -> tuple[dict[str, Any], list[Resource]]:
    """Legacy (0.4) ops: unnamed ``res`` and ``res`` named like a path are key-less scoping
    resources [VAP-VER-009]; other unnamed children are ignored [VAP-VER-010]."""
    out: dict[str, Any] = {}
    keyless: list[Resource] = []
    if (el.text or "").strip(" \t\r\n"):
        raise BadValue("text inside <op>")
    for child in el:
        name = child.get("name")
        is_res = _local(child.tag) == "res"
        if not name or (is_res and name.startswith("/")):
            if is_res:
                keyless.append(decode_value(child))
            continue
        if name in out:
            raise BadValue(f"duplicate name {name!r}")
        out[name] = decode_value(child)
    return out, keyless


async def send_with_retries(
    transport: Transport, to: str, el: ET.Element, deadline: float, loop
) -> ET.Element | None:
    """Send an IQ set; retransmit with the same id on wait/503-like errors [VAP-OPS-068..076]."""
    iq_id = transport.new_id()
    attempt = 1
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise IqTimeout("deadline passed")
        try:
            return await transport.send_set(
                to, el, iq_id=iq_id, timeout=min(PER_IQ_TIMEOUT_S, remaining)
            )
        except IqError as e:
            retryable = e.etype == "wait" or e.condition in RETRYABLE_CONDITIONS
            delay = RETRY_BASE_S * 2 ** (attempt - 1)
            if not retryable or attempt >= MAX_ATTEMPTS or loop.time() + delay >= deadline:
                raise
            attempt += 1
            await asyncio.sleep(delay)
