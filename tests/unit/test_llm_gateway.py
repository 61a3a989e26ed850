"""The LLM gateway end to end on 127.0.0.1: the real ``openai`` client talks to
the gateway's HttpService (served by a loopback adapter standing in for the
SSH forward), which forwards to the scripted model server, recording usage in
a real SQLite store."""

from __future__ import annotations

import io
import json
import logging
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import paramiko
import pytest

from appliance.channel.forwarding import ClawIdentity, ServiceRegistry
from appliance.channel.transport import ChannelTarget, open_transport
from appliance.core.llm_policy import ClawPolicy, Price
from appliance.llm.config import LlmConfig, Upstream
from appliance.llm.scripted import ScriptedModelServer
from appliance.services.http import HttpService
from appliance.services.llm_gateway import LLM_GATEWAY_PORT, LlmGateway
from appliance.store import open_db
from appliance.store.usage import UsageRepository
from tests.support.local_sshd import local_sshd, sshd_available

REAL_KEY = "sk-real-upstream-key-0123456789abcdef"
DUMMY = "sk-dummy-the-guest-has-no-key"
HELLO = {
    "reply": {"content": "hello there", "usage": {"prompt_tokens": 40, "completion_tokens": 10}}
}


class LoopbackHttp(socketserver.ThreadingTCPServer):
    """Serves an HttpService on 127.0.0.1 as one fixed claw — what the SSH
    remote forward does for a real guest, without sshd."""

    daemon_threads = False

    def __init__(self, service: HttpService, claw: str) -> None:
        self.service, self.claw = service, ClawIdentity(claw)
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Serve)
        self.thread = threading.Thread(target=self.serve_forever)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.open.discard(request)
        super().shutdown_request(request)

    def close(self) -> None:
        self.shutdown()
        self.thread.join()
        with self.lock:
            for sock in self.open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.server_close()


class _Serve(socketserver.BaseRequestHandler):
    server: LoopbackHttp

    def handle(self) -> None:
        self.server.service.handle(self.server.claw, self.request)


@dataclass
class Rig:
    upstream: ScriptedModelServer
    gateway: LlmGateway
    usage: UsageRepository
    now: list[datetime]
    servers: dict[str, LoopbackHttp]
    clients: list[openai.OpenAI]

    def client(self, claw: str = "alice") -> openai.OpenAI:
        if claw not in self.servers:
            self.servers[claw] = LoopbackHttp(self.gateway.service(), claw)
        client = openai.OpenAI(base_url=self.servers[claw].base_url, api_key=DUMMY, max_retries=0)
        self.clients.append(client)
        return client

    def rows(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.usage.db.query("SELECT * FROM llm_calls ORDER BY id")]


def _rig(
    tmp_path: Path, steps: list[dict[str, Any]], policy: ClawPolicy, **upstream_kw: Any
) -> Iterator[Rig]:
    now = [datetime(2025, 1, 31, 22, 0, tzinfo=UTC)]
    db = open_db(tmp_path / "clawden.db")
    with ScriptedModelServer({"steps": steps}, api_key=REAL_KEY) as upstream:
        config = LlmConfig(
            Upstream("scripted", upstream_kw.get("base_url", upstream.base_url), REAL_KEY),
            prices={"m1": Price(1000.0, 2000.0)},
            default_policy=policy,
        )
        usage = UsageRepository(db)
        gateway = LlmGateway(usage, lambda: config, clock=lambda: now[0])
        rig = Rig(upstream, gateway, usage, now, {}, [])
        try:
            yield rig
        finally:
            for client in rig.clients:
                client.close()
            for server in rig.servers.values():
                server.close()
            gateway.close()
            db.conn.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    steps = [{"name": f"hello {i}", **HELLO} for i in range(3)]
    yield from _rig(tmp_path, steps, ClawPolicy(models=("m1", "m2")))


def test_the_service_is_on_the_llm_port(rig: Rig) -> None:
    assert rig.gateway.service().guest_port == LLM_GATEWAY_PORT == 7702


def test_the_real_key_replaces_whatever_the_guest_sent(rig: Rig) -> None:
    reply = rig.client().chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "hello there"
    [seen] = rig.upstream.requests
    assert seen["authorization_matched"] is True  # the scripted server checked REAL_KEY
    assert DUMMY not in json.dumps(seen)


def test_non_streaming_call_is_recorded_with_tokens_and_cost(rig: Rig) -> None:
    rig.client().chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
    [row] = rig.rows()
    assert (row["claw"], row["model"], row["status"]) == ("alice", "m1", "ok")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (40, 10)
    assert row["cost_usd"] == pytest.approx((40 * 1000 + 10 * 2000) / 1e6)
    assert row["ts"].startswith("2025-01-31T22:00")  # the injected clock


def test_streaming_passes_chunks_and_records_usage(rig: Rig) -> None:
    stream = rig.client().chat.completions.create(
        model="m2", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello there"
    # The gateway asked for usage itself but the claw did not: no usage-only chunk.
    assert all(c.choices for c in chunks)
    assert rig.upstream.requests[0]["body"]["stream_options"] == {"include_usage": True}
    [row] = rig.rows()
    assert (row["model"], row["status"], row["prompt_tokens"], row["completion_tokens"]) == (
        "m2",
        "ok",
        40,
        10,
    )
    assert row["cost_usd"] == 0 and "no price" in row["note"]


def test_streaming_usage_reaches_a_claw_that_asks(rig: Rig) -> None:
    stream = rig.client().chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage]
    assert [(u.prompt_tokens, u.completion_tokens) for u in usage] == [(40, 10)]


def test_a_model_outside_the_allowlist_is_refused(rig: Rig) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        rig.client().chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 403
    assert "may not use model 'gpt-5'" in info.value.message and "m1, m2" in info.value.message
    assert rig.upstream.requests == []  # never forwarded


def test_models_lists_only_the_claws_allowed_models(rig: Rig) -> None:
    assert [m.id for m in rig.client().models.list()] == ["m1", "m2"]


def test_daily_budget_stops_calls_and_the_next_day_resumes(tmp_path: Path) -> None:
    steps = [{"name": "call", "repeat": True, **HELLO}]
    for rig in _rig(tmp_path, steps, ClawPolicy(models=("m1",), daily_tokens=100)):
        client = rig.client()
        ask: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
        client.chat.completions.create(**ask)  # 50 tokens
        client.chat.completions.create(**ask)  # 100: the budget is now used up
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(**ask)
        assert info.value.code == "insufficient_quota"
        assert info.value.body == {
            "message": "claw 'alice' used its daily budget of 100 tokens; resets at 00:00 UTC",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
        assert info.value.response.headers["x-should-retry"] == "false"
        assert len(rig.upstream.requests) == 2
        # Another claw has its own budget.
        rig.client("bob").chat.completions.create(**ask)
        rig.now[0] += timedelta(hours=2)  # 2025-02-01 00:00: a new day (and month)
        client.chat.completions.create(**ask)
        assert len(rig.upstream.requests) == 4


def test_monthly_cost_budget_names_the_reset_date(tmp_path: Path) -> None:
    steps = [{"name": "call", "repeat": True, **HELLO}]
    policy = ClawPolicy(models=("m1",), monthly_cost_usd=0.05)  # one call costs $0.06
    for rig in _rig(tmp_path, steps, policy):
        client = rig.client()
        ask: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
        client.chat.completions.create(**ask)
        with pytest.raises(
            openai.RateLimitError, match="monthly budget of \\$0.05; resets on 2025-02-01"
        ):
            client.chat.completions.create(**ask)
        rig.now[0] = datetime(2025, 2, 1, 0, 0, 1, tzinfo=UTC)
        client.chat.completions.create(**ask)


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    steps = [{"name": "call", "repeat": True, **HELLO}]
    for rig in _rig(tmp_path, steps, ClawPolicy(models=("m1",), requests_per_minute=2)):
        client = rig.client()
        ask: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
        client.chat.completions.create(**ask)
        client.chat.completions.create(**ask)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(**ask)
        assert info.value.code == "rate_limit_exceeded"
        assert "2 requests per minute" in info.value.message
        assert int(info.value.response.headers["retry-after"]) >= 1
        rig.now[0] += timedelta(seconds=61)
        client.chat.completions.create(**ask)


def test_upstream_failures_become_502_without_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    steps = [{"name": "boom", "error": {"status": 500, "message": f"bad key {REAL_KEY}"}}]
    for rig in _rig(tmp_path, steps, ClawPolicy(models=("m1",))):
        with pytest.raises(openai.InternalServerError) as info:
            rig.client().chat.completions.create(
                model="m1", messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.status_code == 502
        assert REAL_KEY not in info.value.response.text
        assert [r["status"] for r in rig.rows()] == ["upstream_500"]
    assert REAL_KEY not in caplog.text


def test_unreachable_upstream_is_a_502_naming_no_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://user:{REAL_KEY}@127.0.0.1:{s.getsockname()[1]}/v1"  # nothing listens
    for rig in _rig(tmp_path, [HELLO], ClawPolicy(models=("m1",)), base_url=dead):
        with pytest.raises(openai.InternalServerError) as info:
            rig.client().chat.completions.create(
                model="m1", messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.status_code == 502
        assert "could not reach" in info.value.message
        assert REAL_KEY not in info.value.response.text
    assert REAL_KEY not in caplog.text


def test_upstream_bad_request_is_passed_to_the_claw(tmp_path: Path) -> None:
    steps = [
        {
            "name": "bad",
            "error": {
                "status": 400,
                "message": "messages too long",
                "type": "invalid_request_error",
                "code": "context_length",
            },
        }
    ]
    for rig in _rig(tmp_path, steps, ClawPolicy(models=("m1",))):
        with pytest.raises(openai.BadRequestError) as info:
            rig.client().chat.completions.create(
                model="m1", messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.body["message"] == "messages too long"  # type: ignore[index]
        assert info.value.code == "context_length"


def test_malformed_body_is_a_400(rig: Rig) -> None:
    rig.client()
    with httpx.Client() as http:
        resp = http.post(rig.servers["alice"].base_url + "/chat/completions", content=b"{nope")
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.skipif(not sshd_available(), reason="needs openssh-server and socat")
def test_streaming_over_a_real_ssh_forward(rig: Rig, tmp_path: Path) -> None:
    # The path a guest's call takes: loopback port -> sshd remote forward ->
    # paramiko channel -> HttpService (chunked SSE back the same way).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    service = rig.gateway.service()
    service.guest_port = port
    with local_sshd(tmp_path / "sshd") as sshd:
        target = ChannelTarget(
            claw="carol",
            socket_path=sshd.socket_path,
            pinned_host_key=sshd.host_public,
            client_key=paramiko.Ed25519Key.from_private_key(io.StringIO(sshd.client_private)),
            user=sshd.user,
        )
        transport = open_transport(target, timeout=10)
        try:
            ServiceRegistry([service]).install(transport, ClawIdentity("carol"))
            with openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key=DUMMY, max_retries=0
            ) as client:
                stream = client.chat.completions.create(
                    model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        finally:
            transport.close()
    assert text == "hello there"
    assert [(r["claw"], r["status"]) for r in rig.rows()] == [("carol", "ok")]
