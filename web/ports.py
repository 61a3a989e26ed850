"""What the panel needs from the running controller, as a small port.

The panel runs inside ``clawden serve`` and reaches claws only through this
protocol: the real adapter (``web/controller_ops.py``) wraps the controller's
channels and the lifecycle use cases; ``FakeClawOps`` stands in for it in
fast tests and records what was asked of it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from appliance.core.channels import ChatReply, TextSink
from appliance.core.errors import ClawdenError, InvalidInput, Unavailable
from appliance.core.workspace_files import (
    FileText,
    WorkspaceFile,
    check_editable_file,
    check_workspace_file,
    daily_notes,
)
from appliance.store.messages import MessageRepository

__all__ = ["ChannelInfo", "ChatReply", "ClawOps", "FakeClawOps", "check_power_action"]

POWER_ACTIONS = ("start", "stop", "restart")


def check_power_action(action: str) -> str:
    if action not in POWER_ACTIONS:
        raise InvalidInput(f"unknown action {action[:20]!r}", "use start, stop or restart")
    return action


@dataclass(frozen=True)
class ChannelInfo:
    state: str  # "ready", "connecting", "backoff", …
    since: float  # wall-clock seconds (time.time()) of the last change
    last_error: str | None = None


class ClawOps(Protocol):
    def channel(self, claw: str) -> ChannelInfo | None:
        """The claw's channel as the controller sees it, or None when it
        has none (stopped, or no controller)."""
        ...

    def power(self, claw: str, action: str, actor: str) -> None:
        """Start, stop or restart the claw in the background (``POWER_ACTIONS``),
        audited as ``actor``; raises ``ClawdenError`` if it cannot begin."""
        ...

    def say(
        self, claw: str, text: str, channel: str, on_text: TextSink, *, sender: str
    ) -> ChatReply:
        """Deliver ``text`` from ``sender`` (an account name the channel
        established) to the claw and wait for its reply, passing pieces of it
        to ``on_text`` as they stream in; both sides stored. Blocking: the
        panel calls it from a worker thread."""
        ...

    def console(self, claw: str, lines: int) -> list[str] | None:
        """The last ``lines`` lines of the claw's serial console log (the
        guest's bytes, untrusted), or None when it has none yet."""
        ...

    def list_files(self, claw: str) -> list[WorkspaceFile]:
        """The claw's workspace files the panel shows (``core/workspace_files.py``);
        raises ``ClawdenError`` (``Unavailable``) when the claw cannot be reached."""
        ...

    def read_file(self, claw: str, path: str) -> FileText | None:
        """One workspace file (a path ``check_workspace_file`` accepts), or
        None when it does not exist."""
        ...

    def write_file(self, claw: str, path: str, data: bytes) -> None:
        """Replace an editable workspace file (``check_editable_file``)."""

    def put_tree(self, claw: str, source: Path, dest: str, mode: str) -> None:
        """Copy ``source`` — a folder staged under ``$CLAWDEN_HOME/tmp``
        (``workspace/skill_install.staging``) — to ``dest`` in the claw's
        workspace (``mode`` "replace" or "merge"), as the controller's
        ``put_tree`` op does; raises ``ClawdenError`` when it cannot."""
        ...

    def approval_refusals(self) -> dict[str, int]:
        """Per claw, its approval requests the host API refused over quota
        in the last hour (too many pending, or too many an hour)."""
        ...


@dataclass
class FakeClawOps:
    """An honest double: channel states and replies are set by the test, and
    every power action and message is recorded.

    ``say`` streams the claw's scripted pieces; with ``messages`` it stores
    both sides the way the controller's ``converse`` does (so the panel can
    show the stored reply); ``errors`` makes it raise for a claw, as the
    controller does for a claw it cannot reach; ``gate`` holds the reply
    after its first piece until the test sets it (a claw still thinking).
    """

    channels: dict[str, ChannelInfo] = field(default_factory=dict)
    replies: dict[str, list[str]] = field(default_factory=dict)
    powered: list[tuple[str, str]] = field(default_factory=list)
    said: list[tuple[str, str, str]] = field(default_factory=list)
    consoles: dict[str, list[str]] = field(default_factory=dict)
    # claw -> path -> text; a claw absent here cannot be reached (stopped).
    files: dict[str, dict[str, str]] = field(default_factory=dict)
    written: list[tuple[str, str, bytes]] = field(default_factory=list)
    # (claw, dest, mode, {relative path: bytes}) of every put_tree: the
    # staged folder is gone once the request ends, so its files are kept.
    copied: list[tuple[str, str, str, dict[str, bytes]]] = field(default_factory=list)
    refused_approvals: dict[str, int] = field(default_factory=dict)
    senders: list[str] = field(default_factory=list)  # who wrote each of ``said``
    messages: MessageRepository | None = None
    errors: dict[str, ClawdenError] = field(default_factory=dict)
    gate: threading.Event | None = None
    finished: list[str] = field(default_factory=list)  # claws whose say returned

    def channel(self, claw: str) -> ChannelInfo | None:
        return self.channels.get(claw)

    def power(self, claw: str, action: str, actor: str) -> None:
        check_power_action(action)
        self.powered.append((claw, action))

    def say(
        self, claw: str, text: str, channel: str, on_text: TextSink, *, sender: str
    ) -> ChatReply:
        self.said.append((claw, text, channel))
        self.senders.append(sender)
        if claw in self.errors:
            raise self.errors[claw]
        inbound = (
            None
            if self.messages is None
            else self.messages.add(claw, "in", channel, sender, text, delivered=True)
        )
        pieces = self.replies.get(claw, ["(no reply scripted)"])
        for i, piece in enumerate(pieces):
            if i == 1 and self.gate is not None and not self.gate.wait(10):
                raise TimeoutError("the test never opened the gate")
            on_text(piece)
        reply = "".join(pieces)
        outbound = (
            None
            if self.messages is None
            else self.messages.add(claw, "out", channel, claw, reply, delivered=True)
        )
        self.finished.append(claw)
        return ChatReply(
            reply,
            None if inbound is None else inbound.id,
            None if outbound is None else outbound.id,
        )

    def console(self, claw: str, lines: int) -> list[str] | None:
        log = self.consoles.get(claw)
        return None if log is None else log[-lines:]

    def _workspace(self, claw: str) -> dict[str, str]:
        if claw not in self.files:
            raise Unavailable(
                f"claw {claw!r} has no channel", f"start it: `clawden claw start {claw}`"
            )
        return self.files[claw]

    def list_files(self, claw: str) -> list[WorkspaceFile]:
        workspace = self._workspace(claw)
        top = [p for p in workspace if "/" not in p]
        notes = [p.removeprefix("memory/") for p in workspace if p.startswith("memory/")]
        shown: list[WorkspaceFile] = []
        for path in [*top, *daily_notes(notes)]:
            try:
                check_workspace_file(path)
            except InvalidInput:
                continue  # the real adapter lists only the allowed names too
            shown.append(WorkspaceFile(path, len(workspace[path].encode()), 0.0))
        return shown

    def read_file(self, claw: str, path: str) -> FileText | None:
        path = check_workspace_file(path)
        text = self._workspace(claw).get(path)
        return None if text is None else FileText(path, text, False)

    def write_file(self, claw: str, path: str, data: bytes) -> None:
        path = check_editable_file(path)
        self._workspace(claw)[path] = data.decode("utf-8")
        self.written.append((claw, path, data))

    def put_tree(self, claw: str, source: Path, dest: str, mode: str) -> None:
        if claw in self.errors:
            raise self.errors[claw]
        tree = {
            p.relative_to(source).as_posix(): p.read_bytes()
            for p in sorted(source.rglob("*"))
            if p.is_file()
        }
        self.copied.append((claw, dest, mode, tree))

    def approval_refusals(self) -> dict[str, int]:
        return dict(self.refused_approvals)
