"""Create/start/stop/destroy and reconcile against FakeHypervisor, real SQLite
and the real disk tools (qemu-img, mkfs.ext4): fast, no VM."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

import libvirt
import pytest

from appliance.config import Settings
from appliance.controller import lifecycle as lifecycle_module
from appliance.controller.context import Context
from appliance.controller.domains import ClawDomain, find_domain
from appliance.controller.guestfiles import (
    GUEST_HOST_KEY,
    HOST_CLIENT_KEY,
    build_domain_spec,
    domain_uuid,
)
from appliance.controller.lifecycle import (
    CREATE_STEPS,
    DESTROY_STEPS,
    START_STEPS,
    STOP_STEPS,
    Lifecycle,
)
from appliance.controller.reconcile import reconcile
from appliance.controller.status import claw_status_lines
from appliance.core.domain import Accelerator
from appliance.core.errors import ClawdenError, Conflict, IntegrityError, Unavailable
from appliance.core.model import DOMAIN_PREFIX, ClawSpec, ClawState, domain_name
from appliance.core.ports import AcceleratorChoice, DomainState, Hypervisor
from appliance.hypervisor.fake import FakeHypervisor
from appliance.hypervisor.libvirt_hypervisor import LibvirtHypervisor
from appliance.image.manifest import artefact_entry, write_manifest
from appliance.schedule.jobs import ScheduleRepository
from appliance.store import Store
from appliance.store.approvals import ApprovalRepository
from appliance.store.messages import MessageRepository
from appliance.store.skills import SkillRepository

TEST_URI = "test:///default"

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin") is None,
    reason="needs qemu-utils and e2fsprogs (installed by `clawden host provision`)",
)


def _fake_image(images: Path) -> Path:
    d = images / "bookworm-test00000000"
    d.mkdir(parents=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(d / "golden.qcow2"), "64M"], check=True
    )
    (d / "vmlinux").write_bytes(b"kernel")
    (d / "initrd.img").write_bytes(b"initrd")
    write_manifest(
        d,
        {
            "version": d.name,
            "created_at": "2026-01-01T00:00:00+00:00",
            "artefacts": {
                n: artefact_entry(d / n) for n in ("golden.qcow2", "vmlinux", "initrd.img")
            },
        },
    )
    return d


def _installation(home: Path, hypervisor: Hypervisor) -> Context:
    """A clawden home with a (fake) golden image, on the given libvirt."""
    settings = Settings(home=home, libvirt_uri="fake:///")
    settings.ensure_dirs()
    _fake_image(settings.images_dir)
    return Context(
        settings=settings,
        store=Store.open(settings.db_path),
        hypervisor=hypervisor,
        pick_accelerator=lambda: AcceleratorChoice(Accelerator.TCG, "test"),
    )


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    context = _installation(tmp_path / "home", FakeHypervisor())
    yield context
    context.store.db.close()


def _fake(ctx: Context) -> FakeHypervisor:
    assert isinstance(ctx.hypervisor, FakeHypervisor)
    return ctx.hypervisor


def _dom(ctx: Context, claw: str) -> str:
    return domain_name(ctx.settings.installation_tag, claw)


def _actions(ctx: Context) -> list[str]:
    return [e.action for e in ctx.audit.entries()]


def test_create_boots_a_claw_with_disks_keys_and_audit(ctx: Context) -> None:
    claw = Lifecycle(ctx).create(ClawSpec("alice", "Alice"))
    assert claw.state is ClawState.RUNNING
    assert ctx.hypervisor.state(_dom(ctx, "alice")) is DomainState.RUNNING
    d = ctx.settings.claw_dir("alice")
    assert {p.name for p in d.iterdir()} >= {"root.qcow2", "data.qcow2", "seed.img"}
    assert ctx.keys.get("alice", "guest_host") is not None
    client = ctx.keys.get("alice", "host_client")
    assert client is not None and client.private_key
    assert "claw.create" in _actions(ctx)
    assert ctx.ops.unfinished() == []


def test_root_overlay_is_backed_by_the_golden_image_which_stays_untouched(ctx: Context) -> None:
    golden = next(ctx.settings.images_dir.glob("*/golden.qcow2"))
    before = golden.read_bytes()
    Lifecycle(ctx).create(ClawSpec("alice", "Alice"))
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(ctx.settings.claw_dir("alice") / "root.qcow2")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(golden) in info
    assert golden.read_bytes() == before


def test_duplicate_name_is_refused_and_the_original_untouched(ctx: Context) -> None:
    life = Lifecycle(ctx)
    life.create(ClawSpec("alice", "Alice"))
    before = ctx.claws.require("alice")
    with pytest.raises(Conflict, match="already exists"):
        life.create(ClawSpec("alice", "Mallory"))
    assert ctx.claws.require("alice") == before


def test_failed_boot_rolls_create_back_completely(ctx: Context) -> None:
    _fake(ctx).fail_start.add(_dom(ctx, "bob"))
    with pytest.raises(ClawdenError):
        Lifecycle(ctx).create(ClawSpec("bob", "Bob"))
    assert ctx.claws.get("bob") is None
    assert ctx.hypervisor.state(_dom(ctx, "bob")) is None
    assert not ctx.settings.claw_dir("bob").exists()
    assert ctx.keys.get("bob", "host_client") is None
    assert "claw.create.rolled_back" in _actions(ctx)
    assert ctx.ops.history("bob")[0].status == "rolled_back"


class _Killed(KeyboardInterrupt):
    pass


def _dies_at(marker: str):  # type: ignore[no-untyped-def]
    def progress(line: str) -> None:
        if line.endswith(marker):
            raise _Killed(marker)

    return progress


@pytest.mark.parametrize("step", ["record", "provision", "disks", "define", "boot"])
def test_create_interrupted_at_any_step_is_finished_by_reconcile(ctx: Context, step: str) -> None:
    with pytest.raises(_Killed):
        Lifecycle(ctx).create(ClawSpec("carol", "Carol"), _dies_at(f"create carol: {step}"))
    (op,) = ctx.ops.unfinished()
    assert op.step == step
    report = reconcile(ctx)
    assert report.resumed and not report.errors
    assert ctx.claws.require("carol").state is ClawState.RUNNING
    assert ctx.hypervisor.state(_dom(ctx, "carol")) is DomainState.RUNNING
    assert ctx.ops.unfinished() == []


@pytest.mark.parametrize("step", ["record", "halt", "undefine", "files", "keys", "forget"])
def test_destroy_interrupted_at_any_step_is_finished_by_reconcile(ctx: Context, step: str) -> None:
    life = Lifecycle(ctx)
    life.create(ClawSpec("dave", "Dave"))
    with pytest.raises(_Killed):
        life.destroy("dave", _dies_at(f"destroy dave: {step}"))
    reconcile(ctx)
    assert ctx.claws.get("dave") is None
    assert ctx.hypervisor.state(_dom(ctx, "dave")) is None
    assert not ctx.settings.claw_dir("dave").exists()
    assert ctx.keys.get("dave", "guest_host") is None


# ---- killed right *after* a side effect, before it is recorded ---------------
# The tests above kill on the progress line printed before a step runs, so a
# step is always redone from its start. A real kill can also land after a
# step's effect (a domain defined, a disk made, a row written) but before the
# operation log says so: the resumed run then repeats work that is already
# done, which every step must tolerate without doing it twice or losing it.

P = ParamSpec("P")
R = TypeVar("R")


class _Tripwire:
    """Counts the side effects of one operation and kills (raises _Killed, as
    Ctrl-C would) right after the ``kill_at``-th; one kill, then it only counts."""

    def __init__(self) -> None:
        self.armed = False
        self.kill_at: int | None = None
        self.seen: list[str] = []

    def arm(self, kill_at: int | None) -> None:
        self.armed, self.kill_at, self.seen = True, kill_at, []

    def hit(self, what: str) -> None:
        if not self.armed:
            return
        self.seen.append(what)
        if len(self.seen) == self.kill_at:
            self.armed = False  # the resumed run goes through
            raise _Killed(f"killed after {what}")

    def after(self, what: str, fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
            result = fn(*args, **kwargs)
            self.hit(_label(what, args, "done"))
            return result

        return wrapped

    def before(self, what: str, fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
            self.hit(_label(what, args, "not yet recorded"))
            return fn(*args, **kwargs)

        return wrapped


def _label(what: str, args: tuple[object, ...], note: str) -> str:
    # Names and steps, not key material: the same label on every run.
    shown = ", ".join([a for a in args if isinstance(a, str)][:2])
    return f"{what}({shown}) {note}"


def _wire(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> _Tripwire:
    """A tripwire on every side effect the lifecycle has: each libvirt change,
    disk made, store row written, and each record in the operations log (so a
    kill also lands after a step's last effect, before the log moves on)."""
    wire = _Tripwire()
    hv = _fake(ctx)
    for name in ("define", "start", "shutdown", "force_off", "undefine"):
        monkeypatch.setattr(hv, name, wire.after(f"hypervisor.{name}", getattr(hv, name)))
    for name in ("add", "set_state", "set_image_version", "delete"):
        monkeypatch.setattr(ctx.claws, name, wire.after(f"claws.{name}", getattr(ctx.claws, name)))
    for name in ("put", "delete_for"):
        monkeypatch.setattr(ctx.keys, name, wire.after(f"keys.{name}", getattr(ctx.keys, name)))
    for name in ("provision_seed", "create_root_overlay", "create_data_disk"):
        original = getattr(lifecycle_module, name)
        monkeypatch.setattr(lifecycle_module, name, wire.after(name, original))
    monkeypatch.setattr(ctx.ops, "start", wire.after("ops.start", ctx.ops.start))
    monkeypatch.setattr(ctx.ops, "advance", wire.before("ops.advance", ctx.ops.advance))
    finish = wire.after("ops.finish", wire.before("ops.finish", ctx.ops.finish))
    monkeypatch.setattr(ctx.ops, "finish", finish)
    return wire


def _seed_file(seed: Path, name: str) -> str:
    debugfs = shutil.which("debugfs", path="/usr/sbin:/sbin") or "debugfs"
    out = subprocess.run(
        [debugfs, "-R", f"cat /{name}", str(seed)], capture_output=True, text=True, check=True
    )
    return out.stdout


def _count(ctx: Context, sql: str, *args: object) -> int:
    return int(ctx.store.db.execute(sql, args).fetchone()[0])


MARK = b"written by the guest before the operation"


def _prepare(kind: str, ctx: Context) -> None:
    """The claw as each operation finds it, with something written on each disk."""
    if kind == "create":
        return
    Lifecycle(ctx).create(ClawSpec("nora", "Nora"))
    if kind == "start":
        Lifecycle(ctx).stop("nora")
    for disk in ("data.qcow2", "root.qcow2"):
        with (ctx.settings.claw_dir("nora") / disk).open("ab") as f:
            f.write(MARK)


def _operate(kind: str, ctx: Context) -> None:
    life = Lifecycle(ctx)
    if kind == "create":
        life.create(ClawSpec("nora", "Nora"))
    else:
        getattr(life, kind)("nora")


HISTORY = {  # the claw's operations, newest first: the interrupted one exactly once
    "create": ["create"],
    "destroy": ["destroy", "create"],
    "start": ["start", "stop", "create"],
    "stop": ["stop", "create"],
}
STEPS = {"create": CREATE_STEPS, "destroy": DESTROY_STEPS, "start": START_STEPS, "stop": STOP_STEPS}


def _check_end_state(kind: str, ctx: Context) -> None:
    hv = _fake(ctx)
    d = ctx.settings.claw_dir("nora")
    actions = _actions(ctx)
    assert actions.count(f"claw.{kind}") == 1, actions  # audited once, not lost or doubled
    assert ctx.audit.verify().ok
    assert [op.kind for op in ctx.ops.history("nora")] == HISTORY[kind]
    assert {op.status for op in ctx.ops.history("nora")} == {"done"}
    if kind == "destroy":
        assert ctx.claws.get("nora") is None
        assert hv.domains == {}
        assert not d.exists()
        assert _count(ctx, "SELECT count(*) FROM keys WHERE claw = 'nora'") == 0
        assert _count(ctx, "SELECT count(*) FROM schedules WHERE claw = 'nora'") == 0
        return
    claw = ctx.claws.require("nora")
    (name,) = hv.domains
    dom = hv.domains[name]
    # Exactly the claw's disks: no second copy, no temp file left behind.
    assert sorted(p.name for p in d.iterdir()) == ["data.qcow2", "root.qcow2", "seed.img"]
    assert _count(ctx, "SELECT count(*) FROM keys WHERE claw = 'nora'") == 2
    assert _count(ctx, "SELECT count(*) FROM schedules WHERE claw = 'nora'") == 1
    # The seed disk carries the keys the host kept (a re-run provision step
    # rewrote both, never one without the other).
    guest_key = ctx.keys.get("nora", GUEST_HOST_KEY)
    client_key = ctx.keys.get("nora", HOST_CLIENT_KEY)
    assert guest_key is not None and client_key is not None
    seed = d / "seed.img"
    assert _seed_file(seed, "ssh_host_ed25519_key.pub").strip() == guest_key.public_key.strip()
    assert " ".join(client_key.public_key.split()[:2]) in _seed_file(seed, "authorized_keys")
    if kind == "stop":
        assert claw.state is ClawState.STOPPED
        assert dom.state is DomainState.SHUTOFF
        assert (dom.starts, dom.forced_offs) == (1, 0)  # a clean shutdown, no restart
    else:
        assert claw.state is ClawState.RUNNING
        assert dom.state is DomainState.RUNNING
        assert dom.starts == (1 if kind == "create" else 2)  # booted once by this operation
        assert dom.forced_offs == 0
    if kind != "create":
        assert MARK in (d / "data.qcow2").read_bytes()  # the data disk is kept as it was
        # and the root disk is a fresh overlay only when the claw (re)boots
        assert (MARK in (d / "root.qcow2").read_bytes()) is (kind == "stop")


@pytest.mark.parametrize("kind", ["create", "destroy", "start", "stop"])
def test_killed_right_after_any_side_effect_is_finished_by_reconcile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # Every run uses the same home, emptied first: the kill points name the
    # claw's domain, and its name carries the home's installation tag.
    home = tmp_path / "home"
    # One uninterrupted run lists the kill points...
    with monkeypatch.context() as patches:
        ctx = _installation(home, FakeHypervisor())
        try:
            wire = _wire(ctx, patches)
            _prepare(kind, ctx)
            wire.arm(None)
            _operate(kind, ctx)
            points = list(wire.seen)
        finally:
            ctx.store.db.close()
    # ...which include the end of every step, before the next is recorded.
    for step in STEPS[kind][1:]:
        assert f"ops.advance({step}) not yet recorded" in points
    assert points[-2:] == ["ops.finish(done) not yet recorded", "ops.finish(done) done"]

    for n, point in enumerate(points, start=1):
        shutil.rmtree(home)
        with monkeypatch.context() as patches:
            ctx = _installation(home, FakeHypervisor())
            try:
                wire = _wire(ctx, patches)
                _prepare(kind, ctx)
                wire.arm(n)
                with pytest.raises(_Killed, match=re.escape(f"killed after {point}")):
                    _operate(kind, ctx)
                report = reconcile(ctx)
                label = f"{kind} killed after {point}"
                assert len(report.resumed) == 1 and not report.errors, (label, report)
                assert (report.restarted, report.stopped) == ([], []), (label, report)
                assert ctx.ops.unfinished() == [], label
                try:
                    _check_end_state(kind, ctx)
                except AssertionError as exc:
                    raise AssertionError(f"{label}: {exc}") from exc
                assert reconcile(ctx).changed is False, label  # settled: nothing left to do
            finally:
                ctx.store.db.close()


def test_stop_start_keeps_data_disk_and_renews_root(ctx: Context) -> None:
    life = Lifecycle(ctx)
    life.create(ClawSpec("erin", "Erin"))
    data = ctx.settings.claw_dir("erin") / "data.qcow2"
    root = ctx.settings.claw_dir("erin") / "root.qcow2"
    data_inode, root_inode = data.stat().st_ino, root.stat().st_ino
    life.stop("erin")
    assert ctx.claws.require("erin").state is ClawState.STOPPED
    assert ctx.hypervisor.state(_dom(ctx, "erin")) is DomainState.SHUTOFF
    life.start("erin")
    assert ctx.hypervisor.state(_dom(ctx, "erin")) is DomainState.RUNNING
    assert data.stat().st_ino == data_inode
    assert root.stat().st_ino != root_inode


def test_hypervisor_down_is_unavailable_and_stores_nothing(ctx: Context) -> None:
    _fake(ctx).available = False
    with pytest.raises(Unavailable):
        Lifecycle(ctx).create(ClawSpec("frank", "Frank"))
    assert ctx.claws.list() == []
    assert ctx.ops.history() == []


def test_tampered_image_is_refused_and_audited(ctx: Context) -> None:
    golden = next(ctx.settings.images_dir.glob("*/golden.qcow2"))
    with golden.open("r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    with pytest.raises(IntegrityError, match="sha256"):
        Lifecycle(ctx).create(ClawSpec("gina", "Gina"))
    assert ctx.claws.list() == []
    assert "image.refused" in _actions(ctx)


def test_reconcile_restarts_a_crashed_claw_and_removes_orphans(ctx: Context) -> None:
    Lifecycle(ctx).create(ClawSpec("hal", "Hal"))
    _fake(ctx).crash(_dom(ctx, "hal"))
    Lifecycle(ctx).create(ClawSpec("ivy", "Ivy"))
    # an orphan: a domain and files nothing accounts for
    ctx.claws.delete("ivy")
    report = reconcile(ctx)
    assert report.restarted == ["hal"]
    assert ctx.hypervisor.state(_dom(ctx, "hal")) is DomainState.RUNNING
    assert _dom(ctx, "ivy") in report.orphans_removed
    assert ctx.hypervisor.state(_dom(ctx, "ivy")) is None
    # Its files may hold someone's data: moved aside, never deleted.
    assert not ctx.settings.claw_dir("ivy").exists()
    (aside,) = (ctx.settings.home / "orphans").iterdir()
    assert (aside / "data.qcow2").exists()
    assert reconcile(ctx).changed is False


def test_after_a_host_reboot_every_claw_meant_to_run_is_started_again(ctx: Context) -> None:
    # What `clawden serve` finds after a reboot (its initial reconcile):
    # libvirt has every persistent domain defined and shut off, and the store
    # still says which claws were running. Nobody logs in.
    for name in ("jay", "kim", "lou"):
        Lifecycle(ctx).create(ClawSpec(name, name.title()))
    Lifecycle(ctx).stop("kim")
    for name in ("jay", "kim", "lou"):
        _fake(ctx).force_off(_dom(ctx, name))  # the power went
    starts = {n: _fake(ctx).domains[_dom(ctx, n)].starts for n in ("jay", "kim", "lou")}
    report = reconcile(ctx)
    assert sorted(report.restarted) == ["jay", "lou"] and report.errors == []
    assert ctx.hypervisor.state(_dom(ctx, "jay")) is DomainState.RUNNING
    assert ctx.hypervisor.state(_dom(ctx, "lou")) is DomainState.RUNNING
    # The claw someone stopped stays stopped.
    assert ctx.hypervisor.state(_dom(ctx, "kim")) is DomainState.SHUTOFF
    assert _fake(ctx).domains[_dom(ctx, "kim")].starts == starts["kim"]
    assert ctx.claws.require("kim").state is ClawState.STOPPED
    # Their data disks came through; nothing was treated as an orphan.
    assert report.orphans_removed == []
    assert (ctx.settings.claw_dir("jay") / "data.qcow2").exists()
    assert reconcile(ctx).changed is False


def test_libvirt_late_after_a_reboot_is_a_retry_not_a_lost_claw(ctx: Context) -> None:
    # libvirtd may still be starting when the controller's first reconcile
    # runs: that pass fails as a whole (the controller logs "reconcile
    # skipped" and tries again 30 s later), and the next one starts the claw.
    Lifecycle(ctx).create(ClawSpec("max", "Max"))
    _fake(ctx).force_off(_dom(ctx, "max"))
    _fake(ctx).available = False
    with pytest.raises(Unavailable):
        reconcile(ctx)
    assert ctx.claws.require("max").state is ClawState.RUNNING
    _fake(ctx).available = True
    assert reconcile(ctx).restarted == ["max"]
    assert ctx.hypervisor.state(_dom(ctx, "max")) is DomainState.RUNNING


def test_a_claw_that_keeps_failing_to_start_is_retried_with_backoff(ctx: Context) -> None:
    from appliance.controller.reconcile import RetryGate

    now = [0.0]
    gate = RetryGate(first=30, cap=120, clock=lambda: now[0])
    Lifecycle(ctx).create(ClawSpec("kim", "Kim"))
    _fake(ctx).crash(_dom(ctx, "kim"))
    _fake(ctx).fail_start.add(_dom(ctx, "kim"))
    attempts = []
    for t in (0, 10, 31, 60, 92, 200, 400):
        now[0] = t
        before = _fake(ctx).calls.count(("start", _dom(ctx, "kim")))
        reconcile(ctx, gate=gate)
        attempts.append(_fake(ctx).calls.count(("start", _dom(ctx, "kim"))) > before)
    assert attempts == [True, False, True, False, True, False, True]


def test_operation_owned_by_a_live_process_is_left_alone(ctx: Context) -> None:
    with pytest.raises(_Killed):
        Lifecycle(ctx).create(ClawSpec("jo", "Jo"), _dies_at("create jo: disks"))
    (op,) = ctx.ops.unfinished()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        ctx.store.db.execute(
            "UPDATE operations SET owner_pid = ? WHERE id = ?", (sleeper.pid, op.id)
        )
        ctx.store.db.conn.commit()
        report = reconcile(ctx)
        assert report.resumed == []
        assert ctx.ops.unfinished()[0].id == op.id
        with pytest.raises(Conflict, match=f"process {sleeper.pid}"):
            Lifecycle(ctx).destroy("jo")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert os.getpid() != sleeper.pid


def test_two_installations_on_one_libvirt_never_touch_each_others_claws(
    ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A test run (or a second home) beside the real appliance, same libvirtd —
    # and here even the same installation tag (a 1 in 2**32 hash collision),
    # so the domain names collide and only the UUIDs tell the claws apart.
    monkeypatch.setattr(Settings, "installation_tag", property(lambda self: "c0111de5"))
    other = _installation(tmp_path / "other", _fake(ctx))
    try:
        Lifecycle(ctx).create(ClawSpec("alice", "Alice"))
        # The other installation's reconcile sees our alice's domain, which its
        # store does not know: not its orphan, so it is left alone.
        assert reconcile(other).orphans_removed == []
        # Same claw name over there: refused, and its rollback spares ours.
        with pytest.raises(Conflict):
            Lifecycle(other).create(ClawSpec("alice", "Other Alice"))
        assert ctx.hypervisor.state(_dom(ctx, "alice")) is DomainState.RUNNING
        assert other.claws.get("alice") is None
        assert Lifecycle(ctx).verified_image().version  # ours still fine
    finally:
        other.store.db.close()


def test_create_adds_the_heartbeat_and_destroy_forgets_everything_of_the_claw(
    ctx: Context,
) -> None:
    Lifecycle(ctx).create(ClawSpec("alice", "Alice"))
    beat = ScheduleRepository(ctx.store.db).heartbeat("alice")
    assert beat is not None and beat.enabled and beat.spec == "every=30m"
    MessageRepository(ctx.store.db).add("alice", "in", "cli", "operator", "hi", kind="chat")
    ApprovalRepository(ctx.store.db).request("alice", "buy tulips", "12 tulips", 60)
    SkillRepository(ctx.store.db).record("alice", "weather", "0" * 64, "test")
    ctx.store.users.add("kid", "member", "$argon2id$stand-in", ("alice",), datetime.now(UTC))
    ctx.store.db.execute(
        "INSERT INTO llm_calls (claw, ts, model, status) VALUES ('alice', '2026', 'm', 'ok')"
    )
    Lifecycle(ctx).destroy("alice")
    for table in ("schedules", "messages", "approvals", "skills", "user_claws"):
        assert list(ctx.store.db.query(f"SELECT * FROM {table} WHERE claw = 'alice'")) == [], table
    assert ctx.store.users.require("kid").claws == ()  # the account stays, unowning
    # Spending stays on record after the claw is gone.
    assert len(list(ctx.store.db.query("SELECT * FROM llm_calls WHERE claw = 'alice'"))) == 1


# ---- installation tags: two homes on one libvirt, and claws from before tags ----


@dataclass
class SharedLibvirt:
    hv: Hypervisor
    boot_id: Callable[[str], object]  # changes whenever the domain is (re)started


@pytest.fixture(params=["fake", "libvirt-test"])
def shared(request: pytest.FixtureRequest) -> Iterator[SharedLibvirt]:
    """One libvirt for several installations: the fake, or libvirt's own
    ``test:///default`` driver through the real adapter."""
    if request.param == "fake":
        fake = FakeHypervisor()
        yield SharedLibvirt(fake, lambda name: (name, fake.domains[name].starts))
        return
    hv = LibvirtHypervisor(TEST_URI, poll_interval=0.02)
    side = libvirt.open(TEST_URI)  # keeps the driver's state; sees domain ids
    before = set(hv.list_domains(DOMAIN_PREFIX))
    yield SharedLibvirt(hv, lambda name: side.lookupByName(name).ID())
    for name in set(hv.list_domains(DOMAIN_PREFIX)) - before:
        hv.force_off(name)
        hv.undefine(name)
    side.close()


def test_installation_tags_are_stable_per_home_and_keep_the_old_uuids(tmp_path: Path) -> None:
    one = Settings(home=tmp_path / "one", libvirt_uri="fake:///")
    two = Settings(home=tmp_path / "two", libvirt_uri="fake:///")
    again = Settings(home=tmp_path / "one", libvirt_uri="qemu:///system")
    assert one.installation_tag == again.installation_tag != two.installation_tag
    assert len(one.installation_tag) == 8 and int(one.installation_tag, 16) >= 0
    name = domain_name(one.installation_tag, "a" * 24)  # the longest claw name
    assert name == f"clawden-{one.installation_tag}-{'a' * 24}" and len(name) == 41
    # The UUID derivation is the one clawden always used: existing claws keep theirs.
    old = str(uuid.uuid5(uuid.NAMESPACE_URL, f"clawden:{tmp_path / 'one'}:alice"))
    assert domain_uuid(one, "alice") == old


def test_two_installations_on_one_libvirt_each_create_and_destroy_alice(
    shared: SharedLibvirt, tmp_path: Path
) -> None:
    hv = shared.hv
    one = _installation(tmp_path / "one", hv)
    two = _installation(tmp_path / "two", hv)
    try:
        Lifecycle(one).create(ClawSpec("alice", "Alice"))
        Lifecycle(two).create(ClawSpec("alice", "Other Alice"))
        ones, twos = _dom(one, "alice"), _dom(two, "alice")
        assert ones != twos and {ones, twos} <= set(hv.list_domains(DOMAIN_PREFIX))
        assert hv.state(ones) is hv.state(twos) is DomainState.RUNNING
        assert hv.uuid(ones) == domain_uuid(one.settings, "alice") != hv.uuid(twos)
        # Neither reconcile sees the other's alice as its orphan, or as its own.
        for ctx in (one, two):
            report = reconcile(ctx)
            assert not report.changed and not report.errors
        booted = shared.boot_id(twos)
        Lifecycle(one).destroy("alice")
        assert hv.state(ones) is None
        assert hv.state(twos) is DomainState.RUNNING and shared.boot_id(twos) == booted
        assert two.claws.require("alice").member == "Other Alice"
        assert not reconcile(two).changed
        Lifecycle(two).destroy("alice")
        assert hv.state(twos) is None
        assert [d for d in hv.list_domains(DOMAIN_PREFIX) if d.endswith("-alice")] == []
    finally:
        one.store.db.close()
        two.store.db.close()


def _define_the_old_way(ctx: Context, claw: str, running: bool) -> str:
    """Turn a claw's domain into what clawden defined before installation
    tags: named ``clawden-<claw>``, with the same UUID and definition."""
    hv = ctx.hypervisor
    hv.force_off(_dom(ctx, claw))
    hv.undefine(_dom(ctx, claw))
    image = Lifecycle(ctx).verified_image()
    spec = build_domain_spec(ctx.settings, ctx.claws.require(claw), image, Accelerator.TCG)
    old = replace(spec, name=f"clawden-{claw}")
    hv.define(old)
    if running:
        hv.start(old.name)
    return old.name


def _data_disk(ctx: Context, claw: str) -> tuple[int, str]:
    data = ctx.settings.claw_dir(claw) / "data.qcow2"
    return data.stat().st_ino, hashlib.sha256(data.read_bytes()).hexdigest()


def _renames(ctx: Context) -> list[tuple[str, dict[str, object]]]:
    return [(e.target, e.details) for e in ctx.audit.entries() if e.action == "claw.domain_renamed"]


def test_a_stopped_claw_from_before_tags_is_renamed_by_reconcile_and_starts(
    shared: SharedLibvirt, tmp_path: Path
) -> None:
    ctx = _installation(tmp_path / "home", shared.hv)
    try:
        Lifecycle(ctx).create(ClawSpec("alice", "Alice"))
        Lifecycle(ctx).stop("alice")
        old = _define_the_old_way(ctx, "alice", running=False)
        uuid_before, data_before = shared.hv.uuid(old), _data_disk(ctx, "alice")

        report = reconcile(ctx)  # the upgrade's first reconcile
        assert report.renamed == ["alice"] and not report.errors
        assert report.orphans_removed == [] and report.restarted == []
        assert shared.hv.state(old) is None
        assert shared.hv.state(_dom(ctx, "alice")) is DomainState.SHUTOFF
        assert uuid_before == domain_uuid(ctx.settings, "alice")
        assert shared.hv.uuid(_dom(ctx, "alice")) == uuid_before
        assert _renames(ctx) == [("alice", {"from": old, "to": _dom(ctx, "alice")})]

        Lifecycle(ctx).start("alice")
        assert shared.hv.state(_dom(ctx, "alice")) is DomainState.RUNNING
        assert _data_disk(ctx, "alice") == data_before
        assert not reconcile(ctx).changed
        assert len(_renames(ctx)) == 1
    finally:
        ctx.store.db.close()


def test_a_running_claw_from_before_tags_keeps_running_and_is_renamed_at_its_stop(
    shared: SharedLibvirt, tmp_path: Path
) -> None:
    ctx = _installation(tmp_path / "home", shared.hv)
    try:
        Lifecycle(ctx).create(ClawSpec("alice", "Alice"))
        old = _define_the_old_way(ctx, "alice", running=True)
        booted, data_before = shared.boot_id(old), _data_disk(ctx, "alice")

        # libvirt cannot rename a running domain: reconcile leaves the VM be
        # (no restart, no orphan), and everything finds it under its old name.
        report = reconcile(ctx)
        assert not report.changed and not report.errors
        assert shared.hv.state(old) is DomainState.RUNNING and shared.boot_id(old) == booted
        assert shared.hv.state(_dom(ctx, "alice")) is None
        assert find_domain(ctx, "alice") == ClawDomain(old, DomainState.RUNNING, legacy=True)
        lines = list(claw_status_lines(ctx, "alice"))
        assert f"domain:    {old}: running" in lines
        Lifecycle(ctx).start("alice")  # already running: nothing happens to it
        assert shared.boot_id(old) == booted and _renames(ctx) == []

        Lifecycle(ctx).stop("alice")  # stopped at last: renamed
        assert shared.hv.state(old) is None
        assert shared.hv.state(_dom(ctx, "alice")) is DomainState.SHUTOFF
        assert _renames(ctx) == [("alice", {"from": old, "to": _dom(ctx, "alice")})]
        Lifecycle(ctx).start("alice")
        assert shared.hv.state(_dom(ctx, "alice")) is DomainState.RUNNING
        assert shared.hv.uuid(_dom(ctx, "alice")) == domain_uuid(ctx.settings, "alice")
        assert _data_disk(ctx, "alice") == data_before
        assert not reconcile(ctx).changed
    finally:
        ctx.store.db.close()


def test_a_crashed_claw_from_before_tags_is_renamed_then_restarted(
    shared: SharedLibvirt, tmp_path: Path
) -> None:
    ctx = _installation(tmp_path / "home", shared.hv)
    try:
        Lifecycle(ctx).create(ClawSpec("alice", "Alice"))
        old = _define_the_old_way(ctx, "alice", running=True)
        shared.hv.force_off(old)  # the guest died
        report = reconcile(ctx)
        assert (report.renamed, report.restarted, report.errors) == (["alice"], ["alice"], [])
        assert shared.hv.state(_dom(ctx, "alice")) is DomainState.RUNNING
        assert shared.hv.state(old) is None
    finally:
        ctx.store.db.close()


def test_a_create_interrupted_before_the_upgrade_is_finished_under_the_new_name(
    shared: SharedLibvirt, tmp_path: Path
) -> None:
    ctx = _installation(tmp_path / "home", shared.hv)
    try:
        with pytest.raises(_Killed):
            Lifecycle(ctx).create(ClawSpec("carol", "Carol"), _dies_at("create carol: boot"))
        old = _define_the_old_way(ctx, "carol", running=False)  # defined, never booted
        report = reconcile(ctx)
        assert report.resumed and not report.errors
        assert shared.hv.state(old) is None
        assert shared.hv.state(_dom(ctx, "carol")) is DomainState.RUNNING
        assert ctx.claws.require("carol").state is ClawState.RUNNING
        assert _renames(ctx) == [("carol", {"from": old, "to": _dom(ctx, "carol")})]
    finally:
        ctx.store.db.close()


def test_destroying_a_claw_from_before_tags_removes_its_old_domain(
    shared: SharedLibvirt, tmp_path: Path
) -> None:
    ctx = _installation(tmp_path / "home", shared.hv)
    try:
        Lifecycle(ctx).create(ClawSpec("alice", "Alice"))
        old = _define_the_old_way(ctx, "alice", running=True)
        Lifecycle(ctx).destroy("alice")
        assert shared.hv.state(old) is None and shared.hv.state(_dom(ctx, "alice")) is None
        assert ctx.claws.get("alice") is None
    finally:
        ctx.store.db.close()


def test_old_style_domains_of_another_installation_are_never_renamed_or_removed(
    shared: SharedLibvirt, tmp_path: Path
) -> None:
    ours = _installation(tmp_path / "ours", shared.hv)
    theirs = _installation(tmp_path / "theirs", shared.hv)
    try:
        # An older clawden elsewhere on this libvirt still runs clawden-alice...
        Lifecycle(theirs).create(ClawSpec("alice", "Their Alice"))
        old = _define_the_old_way(theirs, "alice", running=True)
        booted = shared.boot_id(old)
        # ...and one of its claws was left behind without a row: its orphan, not ours.
        Lifecycle(theirs).create(ClawSpec("bob", "Bob"))
        their_bob = _define_the_old_way(theirs, "bob", running=False)
        # We have an alice too, and a pre-tag orphan of our own.
        Lifecycle(ours).create(ClawSpec("alice", "Alice"))
        Lifecycle(ours).create(ClawSpec("carl", "Carl"))
        our_carl = _define_the_old_way(ours, "carl", running=False)
        ours.claws.delete("carl")
        shutil.rmtree(ours.settings.claw_dir("carl"))
        ours.keys.delete_for("carl")

        report = reconcile(ours)
        assert report.renamed == [] and not report.errors
        assert report.orphans_removed == [our_carl]
        assert shared.hv.state(our_carl) is None
        assert shared.hv.state(old) is DomainState.RUNNING and shared.boot_id(old) == booted
        assert shared.hv.state(their_bob) is DomainState.SHUTOFF
        assert find_domain(ours, "alice").name == _dom(ours, "alice")
        Lifecycle(ours).stop("alice")
        Lifecycle(ours).destroy("alice")
        assert shared.hv.state(old) is DomainState.RUNNING and shared.boot_id(old) == booted
        assert _renames(ours) == []
    finally:
        ours.store.db.close()
        theirs.store.db.close()
