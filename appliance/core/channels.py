"""The messaging channels' boundary: what one inbound message is, who may
talk to which claw, and the port a message is delivered through.

A *channel* is how a family member reaches their claw: the panel's web chat
first, then Telegram, Matrix and e-mail (DESIGN.md, "Channels"). Each is an
adapter, and each establishes who is writing *by its own means* — the web
chat from the logged-in session, Telegram from a paired numeric ``from.id``,
e-mail from an ``Authentication-Results`` header of our own authserv-id —
and never from anything in the message's text. The adapter resolves that to
a family account and hands the router (``appliance/controller/messaging.py``)
an ``Inbound``; the rules below then apply the same way on every channel.

(Not to be confused with ``appliance/channel/``, the host's SSH *control*
channel to a claw's VM.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from appliance.core.accounts import User, may_see_claw, unknown_claw_for
from appliance.core.errors import InvalidInput
from appliance.core.messages import check_fields, check_text

WEB = "web"

# Pieces of a reply as they stream in: untrusted model text, passed on as data.
TextSink = Callable[[str], None]


@dataclass(frozen=True)
class Inbound:
    channel: str  # "web", "telegram", … (recorded on the stored message)
    sender: User  # the account the channel established, never text from the message
    claw: str
    text: str


@dataclass(frozen=True)
class ChatReply:
    """A claw's reply to one inbound message, and where both sides were
    stored (None when not stored: a heartbeat-style reply, or a fake)."""

    text: str
    in_id: int | None
    out_id: int | None


class Messenger(Protocol):
    """Delivers a message to a claw and waits for its reply (the controller's
    ``say``): both sides stored with ``channel`` and ``sender`` on them."""

    def say(
        self, claw: str, text: str, channel: str, on_text: TextSink, *, sender: str
    ) -> ChatReply: ...


def may_talk(user: User, claw: str) -> bool:
    """A member talks to their own claws only. The admin (a parent) may talk
    to any claw: they already see every claw, its history and its console,
    and decide its approvals, so a message is less than they may do anyway;
    what the admin says is stored under their name, so the owner sees who
    wrote it."""
    return may_see_claw(user, claw)


def check_inbound(inbound: Inbound) -> Inbound:
    """The inbound message as every channel must respect it: an account that
    may talk to the claw (others get the same "not found" as a claw that does
    not exist), a known channel name, and a non-empty text within the
    store's size limit."""
    if not may_talk(inbound.sender, inbound.claw):
        raise unknown_claw_for(inbound.sender, inbound.claw)
    check_fields("in", inbound.channel, "chat", inbound.sender.name)
    if not inbound.text.strip():
        raise InvalidInput("the message is empty", "type something to say to the claw")
    check_text(inbound.text)
    return inbound
