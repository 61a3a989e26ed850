"""Claw VMs end to end: real libvirtd, real golden image, real TCG guests, real sshd."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.integration.conftest import Env

pytestmark = pytest.mark.integration

WHOAMI = (
    'python3 -c "import urllib.request as u;'
    "print(u.urlopen('http://127.0.0.1:7701/v1/whoami', timeout=20).read().decode())\""
)


def _exec(env: Env, claw: str, *cmd: str, check: bool = True) -> tuple[int, str, str]:
    proc = env.run("claw", "exec", claw, "--", *cmd, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"exec {cmd} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, proc.stdout, proc.stderr


def test_guest_has_no_network_device_and_no_route(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    _, links, _ = _exec(clawden_env, "alice", "ip", "-br", "link")
    names = [line.split()[0] for line in links.strip().splitlines()]
    assert names == ["lo"], links
    _, routes4, _ = _exec(clawden_env, "alice", "ip", "-4", "route", "show", "table", "all")
    _, routes6, _ = _exec(clawden_env, "alice", "ip", "-6", "route", "show", "table", "all")
    # Only loopback's own local routes may exist; nothing points anywhere else.
    for line in (routes4 + routes6).strip().splitlines():
        assert " dev lo " in f" {line} ", line


def test_exec_returns_output_exit_code_and_runs_as_claw(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    code, out, err = _exec(
        clawden_env, "alice", "sh", "-c", "id -un; echo to-stderr >&2; exit 7", check=False
    )
    assert code == 7
    assert out == "claw\n"
    assert err == "to-stderr\n"


def test_whoami_names_the_claw_from_its_channel(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    for claw in two_claws:
        _, out, _ = _exec(clawden_env, claw, "sh", "-c", WHOAMI)
        assert json.loads(out) == {"claw": claw}


def test_root_is_read_only_and_data_disk_is_writable(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    code, _, err = _exec(clawden_env, "alice", "sh", "-c", "touch /etc/x", check=False)
    assert code != 0 and "Read-only file system" in err
    _, out, _ = _exec(
        clawden_env, "alice", "sh", "-c", "findmnt -no OPTIONS /; findmnt -no SOURCE /data"
    )
    root_opts, data_source = out.strip().splitlines()
    assert root_opts.split(",")[0] == "ro"
    assert data_source == "/dev/vdc"


def test_golden_image_unchanged_after_claws_ran(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    image_dir = sorted((clawden_env.home / "images").glob("*/manifest.json"))[-1].parent
    manifest = json.loads((image_dir / "manifest.json").read_text())
    _exec(clawden_env, "alice", "sh", "-c", "echo hello > /data/home/touched")
    golden = image_dir / "golden.qcow2"
    digest = hashlib.sha256(golden.read_bytes()).hexdigest()
    assert digest == manifest["artefacts"]["golden.qcow2"]["sha256"]


def test_console_log_shows_the_boot(clawden_env: Env, two_claws: tuple[str, str]) -> None:
    out = clawden_env.run("claw", "console", "alice").stdout
    assert "Linux version" in out


def test_audit_chain_verifies_after_real_operations(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    proc = clawden_env.run("audit", "verify")
    assert "intact" in proc.stdout
    listing = clawden_env.run("audit", "list").stdout
    assert "claw.create" in listing
