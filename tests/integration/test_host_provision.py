"""Provision this machine for real, twice: the second run must change nothing
(the role is idempotent) and libvirtd must answer afterwards.

Needs root (it installs packages and starts daemons); CI runs as root. It
leaves the host provisioned, with libvirtd and virtlogd running, which is what
every other integration test needs anyway.
"""

from __future__ import annotations

import os

import libvirt
import pytest

from appliance.host.ansible import provision_host

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="host provisioning needs root"),
]


def test_provisioning_twice_changes_nothing_the_second_time() -> None:
    first_lines: list[str] = []
    first = provision_host(first_lines.append)
    assert first.ok and first.failed == 0
    assert first_lines and all(line.startswith("[") for line in first_lines)

    second_lines: list[str] = []
    second = provision_host(second_lines.append)
    assert second.ok and second.failed == 0
    assert second.changed == 0, "\n".join(second_lines)
    assert not [line for line in second_lines if line.endswith("… changed")]

    conn = libvirt.open("qemu:///system")
    try:
        assert conn.getVersion() > 0
    finally:
        conn.close()


def test_check_mode_on_a_provisioned_host_reports_nothing_to_do() -> None:
    provision_host(lambda _line: None)
    checked = provision_host(lambda _line: None, check=True)
    assert checked.ok and checked.changed == 0 and checked.failed == 0
