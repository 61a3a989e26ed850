"""The guest's control user in the image recipe (images/), checked without
building it: the host logs in as ``clawctl``, never as the agent's ``claw``;
``clawctl`` has a root-owned home and a shell that reads no rc file; it runs
host commands as ``claw`` only through the ``as-claw`` helper (one sudoers
rule), which gives them a fixed environment and no_new_privs; and the bind
guard that keeps the agent off the forwarded ports is assembled as intended
(and, where this machine lets root load BPF, accepted by the kernel's
verifier).

tests/integration/test_g_hostile_guest.py attacks the same from inside a
booted claw as its agent user.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import shlex
import shutil
import struct
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

import pytest

from appliance.channel.transport import AS_AGENT, GUEST_USER, agent_command_line
from tests.unit.test_image_hardening import read_unit, words

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
OVERLAY = IMAGES / "overlay"
HELPER = OVERLAY / "usr/lib/clawden/as-claw"
SUDOERS = OVERLAY / "etc/sudoers.d/clawden"
BINDGUARD = OVERLAY / "usr/lib/clawden/bindguard"
UNITS = OVERLAY / "etc/systemd/system"
SSHD_CONFIG = OVERLAY / "etc/ssh/sshd_config_clawden"


def _joined(path: Path) -> str:
    return path.read_text().replace("\\\n", " ")


def test_the_host_logs_in_as_the_control_user_not_the_agent() -> None:
    assert GUEST_USER == "clawctl"
    config = SSHD_CONFIG.read_text()
    assert re.findall(r"(?m)^AllowUsers (.*)$", config) == ["clawctl"]
    assert "PermitUserRC no" in config.splitlines()
    assert "PermitUserEnvironment no" in config.splitlines()


def test_customize_makes_clawctl_with_a_root_owned_home_and_dash() -> None:
    script = _joined(IMAGES / "customize.sh")
    (useradd,) = [line for line in script.splitlines() if "useradd" in line and "clawctl" in line]
    argv = shlex.split(useradd)
    assert argv[-1] == "clawctl"
    assert argv[argv.index("--shell") + 1] == "/bin/sh"  # dash: no rc file for `sh -c`
    home = argv[argv.index("--home-dir") + 1]
    assert home == "/var/lib/clawctl" and "--no-create-home" in argv
    assert "--groups" not in argv and "-G" not in argv  # in no group but its own
    assert f'install -d -m 0755 -o root -g root "$root{home}"' in script
    assert "in_root usermod -p '*' clawctl" in script
    assert "in_root visudo -c -q" in script


def test_sudoers_gives_clawctl_the_helper_and_nothing_else() -> None:
    rules = [
        line
        for line in SUDOERS.read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith("Defaults")
    ]
    assert rules == ["clawctl ALL=(root) NOPASSWD: /usr/lib/clawden/as-claw"]
    (defaults,) = [line for line in SUDOERS.read_text().splitlines() if line.startswith("Defaults")]
    flags = {f.strip() for f in defaults.split(None, 1)[1].split(",")}
    # A pty would mangle the host's binary stdin/stdout (JSON, SFTP).
    assert {"env_reset", "!use_pty", "!syslog"} <= flags
    assert "sudo" in (IMAGES / "packages.txt").read_text().split()


def test_the_helper_drops_to_claw_with_a_fixed_environment() -> None:
    text = _joined(HELPER)
    assert "\ncd /data/home\n" in text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("exec env -i ")]
    argv = shlex.split(line)
    setpriv_at = argv.index("/usr/bin/setpriv")
    env = dict(a.split("=", 1) for a in argv[3:setpriv_at])
    # SHLVL=1: a `bash -c` the operator runs is a nested shell and skips
    # Debian bash's "stdin is a socket" ~/.bashrc heuristic.
    assert env["SHLVL"] == "1" and env["HOME"] == "/data/home"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert not {k for k in env if k.startswith(("SSH", "BASH_ENV", "ENV", "LD_"))}
    setpriv = argv[setpriv_at : argv.index("--")]
    for flag in (
        "--reuid=claw",
        "--regid=claw",
        "--init-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ):
        assert flag in setpriv
    # setpriv execs the command's words as given: none is read as NAME=VALUE.
    assert argv[argv.index("--") + 1 :] == ["$@"]


def test_host_command_lines_run_the_helper_with_every_word_quoted() -> None:
    assert AS_AGENT == ("/usr/bin/sudo", "-n", "/usr/lib/clawden/as-claw")
    line = agent_command_line(["sh", "-c", "echo $HOME; rm -rf x"])
    assert line == "exec /usr/bin/sudo -n /usr/lib/clawden/as-claw sh -c 'echo $HOME; rm -rf x'"
    assert agent_command_line(["cat"], runner=()) == "exec cat"


def test_the_control_channel_needs_the_bind_guard_first() -> None:
    control = read_unit(UNITS / "clawden-control.service")
    assert "clawden-bindguard.service" in words(control, "Unit", "Requires")
    assert "clawden-bindguard.service" in words(control, "Unit", "After")
    guard = read_unit(UNITS / "clawden-bindguard.service")
    assert guard["Service"]["ExecStart"] == ["/usr/lib/clawden/bindguard clawctl 7701 7703"]
    # The same ports sshd may listen on for the host's forwards.
    permit = re.findall(r"(?m)^PermitListen (.*)$", SSHD_CONFIG.read_text())
    assert permit == ["127.0.0.1:7701 127.0.0.1:7702 127.0.0.1:7703"]
    script = _joined(IMAGES / "customize.sh")
    assert re.search(r"systemctl enable .*clawden-bindguard\.service", script)


def _bindguard() -> ModuleType:
    loader = SourceFileLoader("clawden_bindguard", str(BINDGUARD))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_bind_guard_program_checks_uid_then_port() -> None:
    guard = _bindguard()
    code = guard.program((0, 999), 7701, 7703)
    insns = [struct.unpack("<BBhi", code[i : i + 8]) for i in range(0, len(code), 8)]
    ops = [op for op, _, _, _ in insns]
    assert ops == [
        0xBF, 0x85, 0xBC,  # r6 = ctx; r0 = uid
        0x15, 0x15,  # uid 0, uid 999: allow
        0x61, 0xDC, 0xA5, 0x25,  # port to host order; outside 7701..7703: allow
        0xB7, 0x95,  # deny
        0xB7, 0x95,  # allow
    ]  # fmt: skip
    allow = len(insns) - 2
    for i, (op, _, off, _) in enumerate(insns):
        if op in (0x15, 0xA5, 0x25):
            assert i + 1 + off == allow  # every jump lands on "allow"
    assert [imm for op, _, _, imm in insns if op == 0x15] == [0, 999]
    assert insns[5][2] == guard.USER_PORT_OFFSET == 24
    assert [imm for op, _, _, imm in insns if op in (0xA5, 0x25)] == [7701, 7703]
    assert (insns[-4][3], insns[-2][3]) == (0, 1)


def test_the_kernel_verifier_accepts_the_bind_guard() -> None:
    # Loading (never attaching) is harmless; it needs root and a bpf(2) the
    # sandbox allows.
    if os.geteuid() != 0 or shutil.which("python3") is None:
        pytest.skip("loading a BPF program needs root")
    guard = _bindguard()
    code = guard.program((0, 999), 7701, 7703)
    for attach_type in (guard.BPF_CGROUP_INET4_BIND, guard.BPF_CGROUP_INET6_BIND):
        try:
            fd = guard.load(code, attach_type)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOSYS, errno.EACCES):
                pytest.skip(f"bpf(2) not available here: {exc}")
            raise
        os.close(fd)
