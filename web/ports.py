"""What the panel needs from the running controller, as a small port.

The panel runs inside ``clawden serve`` and reaches claws only through this
protocol: the real adapter (``web/controller_ops.py``) wraps the controller's
channels and the lifecycle use cases; ``FakeClawOps`` stands in for it in
fast tests and records what was asked of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from appliance.core.errors import InvalidInput, Unavailable
from appliance.core.workspace_files import (
    FileText,
    WorkspaceFile,
    check_editable_file,
    check_workspace_file,
    daily_notes,
)

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


@dataclass(frozen=True)
class ChatReply:
    text: str
    in_id: int | None
    out_id: int | None


class ClawOps(Protocol):
    def channel(self, claw: str) -> ChannelInfo | None:
        """The claw's channel as the controller sees it, or None when it
        has none (stopped, or no controller)."""
        ...

    def power(self, claw: str, action: str, actor: str) -> None:
        """Start, stop or restart the claw in the background (``POWER_ACTIONS``),
        audited as ``actor``; raises ``ClawdenError`` if it cannot begin."""
        ...

    def say(self, claw: str, text: str, channel: str, on_text: Callable[[str], None]) -> ChatReply:
        """Deliver ``text`` to the claw and wait for its reply, passing
        pieces of it to ``on_text`` as they stream in; both sides stored."""
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

    def approval_refusals(self) -> dict[str, int]:
        """Per claw, its approval requests the host API refused over quota
        in the last hour (too many pending, or too many an hour)."""
        ...


@dataclass
class FakeClawOps:
    """An honest double: channel states and replies are set by the test, and
    every power action and message is recorded."""

    channels: dict[str, ChannelInfo] = field(default_factory=dict)
    replies: dict[str, list[str]] = field(default_factory=dict)
    powered: list[tuple[str, str]] = field(default_factory=list)
    said: list[tuple[str, str, str]] = field(default_factory=list)
    consoles: dict[str, list[str]] = field(default_factory=dict)
    # claw -> path -> text; a claw absent here cannot be reached (stopped).
    files: dict[str, dict[str, str]] = field(default_factory=dict)
    written: list[tuple[str, str, bytes]] = field(default_factory=list)
    refused_approvals: dict[str, int] = field(default_factory=dict)

    def channel(self, claw: str) -> ChannelInfo | None:
        return self.channels.get(claw)

    def power(self, claw: str, action: str, actor: str) -> None:
        check_power_action(action)
        self.powered.append((claw, action))

    def say(self, claw: str, text: str, channel: str, on_text: Callable[[str], None]) -> ChatReply:
        self.said.append((claw, text, channel))
        pieces = self.replies.get(claw, ["(no reply scripted)"])
        for piece in pieces:
            on_text(piece)
        return ChatReply("".join(pieces), None, None)

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

    def approval_refusals(self) -> dict[str, int]:
        return dict(self.refused_approvals)
