"""Configuration and the runnable :class:`Agent`."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Mapping

from .actor import Actor
from .core import AgentCore, CallResult
from .testprofile import TestProfile
from .transport import domain

log = logging.getLogger("vertebra_agent")

# How long a lost session is retried before the agent gives up and exits 1.
RECONNECT_GIVE_UP_S = 30.0

__all__ = ["Agent", "Config", "ConfigError"]


class ConfigError(ValueError):
    """A configuration that cannot be used."""


@dataclass
class Config:
    """Agent settings (from a TOML/JSON file, then overridden by the spawn-contract variables)."""

    jid: str = ""
    password: str = ""
    server: str | None = None  # "host:port"; None = resolve from the JID's domain
    dispatchers: list[str] = field(default_factory=list)
    test_profile: bool = False
    load_interval_ms: int = 1000
    capacity: int = 8
    advertise_ttl: int = 3600
    authorize: bool = True  # False = local allow-all policy (development only)
    reject_when_full: bool = False
    advertise: bool = True  # False: never advertise (a pure requester, or a dispatcher)
    report_load: bool = True
    actors: list[str] = field(default_factory=list)  # "package.module:ClassName"
    name: str = "vertebra python agent"
    connect_timeout_s: float = 10.0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "Config":
        cfg = cls()
        known = set(cls.__dataclass_fields__)
        for key, value in data.items():
            key = key.replace("-", "_")
            if key == "dispatcher":
                key, value = "dispatchers", [value] if isinstance(value, str) else value
            if key not in known:
                raise ConfigError(f"unknown configuration key {key!r}")
            setattr(cfg, key, value)
        return cfg

    @classmethod
    def from_file(cls, path: str) -> "Config":
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
        try:
            if path.endswith(".json"):
                data = json.loads(raw)
            else:
                import tomllib

                data = tomllib.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot parse {path}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a table/object")
        return cls.from_mapping(data)

    def apply_env(self, env: Mapping[str, str]) -> "Config":
        """The spawn contract: VERTEBRA_SERVER, _JID, _PASSWORD, _DISPATCHER, _TEST_PROFILE,
        _LOAD_INTERVAL_MS."""
        if env.get("VERTEBRA_SERVER"):
            self.server = env["VERTEBRA_SERVER"]
        if env.get("VERTEBRA_JID"):
            self.jid = env["VERTEBRA_JID"]
        if "VERTEBRA_PASSWORD" in env:
            self.password = env["VERTEBRA_PASSWORD"]
        if env.get("VERTEBRA_DISPATCHER"):
            self.dispatchers = [d.strip() for d in env["VERTEBRA_DISPATCHER"].split(",") if d.strip()]
        if "VERTEBRA_TEST_PROFILE" in env:  # [VAP-TPF-020] test mode iff it is "1"
            self.test_profile = env["VERTEBRA_TEST_PROFILE"] == "1"
        if env.get("VERTEBRA_LOAD_INTERVAL_MS"):
            raw = env["VERTEBRA_LOAD_INTERVAL_MS"].strip()
            if raw.isdigit() and 100 <= int(raw) <= 60000:  # [VAP-TPF-021]
                self.load_interval_ms = int(raw)
            else:
                log.warning("ignoring VERTEBRA_LOAD_INTERVAL_MS=%r (not in 100..60000)", raw)
        return self

    def validate(self) -> "Config":
        if "@" not in self.jid:
            raise ConfigError("jid must be a JID such as agent@example.net/agent")
        if "/" not in self.jid:
            self.jid += "/agent"  # [VAP-TRN-015]
        if not self.dispatchers:
            self.dispatchers = [f"dispatcher@{domain(self.jid)}/dispatcher"]  # [VAP-TRN-018]
        if not 100 <= int(self.load_interval_ms) <= 60000:
            raise ConfigError("load_interval_ms must be within 100..60000")
        if int(self.capacity) < 1:
            raise ConfigError("capacity must be >= 1")
        if not 1 <= int(self.advertise_ttl) <= 86400:
            raise ConfigError("advertise_ttl must be within 1..86400")
        if self.server is not None:
            host, _, port = self.server.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError("server must be host:port")
        return self


def load_actor(spec: str) -> Actor:
    """Import ``module:Name`` and instantiate it."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"actor {spec!r} must be written module:ClassName")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load actor {spec!r}: {e}") from None
    actor = obj() if isinstance(obj, type) else obj
    if not isinstance(actor, Actor):
        raise ConfigError(f"{spec!r} is not an Actor")
    return actor


class Agent:
    """A Vertebra agent on slixmpp.

    >>> agent = Agent(Config(jid="a@example.net/agent", password="pw"))
    >>> agent.add_actor(MyActor())
    >>> asyncio.run(agent.run())
    """

    def __init__(self, config: Config, actors: list[Actor] | None = None):
        from .xmpp import VertebraClient

        self.config = config.validate()
        self.client = VertebraClient(
            self.config.jid,
            self.config.password,
            identity_name=self.config.name,
            test_profile=self.config.test_profile,
        )
        self.core = AgentCore(
            self.client.vertebra_transport(),
            dispatchers=self.config.dispatchers,
            authorize=self.config.authorize,
            capacity=int(self.config.capacity),
            load_interval_ms=int(self.config.load_interval_ms),
            advertise_ttl=int(self.config.advertise_ttl),
            reject_when_full=self.config.reject_when_full,
        )
        self.client.core = self.core
        self.core.load_enabled = bool(self.config.report_load)
        for spec in self.config.actors:
            self.add_actor(load_actor(spec))
        for actor in actors or []:
            self.add_actor(actor)
        if self.config.test_profile:  # only in test mode [VAP-SEC-027]
            self.add_actor(TestProfile())
        self._stop = asyncio.Event()

    @property
    def online(self) -> asyncio.Event:
        return self.client.online

    def add_actor(self, actor: Actor) -> None:
        self.core.add_actor(actor)

    async def call(self, to: str, op_type: str, values: dict | None = None, **kw) -> CallResult:
        """Call an operation on another agent (``direct`` scope)."""
        return await self.core.call(to, op_type, values, **kw)

    def stop(self) -> None:
        self._stop.set()

    def _connect(self) -> None:
        if self.config.server:
            host, _, port = self.config.server.rpartition(":")
            self.client.connect(host, int(port))
        else:
            self.client.connect()

    async def _wait_online(self) -> bool:
        """Wait for the session (bound and presence sent) or its failure, within the timeout."""
        loop = asyncio.get_running_loop()
        online = loop.create_task(self.client.online.wait())
        ended = loop.create_task(self.client.ended.wait())
        done, _ = await asyncio.wait(
            {online, ended}, timeout=self.config.connect_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        online.cancel()
        ended.cancel()
        return online in done

    def _start_background(self) -> list[asyncio.Task]:
        loop = asyncio.get_running_loop()
        background = []
        if self.config.report_load and not self.config.advertise:
            self.core.announce(with_load=True)  # (advertise() announces itself [VAP-LOAD-017])
        if self.config.report_load:
            background.append(loop.create_task(self.core.load_loop()))  # [VAP-LOAD-004]
        if self.config.advertise:
            background.append(loop.create_task(self.core.advertise_loop()))
        return background

    async def _reconnect(self) -> bool:
        """After an unexpected end of the session: log in again with back-off (100 ms doubling
        to 5 s) until online, a stop request, or RECONNECT_GIVE_UP_S without success. The ops
        that were running are not resumed [VAP-OPS-081] (``AgentCore.abort_all``)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + RECONNECT_GIVE_UP_S
        delay = 0.1
        while not self._stop.is_set() and loop.time() < give_up:
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
                return False
            except asyncio.TimeoutError:
                pass
            delay = min(5.0, delay * 2)
            self.client.online.clear()
            self.client.ended.clear()
            self._connect()
            if await self._wait_online():
                log.info("online again as %s", self.client.boundjid.full)
                return True
            log.info("reconnect attempt failed")
            try:
                await asyncio.wait_for(self.client.disconnect(wait=0.1), 1.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - already closed
                pass
        return False

    async def run(self) -> int:
        """Connect, serve until SIGTERM/SIGINT or :meth:`stop`; returns an exit status.

        A failed first login exits 1 [VAP-TPF-025]; a session lost later is re-established
        (the ops it carried are abandoned, [VAP-OPS-081]); exit 1 when that fails for
        RECONNECT_GIVE_UP_S."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        self._connect()
        if not await self._wait_online():
            log.error("could not log in as %s within %.0fs", self.config.jid,
                      self.config.connect_timeout_s)
            self.client.disconnect(wait=0.5)
            return 1
        log.info("online as %s (test profile: %s)", self.client.boundjid.full,
                 self.config.test_profile)
        status = 0
        while True:
            background = self._start_background()
            stop = loop.create_task(self._stop.wait())
            ended = loop.create_task(self.client.ended.wait())
            await asyncio.wait({stop, ended}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            ended.cancel()
            for t in background:
                t.cancel()
            if self._stop.is_set():
                break
            log.warning("the XMPP session ended unexpectedly; reconnecting")
            self.core.abort_all()  # [VAP-OPS-081] (also done on "disconnected")
            if not await self._reconnect():
                status = 0 if self._stop.is_set() else 1
                break
        if status == 0 and not self.client.ended.is_set() and self.config.advertise:
            try:  # [VAP-DSC-011] withdraw before a deliberate disconnect
                await asyncio.wait_for(self.core.advertise(ttl=0), 1.5)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                log.info("could not withdraw the advertisement")
        self.core.abort_all()
        if not self.client.ended.is_set():
            try:  # exit within 5 s of SIGTERM [VAP-TPF-024]
                await asyncio.wait_for(self.client.disconnect(wait=0.5), 1.0)
                await asyncio.wait_for(self.client.ended.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
        if status:
            log.error("the XMPP session ended and could not be re-established")
        return status
