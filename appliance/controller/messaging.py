"""The channel router: one inbound message from any messaging channel in,
the claw's reply back to the channel it came from.

Every channel adapter (the panel's web chat today; Telegram, Matrix and
e-mail next) does the same three things: establish who wrote (its own way,
``appliance/core/channels.py``), hand the router an ``Inbound``, and carry
the reply's pieces back over its own transport. The router holds what they
share: the rules (``check_inbound``), the claw's state, one conversation
per claw at a time, and delivery through the controller's ``say`` (the
``Messenger`` port), which stores both sides with the channel and sender on
them. It knows nothing of HTTP or bots.

Delivery is two steps so a streaming channel can refuse before it starts
answering: ``accept`` checks and reserves (raising a ``ClawdenError`` the
adapter turns into its own error reply), then ``Accepted.deliver`` blocks
until the reply is complete, passing its pieces on. ``route`` does both for
a channel that does not stream.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from appliance.core.channels import ChatReply, Inbound, Messenger, TextSink, check_inbound
from appliance.core.errors import Conflict, NotFound, Unavailable
from appliance.core.model import Claw, ClawState

# Each conversation holds a thread for as long as its claw thinks (minutes,
# with tools); this bounds them across all claws and channels.
MAX_IN_FLIGHT = 16


class Accepted:
    """An inbound message that passed the rules and holds its claw's slot
    until ``deliver`` returns (or ``release`` is called)."""

    def __init__(self, router: ChannelRouter, inbound: Inbound) -> None:
        self.inbound = inbound
        self._router = router
        self._released = False

    def deliver(self, on_text: TextSink) -> ChatReply:
        """Deliver the message and wait for the reply (blocking: run it on a
        worker thread). A sink that fails or whose reader left must not stop
        the delivery: the reply is stored either way."""
        inbound = self.inbound
        try:
            return self._router.messenger.say(
                inbound.claw, inbound.text, inbound.channel, on_text, sender=inbound.sender.name
            )
        finally:
            self.release()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._router.release(self.inbound.claw)


class ChannelRouter:
    def __init__(
        self,
        messenger: Messenger,
        lookup: Callable[[str], Claw | None],
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.messenger = messenger
        self._lookup = lookup
        self._max = max_in_flight
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    def accept(self, inbound: Inbound) -> Accepted:
        """Check ``inbound`` and reserve its claw, or raise a ClawdenError
        saying what is wrong and how to fix it."""
        check_inbound(inbound)
        claw = self._lookup(inbound.claw)
        if claw is None:
            raise NotFound(f"no claw {inbound.claw[:40]!r}", "pick one from the dashboard")
        if claw.state is not ClawState.RUNNING:
            raise Unavailable(
                f"claw {claw.name!r} is {claw.state.value}, so it cannot answer",
                f"start it (`clawden claw start {claw.name}`), then send the message again",
            )
        with self._lock:
            if claw.name in self._busy:
                # The agent answers one message at a time; a second one would
                # wait unseen behind the first, so say so instead.
                raise Conflict(
                    f"claw {claw.name!r} is still answering a message",
                    "wait for its reply, then send the next one",
                )
            if len(self._busy) >= self._max:
                raise Unavailable(
                    f"{self._max} conversations are under way already",
                    "try again in a minute",
                )
            self._busy.add(claw.name)
        return Accepted(self, inbound)

    def release(self, claw: str) -> None:
        with self._lock:
            self._busy.discard(claw)

    def busy(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._busy)

    def route(self, inbound: Inbound, on_text: TextSink) -> ChatReply:
        """Accept and deliver in one blocking call (for channels that send
        the reply whole, like e-mail)."""
        return self.accept(inbound).deliver(on_text)
