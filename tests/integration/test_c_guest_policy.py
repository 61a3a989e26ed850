"""What the guest's sshd lets even the *host's* key do, on the real golden image.

Booted with plain QEMU (the same path the boot benchmark uses as its
baseline), so one transport can probe the policy directly: remote forwards
only on the guest's 127.0.0.1 at the service ports, nothing else.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from appliance.image import latest_image
from bench.plain_qemu_boot import BootResult, boot_plain_qemu
from tests.integration.conftest import Env

pytestmark = pytest.mark.integration


def test_sshd_allows_only_the_requested_loopback_forwards(clawden_env: Env) -> None:
    image = latest_image(clawden_env.home / "images")
    assert image is not None
    result = BootResult()
    with tempfile.TemporaryDirectory(prefix="clawden-policy-", dir="/var/tmp") as tmp:
        Path(tmp).chmod(0o711)
        boot_plain_qemu(image, Path(tmp), result=result)
    checks = result.checks
    assert [line.split()[0] for line in result.ip_link.splitlines()] == ["lo"]
    assert checks["forward_127.0.0.1:7701"] == "allowed"
    assert checks["forward_127.0.0.1:7799"] == "refused"  # not a service port
    assert checks["forward_0.0.0.0:7702"] == "refused"  # never off loopback
    assert checks["local_forward_to_guest"] == "refused"  # no -L into the guest
    assert checks["pty"] == "refused"
    # The host logs in as clawctl (not root, not the agent) and runs the
    # agent's commands through as-claw: uid 1000, no other groups.
    assert "(clawctl)" in checks["id"].split()[0] and not checks["id"].startswith("uid=0")
    assert checks["agent_id"] == "uid=1000(claw) gid=1000(claw) groups=1000(claw)"
    assert checks["root_mount"].split(",")[0] == "ro"
    # The only listener is the forward the host asked for, on loopback.
    assert checks["listening_sockets"].split() == ["tcp", "127.0.0.1:7701"]
    # The warm agent's socket: the host's login may connect, the agent may not.
    assert checks["agent_socket"] == "root:clawctl 660 socket"
    assert checks["agent_socket_as_agent"] == "Permission denied"
    assert checks["after_reconnect"] == "ok"
