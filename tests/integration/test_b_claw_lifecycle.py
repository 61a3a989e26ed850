"""Lifecycle against real VMs: persistence, destroy, refusals, bad input, resumability,
two installations on one libvirtd, and claws from before installation tags."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import libvirt
import pytest

from appliance.config import Settings
from appliance.core.model import domain_name, legacy_domain_name
from tests.integration.conftest import (
    URI,
    Env,
    _cleanup_home,
    _link_image_cache,
    env_for,
    make_home,
)
from tests.support.local_sshd import mint_ed25519

pytestmark = pytest.mark.integration


def _virsh_domains() -> list[str]:
    out = subprocess.run(
        ["virsh", "-c", URI, "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def _domain(env: Env, claw: str) -> str:
    """The claw's libvirt domain in that installation: ``clawden-<tag>-<claw>``."""
    return domain_name(Settings.from_env(env.env).installation_tag, claw)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The failure is one line, last, saying what and what to do (progress
    lines starting with '·' may precede it)."""
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert all(line.startswith(("·", "error: ")) for line in lines), proc.stderr
    assert " — " in errors[0], errors[0]
    return errors[0]


def test_data_survives_stop_and_start(clawden_env: Env, two_claws: tuple[str, str]) -> None:
    clawden_env.run("claw", "exec", "bob", "--", "sh", "-c", "echo persisted > /data/home/note")
    clawden_env.run("claw", "stop", "bob")
    assert "stopped" in clawden_env.run("claw", "status", "bob").stdout
    clawden_env.run("claw", "start", "bob", "--timeout", "400")
    out = clawden_env.run("claw", "exec", "bob", "--", "cat", "/data/home/note").stdout
    assert out == "persisted\n"


def test_changed_guest_host_key_is_refused_and_audited(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    db = clawden_env.home / "clawden.db"
    _, impostor = mint_ed25519()
    with sqlite3.connect(db) as conn:
        (real,) = conn.execute(
            "select public_key from keys where claw='alice' and kind='guest_host'"
        ).fetchone()
        conn.execute(
            "update keys set public_key=? where claw='alice' and kind='guest_host'", (impostor,)
        )
    conn.close()
    try:
        clawden_env.run("claw", "exec", "alice", "--", "true", check=False)  # warm
        _reconnect(clawden_env, "alice")
        deadline = time.monotonic() + 120
        status = ""
        while time.monotonic() < deadline:
            status = clawden_env.run("claw", "status", "alice").stdout
            if "refused" in status:
                break
            time.sleep(1)
        assert "refused" in status and "pinned" in status, status
        proc = clawden_env.run("claw", "exec", "alice", "--", "true", check=False)
        assert "not connected" in _one_line_error(proc)
        assert "channel.hostkey_mismatch" in clawden_env.run("audit", "list").stdout
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute(
                "update keys set public_key=? where claw='alice' and kind='guest_host'", (real,)
            )
        conn.close()
        _reconnect(clawden_env, "alice")
    clawden_env.run("claw", "start", "alice", "--timeout", "400")  # waits until ready again
    assert clawden_env.run("claw", "exec", "alice", "--", "true").returncode == 0


def _reconnect(env: Env, claw: str) -> None:
    from appliance.controller import rpc

    rpc.call(env.home / "run" / "controller.sock", {"op": "reconnect", "claw": claw})


def test_tampered_golden_image_is_refused(clawden_env: Env, controller: object) -> None:
    home = make_home("clawden-tamper-")
    try:
        src = sorted((clawden_env.home / "images").glob("*/manifest.json"))[-1].parent
        dst = home / "images" / src.name
        dst.parent.mkdir(mode=0o711)
        shutil.copytree(src, dst)
        golden = dst / "golden.qcow2"
        golden.chmod(0o644)
        with golden.open("r+b") as f:
            f.seek(1 << 20)
            byte = f.read(1)
            f.seek(1 << 20)
            f.write(bytes([byte[0] ^ 0xFF]))
        env = Env(home, env_for(home))
        proc = env.run("claw", "create", "mallory", "--member", "M", "--no-wait", check=False)
        line = _one_line_error(proc)
        assert "sha256" in line and "clawden image build --force" in line
        assert _domain(env, "mallory") not in _virsh_domains()
        assert "no claws" in env.run("claw", "list").stdout
        assert "image.refused" in env.run("audit", "list").stdout
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_bad_input_gets_one_line_errors_and_loses_nothing(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    before = clawden_env.run("claw", "list").stdout
    cases = [
        (("claw", "create", "Bad_Name", "--member", "X"), "invalid claw name"),
        (("claw", "create", "alice", "--member", "Someone"), "already exists"),
        (("claw", "create", "zed", "--member", "Z", "--memory", "1"), "invalid --memory"),
        (("claw", "status", "nobody"), "no claw named 'nobody'"),
        (("claw", "exec", "nobody", "--", "true"), "no claw named 'nobody'"),
        (("claw", "destroy", "alice"), "--yes"),
    ]
    for args, expected in cases:
        line = _one_line_error(clawden_env.run(*args, check=False))
        assert expected in line, (args, line)
    assert clawden_env.run("claw", "list").stdout == before

    down = clawden_env.run(
        "claw",
        "create",
        "zed",
        "--member",
        "Z",
        check=False,
        extra_env={"CLAWDEN_LIBVIRT_URI": "qemu+unix:///system?socket=/nonexistent/libvirt-sock"},
    )
    assert "libvirtd" in _one_line_error(down)
    assert clawden_env.run("claw", "list").stdout == before

    empty = make_home("clawden-empty-")
    try:
        proc = Env(empty, env_for(empty)).run("claw", "create", "zed", "--member", "Z", check=False)
        assert "clawden image build" in _one_line_error(proc)
    finally:
        shutil.rmtree(empty, ignore_errors=True)


def _kill_at(env: Env, args: tuple[str, ...], marker: str) -> None:
    """Run a CLI command and SIGKILL it as soon as it reports reaching ``marker``."""
    proc = env.popen(*args)
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if marker in line:
                proc.kill()
                break
        else:
            raise AssertionError(f"never reached {marker!r}")
    finally:
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def test_killed_create_and_destroy_are_completed_by_reconcile(
    clawden_env: Env, controller: object
) -> None:
    _kill_at(
        clawden_env,
        ("claw", "create", "carol", "--member", "Carol", "--no-wait"),
        "create carol: define",
    )
    status = clawden_env.run("claw", "status", "carol").stdout
    assert "operation: create" in status
    clawden_env.run("reconcile")
    assert "running" in clawden_env.run("claw", "status", "carol").stdout
    assert _domain(clawden_env, "carol") in _virsh_domains()

    _kill_at(clawden_env, ("claw", "destroy", "carol", "--yes"), "destroy carol: undefine")
    clawden_env.run("reconcile")
    _assert_gone(clawden_env, "carol")


def test_destroy_leaves_no_domain_disk_key_or_socket(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    clawden_env.run("claw", "destroy", "bob", "--yes")
    _assert_gone(clawden_env, "bob")
    # alice is untouched by bob's destruction
    assert clawden_env.run("claw", "exec", "alice", "--", "true").returncode == 0


def _assert_gone(env: Env, claw: str) -> None:
    assert _domain(env, claw) not in _virsh_domains()
    assert not (env.home / "claws" / claw).exists()
    with sqlite3.connect(env.home / "clawden.db") as conn:
        assert conn.execute("select count(*) from keys where claw=?", (claw,)).fetchone() == (0,)
        assert conn.execute("select count(*) from claws where name=?", (claw,)).fetchone() == (0,)
    conn.close()
    assert not list(Path(env.home).rglob(f"*{claw}*.sock"))
    assert "no claw named" in env.run("claw", "status", claw, check=False).stderr


def _second_home(session: Env, prefix: str) -> Env:
    """Another installation on the same libvirtd, sharing the built image and
    the accelerator verdict (so no probe boot)."""
    home = make_home(prefix)
    _link_image_cache(home)
    verdict = session.home / "accelerator.json"
    if verdict.exists():
        shutil.copy2(verdict, home / "accelerator.json")
    return Env(home, env_for(home))


def test_two_installations_each_create_and_destroy_alice(clawden_env: Env) -> None:
    # Two CLAWDEN_HOMEs (say, the appliance and a test run) on one libvirtd,
    # each with a claw called alice. No controller and no waiting for the
    # channel: this is about domains, so the VMs need not finish booting.
    one = _second_home(clawden_env, "clawden-one-")
    two = _second_home(clawden_env, "clawden-two-")
    try:
        ones, twos = _domain(one, "alice"), _domain(two, "alice")
        assert ones != twos
        one.run("claw", "create", "alice", "--member", "Alice", "--no-wait")
        two.run("claw", "create", "alice", "--member", "Other Alice", "--no-wait")
        assert {ones, twos} <= set(_virsh_domains())
        assert f"domain:    {ones}: running" in one.run("claw", "status", "alice").stdout
        assert f"domain:    {twos}: running" in two.run("claw", "status", "alice").stdout
        # Neither reconcile takes the other's alice for an orphan (or its own).
        for env in (one, two):
            assert "nothing to do" in env.run("reconcile").stdout
        one.run("claw", "destroy", "alice", "--yes")
        domains = _virsh_domains()
        assert ones not in domains and twos in domains
        assert f"domain:    {twos}: running" in two.run("claw", "status", "alice").stdout
        two.run("claw", "destroy", "alice", "--yes")
        assert twos not in _virsh_domains()
    finally:
        _cleanup_home(one)
        _cleanup_home(two)


def test_a_claw_from_before_installation_tags_is_renamed_by_reconcile(clawden_env: Env) -> None:
    # A claw as an older clawden left it: domain `clawden-dora`, same UUID and
    # definition, shut off. Reconcile renames it (audited) and starts it again.
    env = _second_home(clawden_env, "clawden-old-")
    conn = libvirt.open(URI)
    try:
        env.run("claw", "create", "dora", "--member", "Dora", "--no-wait")
        tagged, old = _domain(env, "dora"), legacy_domain_name("dora")
        dom = conn.lookupByName(tagged)
        uuid = dom.UUIDString()
        dom.destroy()
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        dom.undefine()
        conn.defineXML(xml.replace(f"<name>{tagged}</name>", f"<name>{old}</name>"))
        data = env.home / "claws" / "dora" / "data.qcow2"
        inode = data.stat().st_ino

        out = env.run("reconcile").stdout
        assert "renamed 1" in out and "restarted 1" in out, out
        domains = _virsh_domains()
        assert tagged in domains and old not in domains
        assert conn.lookupByName(tagged).UUIDString() == uuid
        assert f"domain:    {tagged}: running" in env.run("claw", "status", "dora").stdout
        assert "claw.domain_renamed" in env.run("audit", "list").stdout
        assert data.stat().st_ino == inode
        assert "nothing to do" in env.run("reconcile").stdout
        env.run("claw", "destroy", "dora", "--yes")
        assert tagged not in _virsh_domains()
    finally:
        conn.close()
        _cleanup_home(env)
