"""clawden.service, as the role installs it: the unit rendered by Ansible's
own template module, checked by systemd-analyze where it exists, and the
tasks that install and start it only where systemd runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from appliance.host import ansible as hp

TEMPLATE = hp.ROLE_DIR / "templates" / "clawden.service.j2"
DEFAULTS = hp.ROLE_DIR / "defaults" / "main.yml"


def _tasks() -> dict[str, dict[str, object]]:
    tasks = hp._iter_tasks(yaml.safe_load((hp.ROLE_DIR / "tasks" / "debian.yml").read_text()))
    return {str(t["name"]): dict(t) for t in tasks}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The unit as the role writes it: a playbook in <dir>/ansible/ renders
    the role's template with the role's defaults (so the checkout default,
    the playbook's parent directory, is exercised too)."""
    top = tmp_path_factory.mktemp("checkout")
    (top / "ansible").mkdir()
    out = top / "clawden.service"
    playbook = top / "ansible" / "render.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "all",
                    "gather_facts": False,
                    "vars_files": [str(DEFAULTS)],
                    "tasks": [
                        {
                            "ansible.builtin.template": {
                                "src": str(TEMPLATE),
                                "dest": str(out),
                                "mode": "0644",
                            }
                        }
                    ],
                }
            ]
        )
    )
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(playbook),
        ],
        capture_output=True,
        text=True,
        env=hp.runner_envvars(),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out.read_text(), top


def _settings(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_unit_runs_clawden_serve_from_the_checkout_with_its_home(
    rendered: tuple[str, Path],
) -> None:
    unit, top = rendered
    found = _settings(unit)
    assert found["ExecStart"] == [f"{top}/.venv/bin/clawden serve --listen 127.0.0.1"]
    assert "CLAWDEN_HOME=/var/lib/clawden" in found["Environment"]
    assert found["ReadWritePaths"] == ["/var/lib/clawden"]


def test_unit_restarts_on_failure_and_starts_at_boot_after_libvirt(
    rendered: tuple[str, Path],
) -> None:
    found = _settings(rendered[0])
    assert found["Restart"] == ["on-failure"] and found["RestartSec"] == ["5"]
    assert found["WantedBy"] == ["multi-user.target"]
    after = found["After"][0].split()
    assert {"libvirtd.service", "virtlogd.socket", "network-online.target"} <= set(after)


def test_unit_hardening_keeps_what_serve_needs(rendered: tuple[str, Path]) -> None:
    found = _settings(rendered[0])
    for key in ("NoNewPrivileges", "PrivateTmp"):
        assert found[key] == ["yes"], key
    assert found["ProtectHome"] == ["read-only"]
    # libvirt's sockets live under /run, the accelerator check reads /dev/kvm:
    # neither may be hidden from the controller.
    assert "PrivateDevices" not in found and "ProtectSystem" in found
    assert found["ProtectSystem"] != ["strict"]
    assert "AF_UNIX" in found["RestrictAddressFamilies"][0]
    assert "User" not in found  # qemu:///system needs root


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_accepts_the_unit(rendered: tuple[str, Path]) -> None:
    unit, top = rendered
    # systemd-analyze checks that ExecStart's program exists and runs.
    venv_bin = top / ".venv" / "bin"
    venv_bin.mkdir(parents=True, exist_ok=True)
    (venv_bin / "clawden").write_text("#!/bin/sh\n")
    (venv_bin / "clawden").chmod(0o755)
    path = top / "clawden.service"
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    complaints = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if "clawden.service" in line and "Unit " not in line
    ]
    assert complaints == [], "\n".join(complaints)


def test_service_tasks_run_only_where_systemd_runs() -> None:
    tasks = _tasks()
    install, start = (
        tasks["install the clawden service"],
        tasks["enable and start the clawden service"],
    )
    assert install["when"] == "clawden_host_systemd.stat.exists"
    assert str(start["when"]).startswith("clawden_host_systemd.stat.exists")
    template = install["ansible.builtin.template"]
    assert isinstance(template, dict)
    assert template["src"] == "clawden.service.j2"
    assert template["dest"] == "/etc/systemd/system/clawden.service"
    service = start["ansible.builtin.systemd_service"]
    assert isinstance(service, dict)
    assert service["name"] == "clawden.service" and service["enabled"] is True
    # The unit changed: reload systemd, and restart so the change applies.
    assert "restarted" in service["state"] and "started" in service["state"]
    assert "clawden_host_unit is changed" in service["daemon_reload"]
    # The libvirt daemons come first: the service's first reconcile needs them.
    names = list(tasks)
    assert names.index("check libvirtd answers") < names.index("install the clawden service")


def test_every_new_task_has_a_fix_hint_where_it_can_fail() -> None:
    assert "enable and start the clawden service" in hp.TASK_FIXES
    assert "journalctl -u clawden" in hp.TASK_FIXES["enable and start the clawden service"]
