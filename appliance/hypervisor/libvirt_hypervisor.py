"""The ``Hypervisor`` port on libvirt — the only module that imports ``libvirt``.

Works the same on ``qemu:///system``, ``qemu:///session`` and the
``test:///default`` driver the unit tests use. Every step is idempotent,
because the controller's resumable operations may repeat one after a crash.
Polling rather than libvirt events keeps it free of an event loop.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import libvirt

from appliance.core.domain import CPU_PERIOD_US, CpuQuota, DomainSpec
from appliance.core.errors import Conflict, HypervisorError, NotFound, Unavailable
from appliance.core.ports import DomainState
from appliance.hypervisor.domain import render_domain_xml

T = TypeVar("T")

# libvirt prints every error to stderr by default; we turn them into
# ClawdenErrors instead, so silence the global handler once.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,  # running, waiting on I/O
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.RUNNING,  # still running while shutting down
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
}

# Errors that mean "the connection is gone", not "the request was wrong".
_CONNECTION_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}
_CONNECTION_CODES = {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN}

# Snapshots' metadata and a managed save would otherwise block undefine; we
# do not use NVRAM (direct kernel boot), and the test driver rejects that flag.
_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
)


def unavailable_fix(uri: str) -> str:
    if uri.startswith("qemu:///session"):
        return (
            "check that libvirtd can run as this user (`libvirtd --daemon`), "
            "or run `clawden host provision`"
        )
    return (
        "start libvirtd: `libvirtd -d` or `systemctl start libvirtd`, "
        "or run `clawden host provision`"
    )


class LibvirtHypervisor:
    """One lazily opened libvirt connection, reopened if libvirtd restarted."""

    def __init__(self, uri: str, *, poll_interval: float = 0.5) -> None:
        self.uri = uri
        self._poll_interval = poll_interval
        self._conn: Any = None
        self._lock = threading.Lock()

    # -- connection ---------------------------------------------------------

    def _connection(self) -> Any:
        with self._lock:
            if self._conn is not None and not self._alive(self._conn):
                self._drop()
            if self._conn is None:
                try:
                    self._conn = libvirt.open(self.uri)
                except libvirt.libvirtError as exc:
                    raise Unavailable(
                        f"cannot connect to libvirt at {self.uri}: {exc.get_error_message()}",
                        unavailable_fix(self.uri),
                    ) from exc
            return self._conn

    def close(self) -> None:
        """Release the connection (it is reopened by the next call)."""
        with self._lock:
            self._drop()

    @staticmethod
    def _alive(conn: Any) -> bool:
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass  # already broken; nothing to release

    def _is_connection_error(self, exc: libvirt.libvirtError, conn: Any) -> bool:
        return (
            exc.get_error_domain() in _CONNECTION_DOMAINS
            or exc.get_error_code() in _CONNECTION_CODES
            or not self._alive(conn)
        )

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(conn)``; on a dropped connection reconnect and retry once
        (safe: every step is idempotent), then report ``Unavailable``."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                return fn(conn)
            except libvirt.libvirtError as exc:
                if not self._is_connection_error(exc, conn):
                    raise HypervisorError(
                        f"libvirt could not {what}: {exc.get_error_message()}",
                        "check `virsh -c " + self.uri + " dominfo` and libvirtd's log",
                    ) from exc
                with self._lock:
                    if self._conn is conn:
                        self._drop()
                if attempt == 2:
                    raise Unavailable(
                        f"lost the connection to libvirt at {self.uri} while trying to {what}",
                        unavailable_fix(self.uri),
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _lookup(conn: Any, name: str) -> Any:
        """The domain, or ``None`` when it is not defined."""
        try:
            return conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _on_domain(
        self, what: str, name: str, fn: Callable[[Any], T], missing: Callable[[], T]
    ) -> T:
        """``fn(domain)``, or ``missing()`` if the domain is not defined — also
        when it vanishes half-way (a transient domain that stopped, a
        concurrent undefine), which libvirt reports from any later call."""

        def do(conn: Any) -> T:
            try:
                return fn(conn.lookupByName(name))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return missing()
                raise

        return self._call(what, do)

    # -- the port ------------------------------------------------------------

    def ping(self) -> None:
        self._call("answer a ping", lambda conn: conn.getLibVersion())

    def define(self, spec: DomainSpec) -> None:
        xml = render_domain_xml(spec)

        def do(conn: Any) -> None:
            # libvirt refuses both of these too, but with messages that vary
            # by driver; checking first gives the same Conflict everywhere.
            by_name = self._lookup(conn, spec.name)
            if by_name is not None and by_name.UUIDString() != spec.uuid:
                raise _conflict(spec, f"domain {spec.name!r} exists with another UUID")
            try:
                by_uuid = conn.lookupByUUIDString(spec.uuid)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
            else:
                if by_uuid.name() != spec.name:
                    raise _conflict(spec, f"UUID {spec.uuid} belongs to domain {by_uuid.name()!r}")
            conn.defineXML(xml)

        self._call(f"define {spec.name}", do)

    def start(self, name: str) -> None:
        def do(dom: Any) -> None:
            if dom.isActive():
                return  # running or paused: a paused claw stays paused (quarantine)
            try:
                dom.create()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and dom.isActive():
                    return  # somebody else started it meanwhile
                raise

        def missing() -> None:
            raise NotFound(
                f"domain {name!r} is not defined",
                "define it first (`clawden reconcile` recreates missing domains)",
            )

        self._on_domain(f"start {name}", name, do, missing)

    def shutdown(self, name: str, timeout: float = 30.0) -> None:
        def ask(dom: Any) -> bool:
            """Press the power button; ``True`` if there is something to wait for."""
            if not dom.isActive():
                return False
            if dom.state()[0] in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED):
                return True  # a paused guest cannot hear the button; wait, then force
            try:
                dom.shutdown()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise  # OPERATION_INVALID: it stopped on its own meanwhile
            return True

        if not self._on_domain(f"shut down {name}", name, ask, lambda: False):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state(name) in (None, DomainState.SHUTOFF, DomainState.CRASHED):
                return
            time.sleep(self._poll_interval)
        # Guests without a power-button handler (no logind/acpid) ignore ACPI.
        self.force_off(name)

    def force_off(self, name: str) -> None:
        def do(dom: Any) -> None:
            if not dom.isActive():
                return
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise  # OPERATION_INVALID: "not running", it stopped meanwhile

        self._on_domain(f"force off {name}", name, do, lambda: None)

    def undefine(self, name: str) -> None:
        def do(dom: Any) -> None:
            if dom.isActive():
                # libvirt would quietly turn it into a transient, still running
                # domain; make the caller stop it first instead.
                raise Conflict(
                    f"domain {name!r} is still running",
                    "stop the claw first (`clawden claw stop NAME`), then retry",
                )
            dom.undefineFlags(_UNDEFINE_FLAGS)

        self._on_domain(f"undefine {name}", name, do, lambda: None)

    def rename(self, name: str, new_name: str) -> None:
        def do(conn: Any) -> None:
            dom = self._lookup(conn, name)
            if dom is None:
                if self._lookup(conn, new_name) is not None:
                    return  # renamed already (a resumed step)
                raise NotFound(
                    f"domain {name!r} is not defined",
                    "define it first (`clawden reconcile` recreates missing domains)",
                )
            if dom.isActive():
                raise Conflict(
                    f"domain {name!r} is running: libvirt renames only inactive domains",
                    "stop the claw first (`clawden claw stop NAME`), then retry",
                )
            # Checked first for the same Conflict on every driver (libvirt's
            # own message and error domain differ between them).
            if self._lookup(conn, new_name) is not None:
                raise Conflict(
                    f"cannot rename {name!r}: a domain named {new_name!r} exists",
                    f"undefine the other domain (`virsh undefine {new_name}`) if it is stale",
                )
            dom.rename(new_name, 0)

        self._call(f"rename {name} to {new_name}", do)

    def state(self, name: str) -> DomainState | None:
        def do(dom: Any) -> DomainState | None:
            return _STATES.get(dom.state()[0], DomainState.OTHER)

        return self._on_domain(f"read the state of {name}", name, do, lambda: None)

    def set_live_cpu_cap(self, name: str, quota: CpuQuota | None) -> None:
        # The same four figures <cputune> sets; -1 is the cgroup's "max".
        params = {
            "vcpu_period": quota.period_us if quota else CPU_PERIOD_US,
            "vcpu_quota": quota.vcpu_quota_us if quota else -1,
            "global_period": quota.period_us if quota else CPU_PERIOD_US,
            "global_quota": quota.domain_quota_us if quota else -1,
        }

        def do(dom: Any) -> None:
            if dom.isActive():
                dom.setSchedulerParametersFlags(params, libvirt.VIR_DOMAIN_AFFECT_LIVE)

        self._on_domain(f"set the CPU cap of {name}", name, do, lambda: None)

    def uuid(self, name: str) -> str | None:
        def do(dom: Any) -> str | None:
            return str(dom.UUIDString())

        return self._on_domain(f"read the UUID of {name}", name, do, lambda: None)

    def list_domains(self, prefix: str) -> list[str]:
        def do(conn: Any) -> list[str]:
            names = (dom.name() for dom in conn.listAllDomains(0))
            return sorted(n for n in names if n.startswith(prefix))

        return self._call("list domains", do)

    # -- beyond the port: what the accelerator probe needs ----------------------

    def capabilities_xml(self) -> str:
        """libvirt's host capabilities (which domain types each arch offers)."""
        return str(self._call("read host capabilities", lambda conn: conn.getCapabilities()))

    def versions(self) -> tuple[int, int]:
        """(libvirt version, hypervisor version), e.g. (9000000, 7002022)."""
        return self._call(
            "read versions", lambda conn: (int(conn.getLibVersion()), int(conn.getVersion()))
        )

    def create_transient(self, xml: str) -> None:
        """Start a transient domain: it leaves no definition behind once it
        stops, even if this process dies before cleaning up."""
        self._call("start a transient domain", lambda conn: conn.createXML(xml, 0))

    def pid(self, name: str) -> int | None:
        if self.state(name) not in (DomainState.RUNNING, DomainState.PAUSED):
            return None
        # libvirt has no API for the QEMU pid; its pid files are the source.
        for path in _pid_files(self.uri, name):
            try:
                return int(path.read_text().strip())
            except (OSError, ValueError):
                continue
        return None


def _pid_files(uri: str, name: str) -> list[Path]:
    if uri.startswith("qemu:///system"):
        return [Path(d) / f"{name}.pid" for d in ("/run/libvirt/qemu", "/var/run/libvirt/qemu")]
    if uri.startswith("qemu:///session"):
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        base = Path(runtime) if runtime else Path.home() / ".cache"
        return [base / "libvirt/qemu/run" / f"{name}.pid"]
    return []  # test:// and remote drivers: no local process


def _conflict(spec: DomainSpec, what: str) -> Conflict:
    return Conflict(
        what,
        f"undefine the old domain (`virsh undefine {spec.name}`) or keep the claw's UUID stable",
    )
