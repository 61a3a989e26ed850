"""The host side of a claw without the VM, for the benchmarks that need no boot.

A scratch ``CLAWDEN_HOME`` with a migrated store, a scripted upstream and
``llm.toml`` pointing at it, the controller's own host services (host API,
LLM gateway, egress stub, built exactly as ``appliance.app.service_registry``
builds them) and the controller's ``ChannelManager`` connected to a *real*
OpenSSH sshd bridged by socat to a unix socket — the way the guest bridges
its sshd to the virtio-serial port (``tests/support/local_sshd.py``). A
process on this machine that connects to a service's forwarded loopback port
takes the same path as a process in a claw: sshd → SSH channel → the host
service with the claw's identity from the transport.

The forwarded ports are free ports picked at run time, not 7701-7703: this
host (the sshd's "guest") may already use those.
"""

from __future__ import annotations

import io
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from appliance.channel.forwarding import ForwardedService, ServiceRegistry
from appliance.channel.manager import ChannelManager
from appliance.channel.transport import ChannelTarget
from appliance.config import Settings
from appliance.core.model import Claw, ClawState
from appliance.llm.scripted import ScriptedModelServer
from appliance.services.egress_stub import egress_stub_service
from appliance.services.hostapi import host_api_service
from appliance.services.http import HttpService
from appliance.services.llm_gateway import llm_gateway_service
from appliance.store import ClawRepository, Store, open_db
from tests.support.local_sshd import local_sshd, sshd_available

UPSTREAM_KEY = "sk-bench-upstream-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def llm_toml(base_url: str, key: str, models: Sequence[str]) -> str:
    """The upstream, and a policy like an operator's: an allowlist and budgets
    (so every call checks the period totals in the store), with the rate
    limit raised out of the way of a benchmark's thousands of calls."""
    allowed = ", ".join(f'"{m}"' for m in models)
    return (
        f'provider = "scripted"\n[providers.scripted]\nbase_url = "{base_url}"\n'
        f'api_key = "{key}"\n'
        f"[policy]\nmodels = [{allowed}]\ndaily_tokens = 1000000000\n"
        "monthly_cost_usd = 1000.0\nrequests_per_minute = 1000000\n"
    )


@dataclass
class Rig:
    settings: Settings
    upstream: ScriptedModelServer
    gateway: HttpService
    ports: dict[str, int]  # service name -> forwarded loopback port
    manager: ChannelManager

    def url(self, service: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def transport_for(self, claw: str) -> paramiko.Transport:
        conn = self.manager.ensure(claw)
        if not conn.wait_ready(60):
            raise RuntimeError(f"the channel for {claw} to the local sshd never became ready")
        return conn.transport()

    def llm_rows(self, claw: str) -> list[dict[str, Any]]:
        db = open_db(self.settings.db_path)
        try:
            return [
                dict(r)
                for r in db.query("SELECT * FROM llm_calls WHERE claw = ? ORDER BY id", [claw])
            ]
        finally:
            db.close()


def add_claw(db_path: Path, name: str) -> None:
    db = open_db(db_path)
    try:
        ClawRepository(db).add(
            Claw(name, "Bench", ClawState.RUNNING, "bench", 1, 512, "2026-01-01T00:00:00.000000Z")
        )
    finally:
        db.close()


@contextmanager
def host_rig(scenario: Mapping[str, Any], claws: Sequence[str]) -> Iterator[Rig]:
    if not sshd_available():
        raise RuntimeError("needs /usr/sbin/sshd and socat (the real-sshd harness)")
    path = Path(tempfile.mkdtemp(prefix="clawden-bench-host-", dir="/var/tmp"))
    try:
        with ExitStack() as stack:
            settings = Settings.from_env({"CLAWDEN_HOME": str(path)})
            settings.ensure_dirs()
            for claw in claws:
                add_claw(settings.db_path, claw)
            upstream = stack.enter_context(ScriptedModelServer(scenario, api_key=UPSTREAM_KEY))
            config = settings.home / "llm.toml"
            models = upstream.script.scenario.models
            config.write_text(llm_toml(upstream.base_url, UPSTREAM_KEY, models))
            config.chmod(0o600)
            db = open_db(settings.db_path)
            stack.callback(db.close)
            store = Store(db)
            # What appliance.app.service_registry registers, each on a free port.
            services: list[ForwardedService] = [
                host_api_service(store), llm_gateway_service(store, settings.home),
                egress_stub_service(),
            ]  # fmt: skip
            ports: dict[str, int] = {}
            for service in services:
                service.guest_port = free_port()
                ports[service.name] = service.guest_port
            sshd = stack.enter_context(local_sshd(settings.home / "sshd"))

            def target(claw: str) -> ChannelTarget:
                return ChannelTarget(
                    claw,
                    sshd.socket_path,
                    sshd.host_public,
                    paramiko.Ed25519Key.from_private_key(io.StringIO(sshd.client_private)),
                    user=sshd.user,
                )

            manager = ChannelManager(ServiceRegistry(services), target, lambda *_: None)
            stack.callback(manager.close)
            gateway = next(s for s in services if isinstance(s, HttpService) and s.name == "llm")
            rig = Rig(settings, upstream, gateway, ports, manager)
            for claw in claws:
                rig.transport_for(claw)
            yield rig
    finally:
        shutil.rmtree(path, ignore_errors=True)
