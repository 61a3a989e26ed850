"""Make this machine a clawden host by running ``ansible/site.yml``.

The playbook (role ``clawden_host``) installs libvirt and QEMU, creates the
state directory, starts the libvirt daemons and, where systemd runs,
installs and starts ``clawden.service`` (``clawden serve`` at boot); it is idempotent, so running
it on a ready host changes nothing. We drive it through ansible-runner rather
than a subprocess so every task arrives as a structured event: the operator
gets one short progress line per task, and a failure names the task and the
module's own message instead of a wall of Ansible output.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.core.errors import ClawdenError

ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "ansible"
PLAYBOOK = ANSIBLE_DIR / "site.yml"
ROLE_DIR = ANSIBLE_DIR / "roles" / "clawden_host"

# Modules run under the system Python, not the venv's: the apt module needs
# the python3-apt bindings, which only exist as a Debian package
# (scripts/bootstrap.sh installs it).
MODULE_PYTHON = "/usr/bin/python3"

# Events that close a task for a host; each becomes one progress line.
_RESULT_STATUS = {
    "runner_on_ok": "ok",
    "runner_on_skipped": "skipped",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
}

# Operator advice for tasks whose failures have a known usual cause, keyed by
# the task names in roles/clawden_host/tasks (a unit test keeps them in step).
TASK_FIXES = {
    "check the operating system is supported": "provision a Debian 12 or Ubuntu host instead",
    "refresh the apt index": "check this machine reaches its Debian mirror "
    "(`apt-get update`), then re-run `clawden host provision`",
    "install packages": "run `apt-get install` for the packages named above to see why, "
    "then re-run `clawden host provision`",
    "start the libvirt daemons that are not running": "run `libvirtd --verbose` in a "
    "terminal to see why it exits, then re-run `clawden host provision`",
    "wait for the libvirtd socket": "run `libvirtd --verbose` in a terminal to see why it "
    "does not listen, then re-run `clawden host provision`",
    "check libvirtd answers": "run `virsh -c qemu:///system version` to see why libvirtd "
    "refuses, then re-run `clawden host provision`",
    "enable and start the clawden service": "run `journalctl -u clawden -n 50` to see why "
    "`clawden serve` does not start, then re-run `clawden host provision`",
}
_DEFAULT_FIX = (
    "fix the cause above and re-run `clawden host provision` (it only changes what is missing)"
)
_MAX_MSG = 300


class ProvisionError(ClawdenError):
    """A provisioning task failed; ``task`` names it."""

    def __init__(self, what: str, fix: str, task: str = "") -> None:
        super().__init__(what, fix)
        self.task = task


@dataclass(frozen=True)
class ProvisionResult:
    ok: bool
    changed: int
    failed: int
    duration_s: float


def _one_line(text: str) -> str:
    """The last non-empty line, trimmed: module output can be long and
    multi-line, an error message must fit on one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= _MAX_MSG else line[: _MAX_MSG - 1] + "…"


def failure_message(res: Mapping[str, Any]) -> str:
    """The useful part of a failed module result. Loop tasks put the real
    message in the first failed item; command modules in stderr."""
    for item in res.get("results") or []:
        if isinstance(item, Mapping) and item.get("failed"):
            return failure_message(item)
    msg = _one_line(str(res.get("msg") or ""))
    detail = _one_line(str(res.get("stderr") or "")) or _one_line(str(res.get("stdout") or ""))
    if msg and detail and detail != msg:
        return f"{msg}: {detail}"
    return msg or detail or "no message from the module"


class ProgressReporter:
    """ansible-runner ``event_handler``: one progress line per finished task,
    and the first failure kept for the error message."""

    def __init__(self, progress: Callable[[str], None], total: int | None = None) -> None:
        self._progress = progress
        self._total = total
        self._index = 0
        self.changed = 0
        self.failed = 0
        self.failure: ProvisionError | None = None

    def __call__(self, event: Mapping[str, Any]) -> bool:
        kind = event.get("event")
        data: Mapping[str, Any] = event.get("event_data") or {}
        if kind == "playbook_on_task_start":
            self._index += 1
        elif kind in _RESULT_STATUS:
            self._on_result(str(kind), data)
        # True keeps the event in the runner's artifacts, which runner.stats reads.
        return True

    def _on_result(self, kind: str, data: Mapping[str, Any]) -> None:
        task = str(data.get("task") or "?")
        res: Mapping[str, Any] = data.get("res") or {}
        status = _RESULT_STATUS[kind]
        ignored = kind == "runner_on_failed" and bool(data.get("ignore_errors"))
        if status == "ok" and res.get("changed"):
            status = "changed"
            self.changed += 1
        elif ignored:
            status = "failed (ignored)"
        elif status in ("failed", "unreachable"):
            self.failed += 1
            if self.failure is None:
                self.failure = ProvisionError(
                    f"host provisioning failed at '{task}': {failure_message(res)}",
                    TASK_FIXES.get(task, _DEFAULT_FIX),
                    task=task,
                )
        self._progress(f"[{self._counter()}] {task} … {status}")

    def _counter(self) -> str:
        # A wrong total (a role edited without the walk below understanding
        # it) must not produce nonsense like "14/12": show the index alone.
        if self._total is None or self._index > self._total:
            return str(self._index)
        return f"{self._index}/{self._total}"


def _iter_tasks(entries: Any) -> Iterator[Mapping[str, Any]]:
    """Tasks as Ansible starts them: a block is not a task, its members are."""
    for entry in entries or []:
        if not isinstance(entry, Mapping):
            continue
        if "block" in entry:
            for part in ("block", "rescue", "always"):
                yield from _iter_tasks(entry.get(part))
        else:
            yield entry


def count_tasks(tasks_file: Path, os_family: str) -> int | None:
    """How many tasks Ansible will start for ``tasks_file``, following the
    includes (an include is itself a task). ``None`` when an include target
    cannot be resolved statically, so the caller shows no total."""
    total = 0
    for task in _iter_tasks(yaml.safe_load(tasks_file.read_text())):
        total += 1
        target = task.get("ansible.builtin.include_tasks") or task.get("include_tasks")
        if target is None:
            continue
        name = str(target).replace("{{ ansible_os_family | lower }}", os_family.lower())
        path = tasks_file.parent / name
        if "{{" in name or not path.is_file():
            return None
        nested = count_tasks(path, os_family)
        if nested is None:
            return None
        total += nested
    return total


def host_os_family() -> str | None:
    """The ``ansible_os_family`` this host will report, as far as we can tell
    without gathering facts (only used for the progress total)."""
    if sys.platform == "darwin":
        return "Darwin"
    if Path("/etc/debian_version").is_file():
        return "Debian"
    return None


def runner_envvars() -> dict[str, str]:
    """Environment for ansible-playbook. ansible-core is a pip dependency, so
    its executables live next to this interpreter; put that directory first so
    ansible-runner finds them even when the venv is not activated."""
    venv_bin = str(Path(sys.executable).parent)
    return {
        "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH") or os.defpath]),
        "ANSIBLE_NOCOLOR": "1",
        # A failed run is re-run whole (it is idempotent); no .retry files
        # littering the repo's ansible/ directory.
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    }


def inventory() -> dict[str, Any]:
    return {
        "all": {
            "hosts": {
                "localhost": {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": MODULE_PYTHON,
                }
            }
        }
    }


def _preflight() -> None:
    if os.geteuid() != 0:
        raise ClawdenError(
            "host provisioning must run as root (it installs packages and starts libvirtd)",
            "run it as root, e.g. `sudo .venv/bin/clawden host provision`",
        )
    if not PLAYBOOK.is_file():
        raise ClawdenError(
            f"the provisioning playbook is missing ({PLAYBOOK})",
            "run clawden from a full source checkout (`bash scripts/bootstrap.sh` installs it)",
        )
    if not (Path(sys.executable).parent / "ansible-playbook").exists():
        raise ClawdenError(
            "ansible-playbook is not installed next to this Python",
            "run `bash scripts/bootstrap.sh` to install clawden's dependencies into .venv",
        )
    if not Path(MODULE_PYTHON).exists():
        raise ClawdenError(
            f"{MODULE_PYTHON} is missing; Ansible runs its modules with it",
            "install it with `apt-get install python3 python3-apt`",
        )


def provision_host(
    progress: Callable[[str], None],
    check: bool = False,
    extra_vars: dict[str, Any] | None = None,
) -> ProvisionResult:
    """Run the host playbook on this machine.

    ``check`` runs Ansible's check mode: nothing changes, ``changed`` counts
    what would. A failed task raises ProvisionError naming it; in check mode
    failures are only counted (``ok=False``), because a task may fail there
    merely since an earlier one did not really run.
    """
    _preflight()
    import ansible_runner  # heavy import, only needed here

    family = host_os_family()
    total = count_tasks(ROLE_DIR / "tasks" / "main.yml", family) if family else None
    reporter = ProgressReporter(progress, total)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clawden-provision-") as private_dir:
        runner = ansible_runner.run(
            private_data_dir=private_dir,
            playbook=str(PLAYBOOK),
            inventory=inventory(),
            envvars=runner_envvars(),
            extravars=dict(extra_vars or {}),
            cmdline="--check" if check else None,
            quiet=True,
            event_handler=reporter,
        )
        status, rc = str(runner.status), runner.rc
        stats: Mapping[str, Mapping[str, int]] = runner.stats or {}
        # Read while the artifacts still exist: when Ansible dies before any
        # task (bad YAML, missing executable) its output is the only clue.
        output = "" if reporter.failure else _runner_output(Path(runner.config.artifact_dir))
    duration = time.monotonic() - started

    changed = sum(stats.get("changed", {}).values()) if stats else reporter.changed
    failed = (
        sum(stats.get("failures", {}).values()) + sum(stats.get("dark", {}).values())
        if stats
        else reporter.failed
    )
    ok = status == "successful" and rc == 0 and failed == 0
    if not ok and not check:
        if reporter.failure is not None:
            raise reporter.failure
        raise ProvisionError(
            f"ansible-playbook stopped ({status}, exit {rc}): {_ansible_error(output)}",
            _DEFAULT_FIX,
        )
    return ProvisionResult(ok=ok, changed=changed, failed=failed, duration_s=duration)


def _ansible_error(output: str) -> str:
    """Ansible's own "ERROR! ..." line when it has one (it is followed by
    context lines that say less), else the last line."""
    for line in output.splitlines():
        if line.lstrip().startswith("ERROR!"):
            return _one_line(line)
    return _one_line(output) or "no output"


def _runner_output(artifact_dir: Path) -> str:
    # Not runner.stdout: that property hands out an open file nobody closes.
    try:
        return (artifact_dir / "stdout").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
