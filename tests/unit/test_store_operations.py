"""OperationLog: recorded, resumable multi-step operations."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlite_utils import Database

from appliance.core.errors import Conflict, InvalidInput, NotFound
from appliance.store import OperationLog, open_db
from appliance.store.operations import pid_alive


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[OperationLog]:
    db: Database = open_db(tmp_path / "clawden.db")
    yield OperationLog(db)
    db.close()


def test_start_records_a_running_operation_owned_by_this_process(ops: OperationLog) -> None:
    op = ops.start("create", "alice", {"vcpus": 1}, "define_domain")
    assert (op.kind, op.claw, op.step, op.status) == ("create", "alice", "define_domain", "running")
    assert op.params == {"vcpus": 1}
    assert op.owner_pid == os.getpid()
    assert op.error is None
    assert op.started_at == op.updated_at
    assert ops.get(op.id) == op


def test_advance_moves_the_step_and_merges_params(ops: OperationLog) -> None:
    op = ops.start("create", "alice", {"vcpus": 1, "disk": "old"}, "mint_keys")
    advanced = ops.advance(op.id, "write_seed", {"disk": "new", "fingerprint": "SHA256:x"})
    assert advanced.step == "write_seed"
    assert advanced.params == {"vcpus": 1, "disk": "new", "fingerprint": "SHA256:x"}
    last = ops.advance(op.id, "boot")
    assert last.params == advanced.params  # no update: params are kept
    assert ops.get(op.id) == last  # stored, not just returned


def test_finish_ends_an_operation(ops: OperationLog) -> None:
    op = ops.start("destroy", "alice", {}, "stop")
    ops.finish(op.id, "failed", error="libvirt went away")
    done = ops.get(op.id)
    assert done is not None
    assert (done.status, done.error) == ("failed", "libvirt went away")
    with pytest.raises(Conflict):
        ops.advance(op.id, "undefine")
    with pytest.raises(Conflict):
        ops.finish(op.id, "done")


def test_finish_rejects_a_non_final_status(ops: OperationLog) -> None:
    op = ops.start("start", "alice", {}, "boot")
    with pytest.raises(InvalidInput):
        ops.finish(op.id, "running")
    with pytest.raises(InvalidInput):
        ops.finish(op.id, "bogus")
    assert ops.get(op.id) == op


def test_unknown_operation(ops: OperationLog) -> None:
    assert ops.get(4242) is None
    with pytest.raises(NotFound):
        ops.advance(4242, "x")
    with pytest.raises(NotFound):
        ops.claim(4242, os.getpid())


def test_unfinished_lists_running_operations_oldest_first(ops: OperationLog) -> None:
    first = ops.start("create", "alice", {}, "a")
    second = ops.start("create", "bob", {}, "a")
    third = ops.start("stop", "carol", {}, "a")
    ops.finish(second.id, "done")
    assert [op.id for op in ops.unfinished()] == [first.id, third.id]


def test_one_running_operation_per_claw(ops: OperationLog) -> None:
    first = ops.start("create", "alice", {}, "a")
    with pytest.raises(Conflict) as info:
        ops.start("destroy", "alice", {}, "a")
    assert str(first.id) in info.value.what
    assert ops.running_for("alice") == first
    assert ops.running_for("bob") is None
    ops.finish(first.id, "rolled_back")
    assert ops.running_for("alice") is None
    second = ops.start("destroy", "alice", {}, "a")
    assert ops.running_for("alice") == second


def test_history_is_newest_first_and_filterable(ops: OperationLog) -> None:
    ids = []
    for claw in ("alice", "bob", "alice", "bob", "alice"):
        op = ops.start("start", claw, {}, "boot")
        ops.finish(op.id, "done")
        ids.append((claw, op.id))
    assert [op.id for op in ops.history()] == [i for _, i in reversed(ids)]
    assert [op.id for op in ops.history("alice")] == [i for c, i in reversed(ids) if c == "alice"]
    assert [op.id for op in ops.history(limit=2)] == [ids[4][1], ids[3][1]]


def _set_owner(ops: OperationLog, op_id: int, pid: int | None) -> None:
    ops.db.execute("UPDATE operations SET owner_pid = ? WHERE id = ?", [pid, op_id])


def test_claim_takes_over_from_a_dead_owner(ops: OperationLog) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid is gone
    op = ops.start("create", "alice", {}, "a")
    _set_owner(ops, op.id, proc.pid)
    me = os.getpid()
    assert ops.claim(op.id, me) is True
    claimed = ops.get(op.id)
    assert claimed is not None and claimed.owner_pid == me


def test_claim_refuses_while_a_foreign_owner_is_alive(ops: OperationLog) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        op = ops.start("create", "alice", {}, "a")
        _set_owner(ops, op.id, proc.pid)
        assert ops.claim(op.id, os.getpid()) is False
        still = ops.get(op.id)
        assert still is not None and still.owner_pid == proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()


def test_claim_by_the_current_owner_succeeds(ops: OperationLog) -> None:
    op = ops.start("create", "alice", {}, "a")
    assert ops.claim(op.id, os.getpid()) is True


def test_claim_of_an_ownerless_operation_succeeds(ops: OperationLog) -> None:
    op = ops.start("create", "alice", {}, "a")
    _set_owner(ops, op.id, None)
    assert ops.claim(op.id, 12345) is True
    claimed = ops.get(op.id)
    assert claimed is not None and claimed.owner_pid == 12345


def test_claim_of_a_finished_operation_fails(ops: OperationLog) -> None:
    op = ops.start("create", "alice", {}, "a")
    ops.finish(op.id, "done")
    _set_owner(ops, op.id, None)
    assert ops.claim(op.id, os.getpid()) is False


def test_an_owner_we_may_not_signal_counts_as_alive(
    ops: OperationLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def kill(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill)
    assert pid_alive(1) is True
    op = ops.start("create", "alice", {}, "a")
    _set_owner(ops, op.id, 1)
    assert ops.claim(op.id, 999_999) is False
