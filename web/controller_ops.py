"""``ClawOps`` on the running controller: its channels, its ``say``, and the
lifecycle use cases run on a worker thread (a boot takes a minute under
TCG; the page shows progress from the claw's state, not a spinner)."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from appliance.channel import workspace_sftp
from appliance.channel.exec import Transport
from appliance.controller.console import console_tail
from appliance.controller.context import Context
from appliance.controller.daemon import Controller
from appliance.controller.guestcopy import put_tree_handler
from appliance.controller.lifecycle import Lifecycle
from appliance.controller.rpc import Reply
from appliance.core.errors import ClawdenError, Conflict, Unavailable
from appliance.core.model import ClawState
from appliance.core.workspace_files import FileText, WorkspaceFile
from web.ports import ChannelInfo, ChatReply, check_power_action

log = logging.getLogger(__name__)
THROTTLE_WINDOW_S = 3600.0

# A page waits this long for a claw's channel: a claw still booting gets a
# "start the claw" note rather than a request hanging for half a minute.
FILES_CHANNEL_WAIT = 5.0
# An install was asked for with a TOTP code already spent: worth a longer wait.
COPY_CHANNEL_WAIT = 30.0


def _no_progress(_reply: Reply) -> None:
    """The panel shows the result, not each file copied."""


class ControllerClawOps:
    def __init__(self, controller: Controller, ctx: Context) -> None:
        self._controller = controller
        self._ctx = ctx
        self._busy: dict[str, str] = {}
        self._lock = threading.Lock()

    def channel(self, claw: str) -> ChannelInfo | None:
        conn = self._controller.channels.get(claw)
        if conn is None:
            return None
        st = conn.status()
        return ChannelInfo(st.state.value, st.since, st.last_error)

    def power(self, claw: str, action: str, actor: str) -> None:
        check_power_action(action)
        self._ctx.claws.require(claw)
        with self._lock:
            if claw in self._busy:
                raise Conflict(
                    f"claw {claw!r} is already busy: {self._busy[claw]}",
                    "wait for it to finish (the dashboard shows its state)",
                )
            self._busy[claw] = action
        lifecycle = Lifecycle(dataclasses.replace(self._ctx, actor=actor))
        steps: dict[str, tuple[Callable[[str], None], ...]] = {
            "start": (lifecycle.start,),
            "stop": (lifecycle.stop,),
            "restart": (lifecycle.stop, lifecycle.start),
        }
        threading.Thread(target=self._run, args=(claw, action, steps[action]), daemon=True).start()

    def _run(self, claw: str, action: str, steps: tuple[Callable[[str], None], ...]) -> None:
        try:
            for step in steps:
                step(claw)
        except ClawdenError as exc:
            log.warning("%s of claw %s from the panel failed: %s", action, claw, exc)
        finally:
            with self._lock:
                self._busy.pop(claw, None)

    def say(
        self, claw: str, text: str, channel: str, on_text: Callable[[str], None], *, sender: str
    ) -> ChatReply:
        talk = self._controller.say(
            claw, text, channel=channel, on_text=on_text, wait=30.0, sender=sender
        )
        return ChatReply(
            str(talk.reply.get("text", "")),
            talk.inbound.id,
            None if talk.outbound is None else talk.outbound.id,
        )

    def console(self, claw: str, lines: int) -> list[str] | None:
        return console_tail(self._ctx.settings, claw, lines)

    def _transport(self, claw: str) -> Transport:
        if self._ctx.claws.require(claw).state is not ClawState.RUNNING:
            raise Unavailable(f"claw {claw!r} is not running", "start the claw to see its files")
        return self._controller.transport_for(claw, FILES_CHANNEL_WAIT)

    def list_files(self, claw: str) -> list[WorkspaceFile]:
        return workspace_sftp.list_files(self._transport(claw))

    def read_file(self, claw: str, path: str) -> FileText | None:
        return workspace_sftp.read_file(self._transport(claw), path)

    def write_file(self, claw: str, path: str, data: bytes) -> None:
        workspace_sftp.write_file(self._transport(claw), path, data)

    def put_tree(self, claw: str, source: Path, dest: str, mode: str) -> None:
        # The controller's own op, so the panel copies by exactly its rules
        # (only from the staging folder; see controller/guestcopy.py).
        copy = put_tree_handler(self._controller.transport_for, self._ctx.settings.home / "tmp")
        request = {"claw": claw, "source": str(source), "dest": dest, "mode": mode}
        copy({**request, "wait": COPY_CHANNEL_WAIT}, _no_progress)

    def approval_refusals(self) -> dict[str, int]:
        since = time.time() - THROTTLE_WINDOW_S
        return self._controller.refusals.recent("approvals.", since)
