"""``python -m vertebra_agent.call``: a small requester (direct, single or all).

    python -m vertebra_agent.call /vertebra/test/echo x=i4:1 s=hello --single --json
    python -m vertebra_agent.call /gem/list cluster=res:/cluster/rd00 --all
    python -m vertebra_agent.call /vertebra/test/echo --to agent@example.net/agent

Connection settings: --server/--jid/--password/--dispatcher or VERTEBRA_SERVER, VERTEBRA_JID,
VERTEBRA_PASSWORD, VERTEBRA_DISPATCHER.  Arguments: ``name=type:value`` with type one of
i4, double, boolean, string, base64, res, nil, json (tagged JSON value); ``name=value`` is a
string.  Exit codes: 0 ok, 1 call failed, 2 usage, 3 cannot connect, 4 no capable agent or
dispatcher unavailable, 5 deadline expired or responder gone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import sys
from typing import Any

from .resources import Resource
from .values import BadValue, loads_json, parse_boolean, parse_double, parse_i4, to_json

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONNECT, EXIT_NO_AGENT, EXIT_GONE = 0, 1, 2, 3, 4, 5


def parse_arg(text: str) -> tuple[str, Any]:
    name, eq, rest = text.partition("=")
    if not eq or not name:
        raise BadValue(f"argument {text!r} must be name=value or name=type:value")
    kind, colon, raw = rest.partition(":")
    if not colon or kind not in ("i4", "double", "boolean", "string", "base64", "res", "nil",
                                 "json"):
        return name, rest
    if kind == "i4":
        return name, parse_i4(raw)
    if kind == "double":
        return name, parse_double(raw)
    if kind == "boolean":
        return name, parse_boolean(raw)
    if kind == "string":
        return name, raw
    if kind == "base64":
        return name, base64.b64decode(raw, validate=True)
    if kind == "res":
        return name, Resource(raw)
    if kind == "nil":
        return name, None
    return name, loads_json(raw)


def _exit_for(outcome: str) -> int:
    if outcome == "final":
        return EXIT_OK
    if outcome in ("deadline-expired", "responder-gone"):
        return EXIT_GONE
    if outcome in ("no-capable-agent", "dispatcher-unavailable"):
        return EXIT_NO_AGENT
    return EXIT_FAILED


def _outcome_json(jid: str, r) -> dict[str, Any]:
    out: dict[str, Any] = {"jid": jid, "status": "final" if r.ok else r.outcome}
    if r.ok:
        out["chunks"] = [{k: to_json(v) for k, v in c.items()} for c in r.chunks]
    else:
        nack = r.outcome in ("not-authorized", "authorization-unavailable")
        out["status"] = "error" if r.error_type else ("nack" if nack else "failed")
        out["condition"] = r.outcome
        if r.reason:
            out["reason"] = r.reason
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vertebra_agent.call",
                                description="Call a Vertebra operation")
    p.add_argument("operation")
    p.add_argument("args", nargs="*", metavar="name=type:value")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--to", metavar="FULL_JID", help="direct call to this agent")
    mode.add_argument("--single", action="store_true", help="least-loaded capable agent")
    mode.add_argument("--all", action="store_true", help="every capable agent")
    p.add_argument("--timeout", type=int, default=10_000, metavar="MS")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.add_argument("--server", default=os.environ.get("VERTEBRA_SERVER"))
    p.add_argument("--jid", default=os.environ.get("VERTEBRA_JID"))
    p.add_argument("--password", default=os.environ.get("VERTEBRA_PASSWORD", ""))
    p.add_argument("--dispatcher", default=os.environ.get("VERTEBRA_DISPATCHER"))
    p.add_argument("-v", "--verbose", action="count", default=0)
    a = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING - 10 * min(a.verbose, 2))
    if not a.to and not a.single and not a.all:
        a.single = True
    try:
        values = dict(parse_arg(x) for x in a.args)
        Resource(a.operation)
    except (BadValue, ValueError, json.JSONDecodeError) as e:
        print(f"usage error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not a.jid:
        print("usage error: --jid or VERTEBRA_JID is required", file=sys.stderr)
        return EXIT_USAGE

    from .agent import Agent, Config, ConfigError
    from .dispatch import DispatchFailure, call_all, call_single

    try:
        cfg = Config(jid=a.jid, password=a.password, server=a.server,
                     dispatchers=[a.dispatcher] if a.dispatcher else [],
                     advertise=False, report_load=False).validate()
    except ConfigError as e:
        print(f"usage error: {e}", file=sys.stderr)
        return EXIT_USAGE

    async def run() -> int:
        agent = Agent(cfg)
        runner = asyncio.create_task(agent.run())
        online = asyncio.create_task(agent.online.wait())
        done, _ = await asyncio.wait({runner, online}, return_when=asyncio.FIRST_COMPLETED)
        if online not in done:
            online.cancel()
            print("cannot connect", file=sys.stderr)
            return EXIT_CONNECT
        disp = cfg.dispatchers[0]
        try:
            if a.to:
                r = await agent.call(a.to, a.operation, values, timeout_ms=a.timeout)
                result = {"scope": "direct", "outcomes": [_outcome_json(a.to, r)]}
                status = _exit_for(r.outcome)
            elif a.single:
                jid, r = await call_single(agent.core, disp, a.operation, values,
                                           timeout_ms=a.timeout)
                result = {"scope": "single", "outcomes": [_outcome_json(jid, r)]}
                status = _exit_for(r.outcome)
            else:
                g = await call_all(agent.core, disp, a.operation, values, timeout_ms=a.timeout)
                result = {"scope": "all", "outcomes": [_outcome_json(j, r) for j, r in g.outcomes]}
                status = EXIT_OK if not g.failures else EXIT_FAILED
        except DispatchFailure as e:
            result = {"outcome": e.outcome, "reason": e.reason}
            status = _exit_for(e.outcome)
        if a.json:
            print(json.dumps(result, indent=2))
        else:
            for o in result.get("outcomes", []):
                print(o["jid"], o["status"], o.get("condition", ""))
                for c in o.get("chunks", []):
                    print("  ", json.dumps(c))
            if "outcome" in result:
                print(result["outcome"], result.get("reason", ""))
        agent.stop()
        await asyncio.wait_for(runner, 5)
        return status

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
