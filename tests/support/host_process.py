"""The controller's claw-facing half in a process of its own, for the hostile
suite and the flood benchmarks.

    python -m tests.support.host_process --home DIR --sshd SSHD.json --claws alice,bob

It is built the way ``clawden serve`` builds it, from the composition root
(``appliance.app``): the store (``open_store``), the controller's log
(``controller_logging``: the rotating ``logs/controller.log`` behind the per-claw
log budget, root level WARNING as the CLI sets it), the host services
(``service_registry``: host API with its quotas, LLM gateway reading
``llm.toml``, egress stub) and one ``ChannelManager`` per claw connected to a
real OpenSSH sshd (``local_sshd``, described by ``SSHD.json``). What it leaves
out is what needs a VM: libvirt, the reconcile loop, the scheduler, the CLI
socket.

Its own process, so that what an attack costs the host is measured where
the host pays it: the RSS and threads of this pid (``/proc``), its log file,
its database. The attacker, the other claw and the sshd ("the guests") are
other processes.

One difference from a real controller, because every claw's sshd here is
this machine's: two claws cannot both listen on ``127.0.0.1:7701``. So each
claw gets the same service objects (one host API, one gateway, shared by all
claws as in the controller) on ports of its own, in a registry of its own;
the per-claw caps are unchanged (they are counted per claw in either case).

On start it prints one JSON line, ``{"pid": ..., "ports": {claw: {service:
port}}}``; it stops when its stdin closes or on SIGTERM.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

import paramiko

from appliance.app import controller_logging, open_store, service_registry
from appliance.channel.forwarding import (
    ClawIdentity,
    ForwardedConnection,
    ForwardedService,
    ServiceRegistry,
)
from appliance.channel.manager import ChannelManager
from appliance.channel.transport import ChannelTarget
from appliance.config import Settings
from appliance.core.model import Claw, ClawState
from appliance.core.quotas import Refusals
from appliance.store import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OnPort:
    """A shared service, forwarded on a port of this claw's own."""

    def __init__(self, inner: ForwardedService) -> None:
        self.inner = inner
        self.name = inner.name
        self.guest_port = free_port()

    def handle(self, claw: ClawIdentity, conn: ForwardedConnection) -> None:
        self.inner.handle(claw, conn)


def add_claws(store: Store, names: list[str]) -> None:
    for name in names:
        if store.claws.get(name) is None:
            store.claws.add(
                Claw(name, name.title(), ClawState.RUNNING, "img", 1, 512, "2026-01-01T00:00:00Z")
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--sshd", type=Path, required=True, help="JSON: socket, keys, user")
    p.add_argument("--claws", required=True, help="comma-separated claw names")
    args = p.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as `clawden serve`
    # `kill -USR1 <pid>` prints every thread's stack to stderr (host.stderr).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    settings = Settings.from_env({"CLAWDEN_HOME": str(args.home)})
    store = open_store(settings)
    budget = controller_logging(settings)
    names = [n for n in args.claws.split(",") if n]
    add_claws(store, names)
    services = list(service_registry(settings, store, Refusals()))

    sshd = json.loads(args.sshd.read_text())
    client_key = paramiko.Ed25519Key.from_private_key(io.StringIO(sshd["client_private"]))

    def target(claw: str) -> ChannelTarget:
        return ChannelTarget(
            claw, Path(sshd["socket"]), sshd["host_public"], client_key, user=sshd["user"]
        )

    managers: list[ChannelManager] = []
    ports: dict[str, dict[str, int]] = {}
    for name in names:
        own = [OnPort(s) for s in services]
        ports[name] = {s.name: s.guest_port for s in own}
        manager = ChannelManager(ServiceRegistry(own), target, lambda *_: None)
        managers.append(manager)
        if not manager.ensure(name).wait_ready(60):
            print(json.dumps({"error": f"no channel for {name}"}), flush=True)
            return 1

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def until_stdin_closes() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    print(json.dumps({"pid": os.getpid(), "ports": ports}), flush=True)
    stop.wait()
    for manager in managers:
        manager.close()
    budget.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
