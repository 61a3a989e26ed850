"""The web chat (web/routes/chat.py, web/chat_stream.py): a member's message
reaches their claw with the session's identity, the reply streams back piece
by piece, and what the claw wrote is shown inert — on a real SQLite store,
through the real app, with FakeClawOps standing in for the controller."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

import pytest
from fastapi.testclient import TestClient

from appliance.core.errors import Unavailable
from appliance.core.messages import MAX_TEXT_BYTES
from appliance.core.model import ClawState
from tests.support.panel import ORIGIN, Harness

Event = tuple[str, Any]


class Streamed(Protocol):
    """A streamed response, read as text while it arrives."""

    def iter_text(self) -> Iterator[str]: ...


@pytest.fixture
def chat(panel: Harness) -> Harness:
    """Claws alice (Ana's) and bob (Ben's), an admin, and a fake that stores
    both sides of each conversation like the controller does."""
    panel.add_claw("alice")
    panel.add_claw("bob")
    panel.add_user("mum", "admin")
    panel.add_user("ana", "member", ("alice",), with_totp=False)
    panel.add_user("ben", "member", ("bob",), with_totp=False)
    panel.claws.messages = panel.store.messages
    return panel


def _headers(csrf: str) -> dict[str, str]:
    return {"X-CSRF-Token": csrf, "Origin": ORIGIN}


def _events(response: Streamed) -> Iterator[Event]:
    """Server-sent events as they arrive (keep-alive comments skipped)."""
    buffer = ""
    for text in response.iter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.split("\n") if line[:1] != ":")
            if fields:
                yield fields["event"], json.loads(fields["data"])


def _send(client: TestClient, csrf: str, claw: str, text: str) -> list[Event]:
    with client.stream(
        "POST", f"/claws/{claw}/chat", data={"text": text}, headers=_headers(csrf)
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(_events(response))


def _wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_members_message_reaches_their_claw_as_themselves_and_the_reply_streams(
    chat: Harness,
) -> None:
    chat.claws.replies["alice"] = ["Hel", "lo, ", "Ana\nline two"]
    chat.claws.gate = threading.Event()
    client = chat.client()
    csrf = chat.login(client, "ana")
    # A "sender" field is ignored: who wrote is the session's account.
    form = {"text": "hi there", "sender": "mum"}
    with client.stream("POST", "/claws/alice/chat", data=form, headers=_headers(csrf)) as response:
        assert response.status_code == 200
        events = _events(response)
        assert next(events) == ("piece", "Hel")
        # The first piece is in the browser while the claw is still writing.
        assert chat.claws.finished == []
        chat.claws.gate.set()
        rest = list(events)
    assert rest[:2] == [("piece", "lo, "), ("piece", "Ana\nline two")]
    kind, done = rest[2]
    assert kind == "done" and len(rest) == 3
    assert chat.claws.said == [("alice", "hi there", "web")]
    assert chat.claws.senders == ["ana"]
    stored = chat.store.messages.list("alice")
    assert [(m.id, m.direction, m.channel, m.sender, m.text) for m in stored] == [
        (done["in_id"], "in", "web", "ana", "hi there"),
        (done["out_id"], "out", "web", "alice", "Hello, Ana\nline two"),
    ]
    # The page then swaps in the stored reply, rendered on the server.
    final = client.get(f"/claws/alice/chat/messages/{done['out_id']}")
    assert final.status_code == 200 and "Hello, Ana" in final.text
    assert f'id="msg-{done["out_id"]}"' in final.text


def test_the_chat_page_shows_the_history_and_a_form_with_the_token(chat: Harness) -> None:
    client = chat.client()
    csrf = chat.login(client, "ana")
    chat.claws.replies["alice"] = ["**bold** reply"]
    _send(client, csrf, "alice", "first <b>message</b>")
    page = client.get("/claws/alice/chat")
    assert page.status_code == 200
    assert "first &lt;b&gt;message&lt;/b&gt;" in page.text
    assert "<strong>bold</strong> reply" in page.text
    assert f'name="csrf" value="{csrf}"' in page.text
    assert 'action="/claws/alice/chat"' in page.text
    assert 'href="/claws/alice/chat"' in client.get("/").text


def test_another_members_claw_is_not_found_for_every_chat_route(chat: Harness) -> None:
    client = chat.client()
    csrf = chat.login(client, "ana")
    chat.claws.replies["bob"] = ["secret"]
    bob_client = chat.client()
    _send(bob_client, chat.login(bob_client, "ben"), "bob", "mine")
    (bobs_reply,) = [m for m in chat.store.messages.list("bob") if m.direction == "out"]
    assert client.get("/claws/bob/chat").status_code == 404
    sent = client.post("/claws/bob/chat", data={"text": "hi"}, headers=_headers(csrf))
    assert sent.status_code == 404 and "you have no claw &#39;bob&#39;" in sent.text
    assert client.get(f"/claws/bob/chat/messages/{bobs_reply.id}").status_code == 404
    # Nor through her own claw's URL with bob's message id.
    assert client.get(f"/claws/alice/chat/messages/{bobs_reply.id}").status_code == 404
    assert chat.claws.said == [("bob", "mine", "web")] and chat.claws.senders == ["ben"]


def test_the_admin_may_talk_to_any_claw_under_their_own_name(chat: Harness) -> None:
    client = chat.client()
    csrf = chat.login(client, "mum")
    chat.claws.replies["bob"] = ["ok"]
    assert _send(client, csrf, "bob", "dinner at 7")[-1][0] == "done"
    assert chat.claws.said == [("bob", "dinner at 7", "web")]
    assert chat.claws.senders == ["mum"]
    assert client.get("/claws/bob/chat").status_code == 200


def test_sending_needs_the_csrf_token(chat: Harness) -> None:
    client = chat.client()
    chat.login(client, "ana")
    none = client.post("/claws/alice/chat", data={"text": "hi"}, headers={"Origin": ORIGIN})
    wrong = client.post("/claws/alice/chat", data={"text": "hi"}, headers=_headers("0" * 64))
    assert none.status_code == 403 and wrong.status_code == 403
    assert chat.claws.said == []
    assert chat.store.messages.list("alice") == []


def test_empty_and_oversized_messages_are_refused_before_delivery(chat: Harness) -> None:
    client = chat.client()
    csrf = chat.login(client, "ana")
    for text in ("", "  \n\t "):
        empty = client.post("/claws/alice/chat", data={"text": text}, headers=_headers(csrf))
        assert empty.status_code == 400 and "the message is empty" in empty.text
    big = client.post(
        "/claws/alice/chat", data={"text": "é" * (MAX_TEXT_BYTES // 2 + 1)}, headers=_headers(csrf)
    )
    assert big.status_code == 400 and f"the limit is {MAX_TEXT_BYTES}" in big.text
    assert chat.claws.said == []


def test_a_stopped_claw_is_a_clear_error_before_streaming(chat: Harness) -> None:
    chat.store.claws.set_state("alice", ClawState.STOPPED)
    client = chat.client()
    csrf = chat.login(client, "ana")
    response = client.post(
        "/claws/alice/chat", data={"text": "hi"}, headers={**_headers(csrf), "HX-Request": "true"}
    )
    assert response.status_code == 503
    assert "is stopped" in response.text and "start it" in response.text
    assert chat.claws.said == []


def test_an_error_from_the_controller_ends_the_stream_with_what_and_how_to_fix(
    chat: Harness,
) -> None:
    chat.claws.errors["alice"] = Unavailable(
        "claw 'alice' has no live channel", "start it: `clawden claw start alice`"
    )
    client = chat.client()
    csrf = chat.login(client, "ana")
    events = _send(client, csrf, "alice", "hi")
    assert events == [
        (
            "error",
            {
                "what": "claw 'alice' has no live channel",
                "fix": "start it: `clawden claw start alice`",
            },
        )
    ]
    # The claw's slot is free again: the next message goes through.
    chat.claws.errors.clear()
    assert _send(client, csrf, "alice", "again")[-1][0] == "done"


def test_a_bug_in_delivery_is_a_neutral_error_event_not_a_500(chat: Harness) -> None:
    chat.claws.errors["alice"] = RuntimeError("boom")  # type: ignore[assignment]
    client = chat.client()
    csrf = chat.login(client, "ana")
    ((kind, data),) = _send(client, csrf, "alice", "hi")
    assert kind == "error" and data["what"] == "the reply failed on the host"
    assert "boom" not in json.dumps(data)


def test_hostile_reply_text_is_inert_in_the_final_partial(chat: Harness) -> None:
    hostile = (
        "<script>alert(1)</script>\n\n"
        '<img src=x onerror="alert(2)">\n\n'
        "[click me](javascript:alert(3)) and [ok](https://example.org/)\n\n"
        "![leak](https://evil.example/pixel.png?d=SECRET)\n\n"
        "evil\u202etxt.exe zero\u200bwidth"
    )
    chat.claws.replies["alice"] = [hostile]
    client = chat.client()
    csrf = chat.login(client, "ana")
    done = _send(client, csrf, "alice", "<img src=y onerror=alert(4)> \u202eabc")[-1][1]
    reply = client.get(f"/claws/alice/chat/messages/{done['out_id']}").text
    for bad in ("<script", "<img", 'href="javascript', "evil.example", "\u202e", "\u200b"):
        assert bad not in reply, bad
    assert not re.search(r"<[^>]+\son\w+=", reply)  # no tag carries a handler
    assert "[click me](javascript:alert(3))" in reply  # left as text, not a link
    assert "evil\\u202etxt.exe zero\\u200bwidth" in reply  # the hidden characters shown
    assert '<a href="https://example.org/" rel="noopener noreferrer nofollow">ok</a>' in reply
    assert "[image: leak]" in reply
    assert "&lt;script&gt;" in reply  # shown as text, not run
    mine = client.get(f"/claws/alice/chat/messages/{done['in_id']}").text
    assert "&lt;img src=y onerror=alert(4)&gt;" in mine and "<img" not in mine
    assert "\u202e" not in mine
    assert "\u202e" not in client.get("/claws/alice/chat").text


def test_a_client_that_hangs_up_mid_reply_leaves_the_reply_stored(chat: Harness) -> None:
    chat.claws.replies["alice"] = ["first ", "and the rest"]
    chat.claws.gate = threading.Event()
    client = chat.client()
    csrf = chat.login(client, "ana")
    with client.stream(
        "POST", "/claws/alice/chat", data={"text": "hi"}, headers=_headers(csrf)
    ) as response:
        assert next(_events(response)) == ("piece", "first ")
    # The browser is gone; the claw finishes its reply all the same.
    chat.claws.gate.set()
    _wait_for(lambda: chat.claws.finished == ["alice"], "the delivery to finish")
    out = [m.text for m in chat.store.messages.list("alice") if m.direction == "out"]
    assert out == ["first and the rest"]
    _wait_for(lambda: _send(client, csrf, "alice", "next")[-1][0] == "done", "a free slot")


def test_two_claws_stream_at_once_and_one_claw_takes_one_message_at_a_time(
    chat: Harness,
) -> None:
    chat.claws.replies.update(alice=["a1 ", "a2"], bob=["b1 ", "b2"])
    chat.claws.gate = threading.Event()
    with chat.client() as client:  # one event loop serves both requests
        csrf = chat.login(client, "mum")
        with (
            client.stream(
                "POST", "/claws/alice/chat", data={"text": "hi a"}, headers=_headers(csrf)
            ) as first,
            client.stream(
                "POST", "/claws/bob/chat", data={"text": "hi b"}, headers=_headers(csrf)
            ) as second,
        ):
            a_events, b_events = _events(first), _events(second)
            assert next(a_events) == ("piece", "a1 ")
            assert next(b_events) == ("piece", "b1 ")
            # alice is still answering: a second message waits its turn.
            busy = client.post("/claws/alice/chat", data={"text": "x"}, headers=_headers(csrf))
            assert busy.status_code == 409 and "still answering" in busy.text
            # The server answers other requests while both claws think.
            assert client.get("/claws/alice/chat").status_code == 200
            chat.claws.gate.set()
            assert [e[0] for e in a_events] == ["piece", "done"]
            assert [e[0] for e in b_events] == ["piece", "done"]
    assert sorted(s[0] for s in chat.claws.said) == ["alice", "bob"]
