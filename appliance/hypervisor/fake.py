"""An honest in-memory ``Hypervisor`` for controller unit tests.

It keeps the same promises as ``LibvirtHypervisor`` (idempotent steps, the
same error types for the same mistakes) and is held to them by contract
tests that run the same functions against both. Guests here obey the power
button unless told otherwise, so tests can exercise the force-off path too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

from appliance.core.domain import CpuQuota, DomainSpec
from appliance.core.errors import Conflict, HypervisorError, NotFound, Unavailable
from appliance.core.ports import DomainState
from appliance.hypervisor.domain import render_domain_xml


@dataclass
class FakeDomain:
    spec: DomainSpec
    state: DomainState = DomainState.SHUTOFF
    ignores_acpi: bool = False  # a guest with no power-button handler
    starts: int = 0  # how often it was actually started (not no-op calls)
    forced_offs: int = 0  # shutdowns that had to pull the plug
    xml: str = field(default="", repr=False)
    # The cap in force while running: the spec's, unless changed live.
    live_cpu_cap: CpuQuota | None = None


class FakeHypervisor:
    """``available = False`` simulates libvirtd being down: every call raises
    ``Unavailable``. ``pids`` lets tests give running domains a process id."""

    def __init__(self, uri: str = "fake:///", *, fail_start: set[str] | None = None) -> None:
        self.uri = uri
        self.available = True
        self.domains: dict[str, FakeDomain] = {}
        self.pids: dict[str, int] = {}
        self.fail_start: set[str] = set(fail_start or ())
        self.calls: list[tuple[str, str]] = []  # (method, domain name) for assertions
        self._lock = threading.Lock()

    def _check(self, method: str, name: str = "") -> None:
        if not self.available:
            raise Unavailable(
                f"cannot connect to libvirt at {self.uri}: libvirtd is not running (fake)",
                "start libvirtd: `libvirtd -d` or `systemctl start libvirtd`, "
                "or run `clawden host provision`",
            )
        self.calls.append((method, name))

    # -- test helpers -------------------------------------------------------

    def crash(self, name: str) -> None:
        """Simulate the guest dying (QEMU killed, on_crash=destroy)."""
        self.domains[name].state = DomainState.SHUTOFF

    def pause(self, name: str) -> None:
        dom = self.domains[name]
        if dom.state is DomainState.RUNNING:
            dom.state = DomainState.PAUSED

    def guest_powers_off(self, name: str) -> None:
        """The guest shut itself down (``poweroff`` inside; on_poweroff=destroy)."""
        self.domains[name].state = DomainState.SHUTOFF

    # -- the port ------------------------------------------------------------

    def ping(self) -> None:
        self._check("ping")

    def define(self, spec: DomainSpec) -> None:
        with self._lock:
            self._check("define", spec.name)
            xml = render_domain_xml(spec)  # the same validation as the real adapter
            existing = self.domains.get(spec.name)
            if existing is not None and existing.spec.uuid != spec.uuid:
                raise Conflict(
                    f"domain {spec.name!r} exists with another UUID",
                    f"undefine the old domain (`virsh undefine {spec.name}`) "
                    "or keep the claw's UUID stable",
                )
            for other in self.domains.values():
                if other.spec.uuid == spec.uuid and other.spec.name != spec.name:
                    raise Conflict(
                        f"UUID {spec.uuid} belongs to domain {other.spec.name!r}",
                        f"undefine the old domain (`virsh undefine {spec.name}`) "
                        "or keep the claw's UUID stable",
                    )
            if existing is None:
                self.domains[spec.name] = FakeDomain(spec=spec, xml=xml)
            else:
                # Like libvirt: a running domain keeps running; the new
                # definition applies from its next start.
                existing.spec = spec
                existing.xml = xml

    def start(self, name: str) -> None:
        with self._lock:
            self._check("start", name)
            dom = self.domains.get(name)
            if dom is None:
                raise NotFound(
                    f"domain {name!r} is not defined",
                    "define it first (`clawden reconcile` recreates missing domains)",
                )
            if dom.state in (DomainState.RUNNING, DomainState.PAUSED):
                return  # a paused claw stays paused (quarantine)
            if name in self.fail_start:
                raise HypervisorError(
                    f"libvirt could not start {name}: QEMU exited (fake)",
                    f"check `virsh -c {self.uri} dominfo` and libvirtd's log",
                )
            dom.state = DomainState.RUNNING
            dom.live_cpu_cap = dom.spec.cpu_quota
            dom.starts += 1

    def shutdown(self, name: str, timeout: float = 30.0) -> None:
        # No waiting: the fake guest either obeys the button at once or never.
        with self._lock:
            self._check("shutdown", name)
            dom = self.domains.get(name)
            if dom is None or dom.state not in (DomainState.RUNNING, DomainState.PAUSED):
                return
            if dom.ignores_acpi or dom.state is DomainState.PAUSED:
                dom.forced_offs += 1  # the real adapter destroys it after `timeout`
            dom.state = DomainState.SHUTOFF

    def force_off(self, name: str) -> None:
        with self._lock:
            self._check("force_off", name)
            dom = self.domains.get(name)
            if dom is not None and dom.state is not DomainState.SHUTOFF:
                dom.state = DomainState.SHUTOFF
                dom.forced_offs += 1

    def undefine(self, name: str) -> None:
        with self._lock:
            self._check("undefine", name)
            dom = self.domains.get(name)
            if dom is None:
                return
            if dom.state in (DomainState.RUNNING, DomainState.PAUSED):
                raise Conflict(
                    f"domain {name!r} is still running",
                    "stop the claw first (`clawden claw stop NAME`), then retry",
                )
            del self.domains[name]
            self.pids.pop(name, None)

    def rename(self, name: str, new_name: str) -> None:
        with self._lock:
            self._check("rename", name)
            dom = self.domains.get(name)
            if dom is None:
                if new_name in self.domains:
                    return  # renamed already
                raise NotFound(
                    f"domain {name!r} is not defined",
                    "define it first (`clawden reconcile` recreates missing domains)",
                )
            if dom.state in (DomainState.RUNNING, DomainState.PAUSED):
                raise Conflict(
                    f"domain {name!r} is running: libvirt renames only inactive domains",
                    "stop the claw first (`clawden claw stop NAME`), then retry",
                )
            if new_name in self.domains:
                raise Conflict(
                    f"cannot rename {name!r}: a domain named {new_name!r} exists",
                    f"undefine the other domain (`virsh undefine {new_name}`) if it is stale",
                )
            dom.spec = replace(dom.spec, name=new_name)
            dom.xml = render_domain_xml(dom.spec)
            self.domains[new_name] = self.domains.pop(name)
            if name in self.pids:
                self.pids[new_name] = self.pids.pop(name)

    def set_live_cpu_cap(self, name: str, quota: CpuQuota | None) -> None:
        with self._lock:
            self._check("set_live_cpu_cap", name)
            dom = self.domains.get(name)
            if dom is not None and dom.state in (DomainState.RUNNING, DomainState.PAUSED):
                dom.live_cpu_cap = quota

    def state(self, name: str) -> DomainState | None:
        self._check("state", name)
        dom = self.domains.get(name)
        return None if dom is None else dom.state

    def list_domains(self, prefix: str) -> list[str]:
        self._check("list_domains", prefix)
        return sorted(n for n in self.domains if n.startswith(prefix))

    def uuid(self, name: str) -> str | None:
        self._check("uuid", name)
        dom = self.domains.get(name)
        return None if dom is None else dom.spec.uuid

    def pid(self, name: str) -> int | None:
        self._check("pid", name)
        dom = self.domains.get(name)
        if dom is None or dom.state not in (DomainState.RUNNING, DomainState.PAUSED):
            return None
        return self.pids.get(name)
