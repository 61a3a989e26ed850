"""Create/start/stop/destroy and reconcile against FakeHypervisor, real SQLite
and the real disk tools (qemu-img, mkfs.ext4): fast, no VM."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import Settings
from appliance.controller.context import Context
from appliance.controller.lifecycle import Lifecycle
from appliance.controller.reconcile import reconcile
from appliance.core.domain import Accelerator
from appliance.core.errors import ClawdenError, Conflict, IntegrityError, Unavailable
from appliance.core.model import ClawSpec, ClawState
from appliance.core.ports import AcceleratorChoice, DomainState
from appliance.hypervisor.fake import FakeHypervisor
from appliance.image.manifest import artefact_entry, write_manifest
from appliance.schedule.jobs import ScheduleRepository
from appliance.store import Store
from appliance.store.approvals import ApprovalRepository
from appliance.store.messages import MessageRepository
from appliance.store.skills import SkillRepository

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
    (d / "vmlinuz").write_bytes(b"kernel")
    (d / "initrd.img").write_bytes(b"initrd")
    write_manifest(
        d,
        {
            "version": d.name,
            "created_at": "2026-01-01T00:00:00+00:00",
            "artefacts": {
                n: artefact_entry(d / n) for n in ("golden.qcow2", "vmlinuz", "initrd.img")
            },
        },
    )
    return d


def _installation(home: Path, hypervisor: FakeHypervisor) -> Context:
    """A clawden home with a (fake) golden image, on the given libvirt."""
    settings = Settings(home=home, libvirt_uri="fake:///")
    settings.ensure_dirs()
    _fake_image(settings.images_dir)
    return Context(
        settings=settings,
        store=Store.open(settings.db_path),
        hypervisor=hypervisor,
        pick_accelerator=lambda k, i: AcceleratorChoice(Accelerator.TCG, "test"),
    )


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    context = _installation(tmp_path / "home", FakeHypervisor())
    yield context
    context.store.db.close()


def _fake(ctx: Context) -> FakeHypervisor:
    assert isinstance(ctx.hypervisor, FakeHypervisor)
    return ctx.hypervisor


def _actions(ctx: Context) -> list[str]:
    return [e.action for e in ctx.audit.entries()]


def test_create_boots_a_claw_with_disks_keys_and_audit(ctx: Context) -> None:
    claw = Lifecycle(ctx).create(ClawSpec("alice", "Alice"))
    assert claw.state is ClawState.RUNNING
    assert ctx.hypervisor.state("clawden-alice") is DomainState.RUNNING
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
    _fake(ctx).fail_start.add("clawden-bob")
    with pytest.raises(ClawdenError):
        Lifecycle(ctx).create(ClawSpec("bob", "Bob"))
    assert ctx.claws.get("bob") is None
    assert ctx.hypervisor.state("clawden-bob") is None
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
    assert ctx.hypervisor.state("clawden-carol") is DomainState.RUNNING
    assert ctx.ops.unfinished() == []


@pytest.mark.parametrize("step", ["record", "halt", "undefine", "files", "keys", "forget"])
def test_destroy_interrupted_at_any_step_is_finished_by_reconcile(ctx: Context, step: str) -> None:
    life = Lifecycle(ctx)
    life.create(ClawSpec("dave", "Dave"))
    with pytest.raises(_Killed):
        life.destroy("dave", _dies_at(f"destroy dave: {step}"))
    reconcile(ctx)
    assert ctx.claws.get("dave") is None
    assert ctx.hypervisor.state("clawden-dave") is None
    assert not ctx.settings.claw_dir("dave").exists()
    assert ctx.keys.get("dave", "guest_host") is None


def test_stop_start_keeps_data_disk_and_renews_root(ctx: Context) -> None:
    life = Lifecycle(ctx)
    life.create(ClawSpec("erin", "Erin"))
    data = ctx.settings.claw_dir("erin") / "data.qcow2"
    root = ctx.settings.claw_dir("erin") / "root.qcow2"
    data_inode, root_inode = data.stat().st_ino, root.stat().st_ino
    life.stop("erin")
    assert ctx.claws.require("erin").state is ClawState.STOPPED
    assert ctx.hypervisor.state("clawden-erin") is DomainState.SHUTOFF
    life.start("erin")
    assert ctx.hypervisor.state("clawden-erin") is DomainState.RUNNING
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
    _fake(ctx).crash("clawden-hal")
    Lifecycle(ctx).create(ClawSpec("ivy", "Ivy"))
    # an orphan: a domain and files nothing accounts for
    ctx.claws.delete("ivy")
    report = reconcile(ctx)
    assert report.restarted == ["hal"]
    assert ctx.hypervisor.state("clawden-hal") is DomainState.RUNNING
    assert "clawden-ivy" in report.orphans_removed
    assert ctx.hypervisor.state("clawden-ivy") is None
    # Its files may hold someone's data: moved aside, never deleted.
    assert not ctx.settings.claw_dir("ivy").exists()
    (aside,) = (ctx.settings.home / "orphans").iterdir()
    assert (aside / "data.qcow2").exists()
    assert reconcile(ctx).changed is False


def test_a_claw_that_keeps_failing_to_start_is_retried_with_backoff(ctx: Context) -> None:
    from appliance.controller.reconcile import RetryGate

    now = [0.0]
    gate = RetryGate(first=30, cap=120, clock=lambda: now[0])
    Lifecycle(ctx).create(ClawSpec("kim", "Kim"))
    _fake(ctx).crash("clawden-kim")
    _fake(ctx).fail_start.add("clawden-kim")
    attempts = []
    for t in (0, 10, 31, 60, 92, 200, 400):
        now[0] = t
        before = _fake(ctx).calls.count(("start", "clawden-kim"))
        reconcile(ctx, gate=gate)
        attempts.append(_fake(ctx).calls.count(("start", "clawden-kim")) > before)
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
    ctx: Context, tmp_path: Path
) -> None:
    # A test run (or a second home) beside the real appliance, same libvirtd.
    other = _installation(tmp_path / "other", _fake(ctx))
    try:
        Lifecycle(ctx).create(ClawSpec("alice", "Alice"))
        # The other installation's reconcile sees clawden-alice, which its
        # store does not know: not its orphan, so it is left alone.
        assert reconcile(other).orphans_removed == []
        # Same claw name over there: refused, and its rollback spares ours.
        with pytest.raises(Conflict):
            Lifecycle(other).create(ClawSpec("alice", "Other Alice"))
        assert ctx.hypervisor.state("clawden-alice") is DomainState.RUNNING
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
    ctx.store.db.execute(
        "INSERT INTO llm_calls (claw, ts, model, status) VALUES ('alice', '2026', 'm', 'ok')"
    )
    Lifecycle(ctx).destroy("alice")
    for table in ("schedules", "messages", "approvals", "skills"):
        assert list(ctx.store.db.query(f"SELECT * FROM {table} WHERE claw = 'alice'")) == [], table
    # Spending stays on record after the claw is gone.
    assert len(list(ctx.store.db.query("SELECT * FROM llm_calls WHERE claw = 'alice'"))) == 1
