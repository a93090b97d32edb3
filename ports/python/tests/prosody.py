"""Start a throwaway Prosody on a free loopback port for integration tests.

Plaintext c2s, PLAIN allowed, accounts created with ``prosodyctl register``.  In CI
(``CI=true``) a missing Prosody is a failure, elsewhere the tests that need it are skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

DOMAIN = "localhost"


def available() -> bool:
    return shutil.which("prosody") is not None and shutil.which("prosodyctl") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prosody:
    def __init__(self, users: dict[str, str]):
        self.dir = tempfile.mkdtemp(prefix="vertebra-py-prosody-")
        self.port = free_port()
        self.users = users
        self.proc: subprocess.Popen | None = None

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Prosody":
        d = self.dir
        os.makedirs(f"{d}/data")
        os.makedirs(f"{d}/certs")
        cfg = f"{d}/prosody.cfg.lua"
        with open(cfg, "w") as fh:
            fh.write(f"""
pidfile = "{d}/prosody.pid"
run_as_root = true
data_path = "{d}/data"
certificates = "{d}/certs"
log = {{ info = "{d}/prosody.log"; error = "*console" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ }}
c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true
disable_sasl_mechanisms = {{ "SCRAM-SHA-1" }}
authentication = "internal_hashed"
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping" }}
modules_disabled = {{ "s2s"; "tls" }}
limits = {{ c2s = {{ rate = "100mb/s" }} }}
VirtualHost "{DOMAIN}"
""")
        for user, pw in self.users.items():
            subprocess.run(["prosodyctl", "--config", cfg, "register", user, DOMAIN, pw],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc = subprocess.Popen(["prosody", "-F", "--config", cfg],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("prosody did not open its port")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
