"""The scheduler's ``HeartbeatSource`` over a claw's channel.

Before a heartbeat is delivered the host reads the claw's HEARTBEAT.md and
decides, without any model, whether there is anything to do. Reading it is
one SSH exec of ``cat`` as ``claw`` (through the guest's ``as-claw`` helper,
so a file the agent wrote cannot change what runs) — no Python starts in the
guest, so an idle heartbeat costs a fraction of a second of guest time and
zero tokens.

The file is the claw's own (untrusted) data: it is read with a size cap and
only ever fed to ``heartbeat_is_actionable``; it is never shown or logged.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence

from appliance.channel.exec import CommandTimeout, TransportFor, exec_capped
from appliance.channel.transport import AS_AGENT, agent_command_line
from appliance.core.errors import Unavailable

log = logging.getLogger(__name__)

HEARTBEAT_PATH = "/data/workspace/HEARTBEAT.md"
# The agent puts at most this much of HEARTBEAT.md into a prompt
# (guest/workspace.py per-file cap is smaller); reading more is pointless.
MAX_HEARTBEAT_BYTES = 64 * 1024
READ_TIMEOUT = 60.0
# The exit code of the read command for "there is no HEARTBEAT.md" (cat's own
# failures are 1, which must not be mistaken for an empty checklist).
_MISSING = 3


class ChannelHeartbeatSource:
    """``read(claw)`` → the text of HEARTBEAT.md, or None when there is none.

    Raises ``Unavailable`` when the claw cannot be reached (stopped, channel
    down): the runner records that as the heartbeat's status rather than
    pretending the checklist was empty.
    """

    def __init__(
        self,
        transport_for: TransportFor,
        timeout: float = READ_TIMEOUT,
        path: str = HEARTBEAT_PATH,
        runner: Sequence[str] = AS_AGENT,
    ) -> None:
        self._transport_for = transport_for
        self._timeout = timeout
        self._path = path
        self._runner = tuple(runner)

    def read(self, claw: str) -> str | None:
        transport = self._transport_for(claw)
        try:
            # `--` and a fixed path: nothing of the claw's reaches the command line.
            script = (
                f"test -e {shlex.quote(self._path)} || exit {_MISSING}; "
                f"exec cat -- {shlex.quote(self._path)}"
            )
            result = exec_capped(
                transport,
                agent_command_line(["/bin/sh", "-c", script], self._runner),
                claw=claw,
                doing="while reading HEARTBEAT.md",
                timeout=self._timeout,
                max_stdout=MAX_HEARTBEAT_BYTES,
            )
        except CommandTimeout:
            raise Unavailable(
                f"reading claw {claw!r}'s HEARTBEAT.md took over {self._timeout:.0f} s",
                f"check `clawden claw status {claw}`",
            ) from None
        if result.truncated:
            # A huge checklist is still a checklist: judge its first part.
            log.info("claw %s: HEARTBEAT.md is larger than %d bytes", claw, MAX_HEARTBEAT_BYTES)
            return result.stdout.decode("utf-8", "replace")
        if result.exit_code == _MISSING:
            return None
        if result.exit_code != 0:
            raise Unavailable(
                f"reading claw {claw!r}'s HEARTBEAT.md failed (exit {result.exit_code})",
                f"check `clawden claw exec {claw} -- ls -l {self._path}`",
            )
        return result.stdout.decode("utf-8", "replace")
