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

from appliance.core.errors import InvalidInput

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

    def approval_refusals(self) -> dict[str, int]:
        return dict(self.refused_approvals)
