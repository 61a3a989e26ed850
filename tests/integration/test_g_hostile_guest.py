"""The hostile guest, as its agent user: the control user the agent cannot touch.

Every attack runs inside a real claw VM as ``claw`` (through ``clawden claw
exec``, which runs the operator's command as the agent), and each test checks
that the attack changed nothing the host relies on:

* files a login would read (``.bashrc``, ``.profile``, ``~/.ssh/rc``, ...)
  written by the agent run before no host command — not ``claw exec`` (even
  ``bash -c``), not a delivery, not the heartbeat read;
* ``claw exec`` runs as ``claw`` with a fixed, clean environment, and the
  warm agent (a service, not started through ``as-claw``) with the same;
* the agent cannot kill, stop, ``prlimit`` or trace the host's session
  (user ``clawctl``): after ``kill -9`` of everything it may signal, the
  channel still works;
* the agent cannot bind the forwarded ports (7701-7703) on any loopback
  address, v4 or v6, TCP or UDP; after the host reconnects the forwards are
  the host's again.

The tests share the session's claws and leave them usable (the dotfiles are
removed again).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from appliance.controller import rpc
from bench.say_roundtrip import WARM_AGENT_PIDS
from tests.integration.conftest import Env, scripted_llm

pytestmark = [pytest.mark.integration, pytest.mark.hostile]

CLAW = "alice"
HOME = "/data/home"
MARKS = f"{HOME}/.ran"  # every planted file appends its name here when it runs
# What a login (or a bash started over SSH) could read, and what it would do.
PLANTED = {
    ".bashrc": "echo bashrc >> {marks}; echo HIJACKED-bashrc; export AGENT_SET=bashrc",
    ".profile": "echo profile >> {marks}; echo HIJACKED-profile; export AGENT_SET=profile",
    ".bash_profile": "echo bash_profile >> {marks}; export AGENT_SET=bash_profile",
    ".bash_login": "echo bash_login >> {marks}; export AGENT_SET=bash_login",
    ".ssh/rc": "echo ssh_rc >> {marks}",
    ".ssh/environment": "AGENT_SET=environment\nBASH_ENV={home}/.bashrc\nLD_PRELOAD=/nope.so",
}
WHOAMI = (
    "import urllib.request as u;"
    "print(u.urlopen('http://127.0.0.1:7701/v1/whoami', timeout=30).read().decode())"
)


def _exec(env: Env, *cmd: str, check: bool = True) -> tuple[int, str, str]:
    proc = env.run("claw", "exec", CLAW, "--", *cmd, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"exec {cmd} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, proc.stdout, proc.stderr


def _marks(env: Env) -> str:
    return _exec(env, "sh", "-c", f"cat {MARKS} 2>/dev/null; true")[1]


@pytest.fixture
def planted(clawden_env: Env, two_claws: tuple[str, str]) -> Iterator[None]:
    """alice's agent has written every file a login might read."""
    script = [f"mkdir -p {HOME}/.ssh", f"rm -f {MARKS}"]
    for name, body in PLANTED.items():
        text = body.format(marks=MARKS, home=HOME)
        script.append(f"printf '%s\\n' {json.dumps(text)} > {HOME}/{name}")
    _exec(clawden_env, "sh", "-c", "; ".join(script))
    try:
        yield
    finally:
        names = " ".join(f"{HOME}/{n}" for n in PLANTED)
        _exec(clawden_env, "sh", "-c", f"rm -f {names} {MARKS}; rmdir {HOME}/.ssh")


def test_exec_runs_as_claw_with_a_clean_environment(
    clawden_env: Env, two_claws: tuple[str, str], planted: None
) -> None:
    _, out, _ = _exec(clawden_env, "sh", "-c", "id -un; id -Gn; pwd; env")
    user, groups, cwd, *env_lines = out.splitlines()
    assert (user, groups, cwd) == ("claw", "claw", HOME)
    env = dict(line.split("=", 1) for line in env_lines)
    assert env["HOME"] == HOME and env["USER"] == "claw"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert not [k for k in env if k.startswith("SSH_")], env
    assert "AGENT_SET" not in env and "BASH_ENV" not in env and "LD_PRELOAD" not in env
    # No way back up: no_new_privs, no capabilities at all, and no sudo for claw.
    _, status, _ = _exec(
        clawden_env, "grep", "-E", "^(NoNewPrivs|CapBnd|CapEff|CapPrm)", "/proc/self/status"
    )
    fields = dict(line.split(":\t") for line in status.strip().splitlines())
    assert fields == {
        "NoNewPrivs": "1",
        "CapBnd": "0000000000000000",
        "CapEff": "0000000000000000",
        "CapPrm": "0000000000000000",
    }
    code, _, _ = _exec(clawden_env, "sudo", "-n", "true", check=False)
    assert code != 0
    assert _marks(clawden_env) == ""


def test_the_warm_agent_runs_with_no_more_than_exec_gets(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    # The service systemd keeps running (clawden-agent.service) is not
    # started through as-claw: it must get the same limits all the same.
    deadline = time.monotonic() + 180
    while not (pids := _exec(clawden_env, *WARM_AGENT_PIDS)[1].split()):
        assert time.monotonic() < deadline, "no warm agent within 180 s"
        time.sleep(2)
    [pid] = pids
    script = 'grep -E "^(Uid|Gid|Groups|NoNewPrivs|CapBnd|CapEff|CapPrm|CapAmb|Seccomp):" '
    script += '"/proc/$1/status"; tr "\\0" "\\n" < "/proc/$1/environ"'
    out = _exec(clawden_env, "sh", "-c", script, "status", pid)[1]
    fields = dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)
    assert fields["Uid"].split() == ["1000"] * 4 and fields["Gid"].split() == ["1000"] * 4
    assert fields["Groups"].split() == ["1000"]
    assert {k: fields[k] for k in ("NoNewPrivs", "CapBnd", "CapEff", "CapPrm", "CapAmb")} == {
        "NoNewPrivs": "1",
        "CapBnd": "0000000000000000",
        "CapEff": "0000000000000000",
        "CapPrm": "0000000000000000",
        "CapAmb": "0000000000000000",
    }
    assert fields["Seccomp"] == "2"  # the control channel's filters, in filter mode
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line and ":\t" not in line)
    assert env["HOME"] == HOME and env["USER"] == "claw"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert not [k for k in env if k.startswith("SSH_")], env
    # Its imports yield the vCPU to everything else (boot, the host's
    # commands): an idle cgroup, and nice 19 inside it.
    cgroup = "/sys/fs/cgroup/system.slice/clawden-agent.service"
    sched = _exec(clawden_env, "sh", "-c", f'cat {cgroup}/cpu.idle; ps -o ni= -p "$1"', "ni", pid)
    assert sched[1].split() == ["1", "19"], sched


def test_dotfiles_change_nothing_the_host_runs(
    clawden_env: Env, two_claws: tuple[str, str], planted: None
) -> None:
    # The operator's own `bash -c` (Debian's bash reads ~/.bashrc when it
    # thinks sshd started it) and plain commands: exactly their output.
    assert _exec(clawden_env, "bash", "-c", "echo ok; echo ${AGENT_SET:-unset}")[1] == "ok\nunset\n"
    assert _exec(clawden_env, "sh", "-c", "echo ok")[1] == "ok\n"
    assert _exec(clawden_env, "echo", "plain")[1] == "plain\n"
    # stdin and exit status pass through the helper untouched.
    proc = clawden_env.run("claw", "exec", CLAW, "--", "sh", "-c", "exit 42", check=False)
    assert proc.returncode == 42 and proc.stdout == "" and proc.stderr == ""
    # A delivery: the agent runs, answers, and nothing planted ran first.
    scenario = {"models": ["tiny"], "steps": [{"name": "hi", "reply": {"content": "hello back"}}]}
    with scripted_llm(clawden_env, scenario):
        said = clawden_env.run("claw", "say", CLAW, "hello", "--timeout", "600")
    assert said.stdout == "hello back\n", said.stdout + said.stderr
    # The heartbeat read: an empty checklist, so the scheduler reads it and
    # skips the beat without any model.
    clawden_env.run("schedule", "add", CLAW, "heartbeat", "every=1m")
    try:
        before = _scheduled_runs(clawden_env)
        deadline = time.monotonic() + 360
        while _scheduled_runs(clawden_env) == before:
            assert time.monotonic() < deadline, "no heartbeat ran within 360 s"
            time.sleep(3)
    finally:
        clawden_env.run("schedule", "add", CLAW, "heartbeat", "")
    assert _marks(clawden_env) == ""


def _scheduled_runs(env: Env) -> str:
    """alice's heartbeat line of `clawden schedule list` (its last run and status)."""
    out = env.run("schedule", "list", CLAW).stdout
    return "\n".join(line for line in out.splitlines() if "heartbeat" in line)


KILL_ALL = """
me=$$
for p in $(pgrep -u clawctl) $(pgrep -x sshd); do
  for sig in STOP KILL; do kill -s $sig "$p" 2>/dev/null && echo "signalled $p $sig"; done
  prlimit --pid "$p" --nofile=524288:524288 2>/dev/null && echo "prlimit $p"
  cat /proc/$p/environ >/dev/null 2>&1 && echo "environ $p"
done
python3 -c '
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
for pid in map(int, sys.argv[1:]):
    if libc.ptrace(16, pid, 0, 0) == 0:  # PTRACE_ATTACH
        print("traced", pid)
' $(pgrep -u clawctl)
pgrep -u clawctl >/dev/null && echo "clawctl runs"
kill -9 -1 2>/dev/null
echo "survived $me"
"""


def test_the_agent_cannot_kill_or_trace_the_control_session(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    _, out, _ = _exec(clawden_env, "sh", "-c", KILL_ALL)
    lines = out.splitlines()
    assert "clawctl runs" in lines, out  # it can see them: they are there to attack
    assert [
        ln for ln in lines if ln.split()[0] in ("signalled", "prlimit", "environ", "traced")
    ] == []
    assert lines[-1].startswith("survived")
    # The same channel, no reconnect: the session and its forwards are intact.
    assert _exec(clawden_env, "true")[0] == 0
    _, who, _ = _exec(clawden_env, "python3", "-c", WHOAMI)
    assert json.loads(who)["claw"] == CLAW


BIND_ALL = """
import errno, socket
targets = [(socket.AF_INET, a) for a in ("127.0.0.1", "127.0.0.2", "127.255.255.254", "0.0.0.0")]
targets += [(socket.AF_INET6, a) for a in ("::1", "::", "::ffff:127.0.0.1")]
for port in (7701, 7702, 7703, 7704):
    for family, addr in targets:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(family, kind)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((addr, port))
                result = "bound"
            except OSError as exc:
                result = errno.errorcode[exc.errno]
            finally:
                s.close()
            print(port, addr, "tcp" if kind == socket.SOCK_STREAM else "udp", result)
"""


def _bind_results(env: Env) -> dict[tuple[int, str, str], str]:
    _, out, _ = _exec(env, "python3", "-c", BIND_ALL)
    results = {}
    for line in out.splitlines():
        port, addr, proto, result = line.split()
        results[(int(port), addr, proto)] = result
    return results


def _assert_guarded(results: dict[tuple[int, str, str], str]) -> None:
    for (port, addr, proto), result in results.items():
        if port == 7704:
            # Not a forwarded port: the agent may use it (the guard is that narrow).
            assert result == "bound", (port, addr, proto, result)
        else:
            # Refused by the kernel's bind guard, not merely "in use": the
            # same holds while sshd is away (a reconnect), so there is no race.
            assert result == "EPERM", (port, addr, proto, result)


def test_the_agent_cannot_bind_the_forwarded_ports(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    _assert_guarded(_bind_results(clawden_env))
    # The host reconnects (a fresh sshd, which binds the forwards again); the
    # forwards are the host's and answer with the claw's identity.
    sock = clawden_env.home / "run" / "controller.sock"
    rpc.call(sock, {"op": "reconnect", "claw": CLAW}, timeout=60)
    rpc.call(sock, {"op": "wait_ready", "claw": CLAW, "timeout": 300}, timeout=320)
    _, who, _ = _exec(clawden_env, "python3", "-c", WHOAMI)
    assert json.loads(who)["claw"] == CLAW
    _assert_guarded(_bind_results(clawden_env))
