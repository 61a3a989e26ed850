"""Host provisioning without running Ansible for real: the role's data, the
progress lines and errors made from runner events (recorded from real runs on
a Debian 12 host, trimmed to the fields the reporter reads), and
provision_host's handling of the runner's outcome."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from appliance.core.errors import ClawdenError
from appliance.host import ansible as hp

TASKS_DIR = hp.ROLE_DIR / "tasks"

# A real run on a ready host where only the state directory's mode had to be
# fixed (chmod 0755 beforehand): (event, task, res).
RECORDED_RUN: list[tuple[str, str, dict[str, Any] | None]] = [
    ("playbook_on_task_start", "read host facts", None),
    ("runner_on_start", "read host facts", None),
    ("runner_on_ok", "read host facts", {"changed": False}),
    ("playbook_on_task_start", "check the operating system is supported", None),
    ("runner_on_start", "check the operating system is supported", None),
    (
        "runner_on_ok",
        "check the operating system is supported",
        {"changed": False, "msg": "All assertions passed"},
    ),
    ("playbook_on_task_start", "provision the Debian host", None),
    ("runner_on_start", "provision the Debian host", None),
    ("runner_on_ok", "provision the Debian host", {"changed": False, "include": "debian.yml"}),
    ("playbook_on_include", "provision the Debian host", None),
    ("playbook_on_task_start", "find which packages are installed", None),
    ("runner_on_start", "find which packages are installed", None),
    (
        "runner_on_ok",
        "find which packages are installed",
        {"changed": False, "msg": "", "rc": 0, "stderr": ""},
    ),
    ("playbook_on_task_start", "find which optional packages this release ships", None),
    ("runner_on_start", "find which optional packages this release ships", None),
    ("runner_on_skipped", "find which optional packages this release ships", None),
    ("playbook_on_task_start", "refresh the apt index", None),
    ("runner_on_start", "refresh the apt index", None),
    ("runner_on_skipped", "refresh the apt index", None),
    ("playbook_on_task_start", "install packages", None),
    ("runner_on_start", "install packages", None),
    ("runner_on_skipped", "install packages", None),
    ("playbook_on_task_start", "create the clawden state directory", None),
    ("runner_on_start", "create the clawden state directory", None),
    (
        "runner_on_ok",
        "create the clawden state directory",
        {"changed": True, "path": "/var/lib/clawden", "mode": "0711"},
    ),
    ("playbook_on_task_start", "let the kvm group use /dev/kvm", None),
    ("runner_on_start", "let the kvm group use /dev/kvm", None),
    ("runner_on_ok", "let the kvm group use /dev/kvm", {"changed": False, "rc": 0, "stderr": ""}),
    ("playbook_on_task_start", "detect whether systemd is running", None),
    ("runner_on_start", "detect whether systemd is running", None),
    ("runner_on_ok", "detect whether systemd is running", {"changed": False}),
    ("playbook_on_task_start", "start libvirt with systemd", None),
    ("runner_on_start", "start libvirt with systemd", None),
    ("runner_on_skipped", "start libvirt with systemd", None),
    ("playbook_on_task_start", "look for running libvirt daemons", None),
    ("runner_on_start", "look for running libvirt daemons", None),
    (
        "runner_item_on_ok",
        "look for running libvirt daemons",
        {"changed": False, "msg": "", "rc": 0, "stderr": ""},
    ),
    (
        "runner_item_on_ok",
        "look for running libvirt daemons",
        {"changed": False, "msg": "", "rc": 0, "stderr": ""},
    ),
    (
        "runner_on_ok",
        "look for running libvirt daemons",
        {
            "changed": False,
            "msg": "All items completed",
            "results": [
                {
                    "changed": False,
                    "msg": "",
                    "rc": 0,
                    "stderr": "",
                    "failed": False,
                    "item": "virtlogd",
                },
                {
                    "changed": False,
                    "msg": "",
                    "rc": 0,
                    "stderr": "",
                    "failed": False,
                    "item": "libvirtd",
                },
            ],
        },
    ),
    ("playbook_on_task_start", "start the libvirt daemons that are not running", None),
    ("runner_on_start", "start the libvirt daemons that are not running", None),
    ("runner_on_skipped", "start the libvirt daemons that are not running", None),
    ("playbook_on_task_start", "wait for the libvirtd socket", None),
    ("runner_on_start", "wait for the libvirtd socket", None),
    (
        "runner_on_ok",
        "wait for the libvirtd socket",
        {"changed": False, "path": "/var/run/libvirt/libvirt-sock", "mode": "0777", "elapsed": 0},
    ),
    ("playbook_on_task_start", "check libvirtd answers", None),
    ("runner_on_start", "check libvirtd answers", None),
    (
        "runner_on_ok",
        "check libvirtd answers",
        {
            "changed": False,
            "msg": "",
            "rc": 0,
            "stderr": "Authorization not available. Check if polkit service is running or see "
            "debug message for more information.",
        },
    ),
    # That host runs no systemd, so the service tasks are skipped there.
    ("playbook_on_task_start", "install the clawden service", None),
    ("runner_on_start", "install the clawden service", None),
    ("runner_on_skipped", "install the clawden service", None),
    ("playbook_on_task_start", "enable and start the clawden service", None),
    ("runner_on_start", "enable and start the clawden service", None),
    ("runner_on_skipped", "enable and start the clawden service", None),
]

# The end of a real run with clawden_host_daemons=[clawden-no-such-daemon]:
# a loop task whose item failed.
LOOP_FAILURE = (
    "runner_on_failed",
    "start the libvirt daemons that are not running",
    {
        "changed": True,
        "msg": "One or more items failed",
        "results": [
            {
                "changed": True,
                "msg": "non-zero return code",
                "rc": 127,
                "failed": True,
                "stderr": "env: ‘clawden-no-such-daemon’: No such file or directory",
            }
        ],
    },
)

# The end of a real run with clawden_host_libvirt_socket=/nonexistent/libvirt-sock.
WAIT_FAILURE = (
    "runner_on_failed",
    "wait for the libvirtd socket",
    {
        "changed": False,
        "msg": "Timeout when waiting for file /nonexistent/libvirt-sock",
        "elapsed": 1,
    },
)


def event(kind: str, task: str, res: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"task": task, **extra}
    if res is not None:
        data["res"] = res
    return {"event": kind, "event_data": data}


def replay(reporter: hp.ProgressReporter, events: list[tuple[str, str, Any]]) -> None:
    for kind, task, res in events:
        assert reporter(event(kind, task, res)) is True


def task_names(path: Path) -> list[str]:
    return [str(t["name"]) for t in hp._iter_tasks(yaml.safe_load(path.read_text()))]


# --- the role ---------------------------------------------------------------


def test_package_list_has_what_a_host_needs() -> None:
    defaults = yaml.safe_load((hp.ROLE_DIR / "defaults" / "main.yml").read_text())
    packages = set(defaults["clawden_host_packages"])
    assert {
        "libvirt-daemon-system",
        "libvirt-clients",
        "qemu-utils",
        "mmdebstrap",
        "e2fsprogs",
        "socat",
        "libxml2-utils",
        "procps",
    } <= packages
    assert "libvirt-daemon-driver-qemu" in defaults["clawden_host_optional_packages"]
    qemu = defaults["clawden_host_qemu_packages"]
    assert qemu["x86_64"] == "qemu-system-x86"
    assert qemu["aarch64"] == "qemu-system-arm"


def test_every_fix_hint_names_a_real_task() -> None:
    names = set(task_names(TASKS_DIR / "main.yml")) | set(task_names(TASKS_DIR / "debian.yml"))
    assert set(hp.TASK_FIXES) <= names


def test_static_task_count_matches_a_real_run() -> None:
    starts = [e for e in RECORDED_RUN if e[0] == "playbook_on_task_start"]
    assert hp.count_tasks(TASKS_DIR / "main.yml", "Debian") == len(starts) == 17


def test_unsupported_family_has_no_total() -> None:
    # No tasks/darwin.yml yet: the include cannot be followed.
    assert hp.count_tasks(TASKS_DIR / "main.yml", "Darwin") is None


def test_playbook_passes_ansible_syntax_check() -> None:
    playbook = Path(sys.executable).parent / "ansible-playbook"
    done = subprocess.run(
        [str(playbook), "--syntax-check", "-i", "localhost,", str(hp.PLAYBOOK)],
        capture_output=True,
        text=True,
        env=hp.runner_envvars(),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- events -> progress and errors --------------------------------------------


def test_recorded_run_gives_one_line_per_task() -> None:
    lines: list[str] = []
    reporter = hp.ProgressReporter(lines.append, total=17)
    replay(reporter, RECORDED_RUN)
    assert len(lines) == 17
    assert lines[0] == "[1/17] read host facts … ok"
    assert lines[5] == "[6/17] refresh the apt index … skipped"
    assert lines[7] == "[8/17] create the clawden state directory … changed"
    assert lines[8] == "[9/17] let the kvm group use /dev/kvm … ok"
    assert lines[14] == "[15/17] check libvirtd answers … ok"
    assert lines[-1] == "[17/17] enable and start the clawden service … skipped"
    assert (reporter.changed, reporter.failed, reporter.failure) == (1, 0, None)


def test_counter_drops_a_total_that_turned_out_wrong() -> None:
    lines: list[str] = []
    reporter = hp.ProgressReporter(lines.append, total=2)
    replay(reporter, RECORDED_RUN[:9])
    assert [line.split("]")[0] for line in lines] == ["[1/2", "[2/2", "[3"]


def test_loop_failure_names_task_and_item_error() -> None:
    lines: list[str] = []
    reporter = hp.ProgressReporter(lines.append)
    replay(reporter, [("playbook_on_task_start", LOOP_FAILURE[1], None), LOOP_FAILURE])
    assert lines == ["[1] start the libvirt daemons that are not running … failed"]
    failure = reporter.failure
    assert isinstance(failure, ClawdenError)
    assert failure.task == "start the libvirt daemons that are not running"
    assert "'start the libvirt daemons that are not running'" in failure.what
    assert "non-zero return code: env: ‘clawden-no-such-daemon’: No such file" in failure.what
    assert failure.fix == hp.TASK_FIXES[failure.task]
    assert reporter.failed == 1


def test_module_msg_reaches_the_error() -> None:
    reporter = hp.ProgressReporter(lambda _line: None)
    replay(reporter, [WAIT_FAILURE])
    assert reporter.failure is not None
    assert reporter.failure.what.endswith(
        "'wait for the libvirtd socket': Timeout when waiting for file /nonexistent/libvirt-sock"
    )
    assert "\n" not in str(reporter.failure)


def test_ignored_failure_is_not_a_failure() -> None:
    lines: list[str] = []
    reporter = hp.ProgressReporter(lines.append)
    kind, task, res = WAIT_FAILURE
    reporter(event("playbook_on_task_start", task, None))
    reporter(event(kind, task, res, ignore_errors=True))
    assert lines == ["[1] wait for the libvirtd socket … failed (ignored)"]
    assert (reporter.failed, reporter.failure) == (0, None)


def test_failure_message_is_one_bounded_line() -> None:
    msg = hp.failure_message({"msg": "boom", "stderr": "first\n" + "x" * 1000 + "\n\n"})
    assert msg.startswith("boom: xxx") and len(msg) < 320 and "\n" not in msg
    assert hp.failure_message({}) == "no message from the module"


# --- provision_host around the runner ---------------------------------------


class FakeRunner:
    """Stands in for ansible_runner.run: replays events, returns a result."""

    def __init__(
        self,
        events: list[tuple[str, str, Any]],
        status: str,
        rc: int,
        stats: dict[str, dict[str, int]] | None,
        stdout: str = "",
    ) -> None:
        self.events, self.status, self.rc, self.stats, self.stdout = (
            events,
            status,
            rc,
            stats,
            stdout,
        )
        self.kwargs: dict[str, Any] = {}

    def run(self, **kwargs: Any) -> SimpleNamespace:
        self.kwargs = kwargs
        artifacts = Path(kwargs["private_data_dir"]) / "artifacts"
        artifacts.mkdir()
        (artifacts / "stdout").write_text(self.stdout)
        replay(kwargs["event_handler"], self.events)
        return SimpleNamespace(
            status=self.status,
            rc=self.rc,
            stats=self.stats,
            config=SimpleNamespace(artifact_dir=str(artifacts)),
        )


@pytest.fixture
def fake_runner(monkeypatch: pytest.MonkeyPatch) -> Any:
    import ansible_runner

    monkeypatch.setattr(hp, "_preflight", lambda: None)

    def install(runner: FakeRunner) -> FakeRunner:
        monkeypatch.setattr(ansible_runner, "run", runner.run)
        return runner

    return install


def test_successful_run_is_reported_from_runner_stats(fake_runner: Any) -> None:
    runner = fake_runner(
        FakeRunner(
            RECORDED_RUN, "successful", 0, {"changed": {"localhost": 1}, "failures": {}, "dark": {}}
        )
    )
    lines: list[str] = []
    result = hp.provision_host(lines.append, extra_vars={"clawden_host_daemon_timeout_s": 5})
    assert (result.ok, result.changed, result.failed) == (True, 1, 0)
    assert len(lines) == 17
    kwargs = runner.kwargs
    assert kwargs["playbook"] == str(hp.PLAYBOOK) and Path(kwargs["playbook"]).is_absolute()
    assert kwargs["quiet"] is True and kwargs["cmdline"] is None
    assert kwargs["extravars"] == {"clawden_host_daemon_timeout_s": 5}
    host = kwargs["inventory"]["all"]["hosts"]["localhost"]
    assert host == {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}
    assert kwargs["envvars"]["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_failed_task_raises_naming_it(fake_runner: Any) -> None:
    fake_runner(
        FakeRunner(
            [WAIT_FAILURE], "failed", 2, {"changed": {}, "failures": {"localhost": 1}, "dark": {}}
        )
    )
    with pytest.raises(hp.ProvisionError) as caught:
        hp.provision_host(lambda _line: None)
    assert caught.value.task == "wait for the libvirtd socket"
    assert "Timeout when waiting" in caught.value.what


def test_check_mode_counts_failures_instead_of_raising(fake_runner: Any) -> None:
    runner = fake_runner(
        FakeRunner(
            [WAIT_FAILURE], "failed", 2, {"changed": {}, "failures": {"localhost": 1}, "dark": {}}
        )
    )
    result = hp.provision_host(lambda _line: None, check=True)
    assert (result.ok, result.failed) == (False, 1)
    assert runner.kwargs["cmdline"] == "--check"


def test_run_dying_before_any_task_shows_ansible_output(fake_runner: Any) -> None:
    stdout = (
        "ERROR! the role 'clawden_host' was not found in /x/roles\n\n"
        "The error appears to be in '/x/site.yml': line 3, column 7\n"
    )
    fake_runner(FakeRunner([], "failed", 4, None, stdout=stdout))
    with pytest.raises(hp.ProvisionError) as caught:
        hp.provision_host(lambda _line: None)
    assert caught.value.what == (
        "ansible-playbook stopped (failed, exit 4): "
        "ERROR! the role 'clawden_host' was not found in /x/roles"
    )


def test_non_root_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ClawdenError) as caught:
        hp.provision_host(lambda _line: None)
    assert "root" in caught.value.what and "sudo" in caught.value.fix
