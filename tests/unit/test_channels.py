"""The messaging channels' boundary (appliance/core/channels.py) and the
channel router (appliance/controller/messaging.py), with no transport: the
rules every channel shares, and delivery through the ``Messenger`` port."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from appliance.controller.messaging import ChannelRouter
from appliance.core.accounts import ADMIN, MEMBER, User
from appliance.core.channels import WEB, ChatReply, Inbound, TextSink, check_inbound, may_talk
from appliance.core.errors import Conflict, InvalidInput, NotFound, Unavailable
from appliance.core.messages import MAX_TEXT_BYTES
from appliance.core.model import Claw, ClawState

T0 = datetime(2026, 3, 1, tzinfo=UTC)
MUM = User("mum", ADMIN, (), True, T0)
ANA = User("ana", MEMBER, ("alice",), False, T0)


class Recorder:
    """A ``Messenger`` that records each call and streams a fixed reply."""

    def __init__(self, pieces: tuple[str, ...] = ("hi ", "there"), fail: Exception | None = None):
        self.pieces = pieces
        self.fail = fail
        self.calls: list[tuple[str, str, str, str]] = []

    def say(
        self, claw: str, text: str, channel: str, on_text: TextSink, *, sender: str
    ) -> ChatReply:
        self.calls.append((claw, text, channel, sender))
        if self.fail is not None:
            raise self.fail
        for piece in self.pieces:
            on_text(piece)
        return ChatReply("".join(self.pieces), 1, 2)


def _claws(**states: ClawState) -> dict[str, Claw]:
    return {
        name: Claw(name, name.title(), state, "v1", 1, 512, "2026-03-01T00:00:00.000000Z")
        for name, state in states.items()
    }


def _router(messenger: Recorder, max_in_flight: int = 16) -> ChannelRouter:
    claws = _claws(alice=ClawState.RUNNING, bob=ClawState.RUNNING, cara=ClawState.STOPPED)
    return ChannelRouter(messenger, claws.get, max_in_flight)


def test_a_member_talks_to_their_own_claws_and_the_admin_to_any() -> None:
    assert may_talk(ANA, "alice") and not may_talk(ANA, "bob")
    assert may_talk(MUM, "alice") and may_talk(MUM, "bob")


def test_check_inbound_refuses_with_what_and_how_to_fix() -> None:
    with pytest.raises(NotFound, match="you have no claw 'bob'"):
        check_inbound(Inbound(WEB, ANA, "bob", "hi"))
    with pytest.raises(InvalidInput, match="the message is empty"):
        check_inbound(Inbound(WEB, ANA, "alice", " \n "))
    with pytest.raises(InvalidInput, match=f"the limit is {MAX_TEXT_BYTES}"):
        check_inbound(Inbound(WEB, ANA, "alice", "x" * (MAX_TEXT_BYTES + 1)))
    with pytest.raises(InvalidInput, match="invalid channel name"):
        check_inbound(Inbound("Web Chat", ANA, "alice", "hi"))
    ok = Inbound(WEB, ANA, "alice", "hi")
    assert check_inbound(ok) is ok


def test_route_delivers_as_the_channels_sender_and_streams_the_pieces() -> None:
    messenger = Recorder()
    pieces: list[str] = []
    reply = _router(messenger).route(Inbound("telegram", ANA, "alice", "milk?"), pieces.append)
    assert messenger.calls == [("alice", "milk?", "telegram", "ana")]
    assert pieces == ["hi ", "there"] and reply == ChatReply("hi there", 1, 2)


def test_unknown_and_stopped_claws_are_refused_before_delivery() -> None:
    messenger = Recorder()
    router = _router(messenger)
    with pytest.raises(NotFound, match="no claw 'dora'"):
        router.accept(Inbound(WEB, MUM, "dora", "hi"))
    with pytest.raises(Unavailable, match="'cara' is stopped") as stopped:
        router.accept(Inbound(WEB, MUM, "cara", "hi"))
    assert "clawden claw start cara" in stopped.value.fix
    assert messenger.calls == [] and router.busy() == frozenset()


def test_one_message_per_claw_at_a_time_and_a_bound_on_all_of_them() -> None:
    router = _router(Recorder(), max_in_flight=2)
    first = router.accept(Inbound(WEB, MUM, "alice", "one"))
    with pytest.raises(Conflict, match="still answering"):
        router.accept(Inbound(WEB, ANA, "alice", "two"))
    router.accept(Inbound(WEB, MUM, "bob", "one"))
    assert router.busy() == {"alice", "bob"}
    first.deliver(lambda piece: None)
    assert router.busy() == {"bob"}
    router.accept(Inbound(WEB, MUM, "alice", "again"))
    # A third claw would pass the per-claw rule, but the bound is reached.
    router = ChannelRouter(Recorder(), _claws(a=ClawState.RUNNING, b=ClawState.RUNNING).get, 1)
    router.accept(Inbound(WEB, MUM, "a", "x"))
    with pytest.raises(Unavailable, match="1 conversations are under way"):
        router.accept(Inbound(WEB, MUM, "b", "x"))


def test_a_failed_delivery_frees_the_claw() -> None:
    router = _router(Recorder(fail=Unavailable("no channel", "start it")))
    with pytest.raises(Unavailable, match="no channel"):
        router.route(Inbound(WEB, ANA, "alice", "hi"), lambda piece: None)
    assert router.busy() == frozenset()
    accepted = router.accept(Inbound(WEB, ANA, "alice", "hi"))
    accepted.release()
    accepted.release()  # idempotent: it never frees another message's slot
    assert router.busy() == frozenset()
