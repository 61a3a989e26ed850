"""The LLM gateway end to end on 127.0.0.1: the real ``openai`` client talks to
the gateway's HttpService (served by a loopback adapter standing in for the
SSH forward), which forwards to the scripted model server, recording usage in
a real SQLite store."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import socketserver
import subprocess
import threading
import time
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
from appliance.services.http import HttpRequest, HttpService
from appliance.services.llm_gateway import LLM_GATEWAY_PORT, RESERVATION_GRACE_S, LlmGateway
from appliance.store import open_db
from appliance.store.tx import from_iso, locked
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
        # A short poll interval: shutdown() waits for it at every test's end.
        self.thread = threading.Thread(target=self.serve_forever, args=(0.02,))
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
    tmp_path: Path,
    steps: list[dict[str, Any]],
    policy: ClawPolicy,
    *,
    base_url: str | None = None,
    default_models: tuple[str, ...] = (),
    **gateway_kw: Any,
) -> Iterator[Rig]:
    now = [datetime(2025, 1, 31, 22, 0, tzinfo=UTC)]
    db = open_db(tmp_path / "clawden.db")
    with ScriptedModelServer({"steps": steps}, api_key=REAL_KEY) as upstream:
        config = LlmConfig(
            Upstream(
                "scripted", base_url or upstream.base_url, REAL_KEY, default_models=default_models
            ),
            prices={"m1": Price(1000.0, 2000.0)},
            default_policy=policy,
        )
        usage = UsageRepository(db)
        gateway = LlmGateway(usage, lambda: config, clock=lambda: now[0], **gateway_kw)
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


# ---- closed by default: models, request fields, caps --------------------------------
ASK: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


def _post(rig: Rig, body: Any, claw: str = "alice") -> httpx.Response:
    """A raw call, for bodies the typed openai client would not build."""
    rig.client(claw)
    with httpx.Client() as http:
        return http.post(rig.servers[claw].base_url + "/chat/completions", json=body)


def test_the_default_policy_allows_only_the_providers_default_model(tmp_path: Path) -> None:
    steps = [{"name": "call", "repeat": True, **HELLO}]
    for rig in _rig(tmp_path, steps, ClawPolicy(), default_models=("m1",)):
        client = rig.client()
        assert client.chat.completions.create(**ASK).choices[0].message.content == "hello there"
        with pytest.raises(openai.PermissionDeniedError) as info:
            client.chat.completions.create(**{**ASK, "model": "m2"})
        assert "allowed models: m1" in info.value.message
        assert [m.id for m in client.models.list()] == ["m1"]  # not the upstream's list
        assert [r["body"]["model"] for r in rig.upstream.requests if r["method"] == "POST"] == [
            "m1"
        ]


def test_without_a_default_model_no_model_is_allowed_and_the_error_names_the_setting(
    tmp_path: Path,
) -> None:
    for rig in _rig(tmp_path, [HELLO], ClawPolicy()):
        client = rig.client()
        with pytest.raises(openai.PermissionDeniedError) as info:
            client.chat.completions.create(**ASK)
        assert info.value.status_code == 403 and info.value.code == "model_not_allowed"
        assert 'default_model = "<model>" under [providers.scripted]' in info.value.message
        assert "[claws.alice]" in info.value.message and "llm.toml" in info.value.message
        assert client.models.list().data == []
        assert rig.upstream.requests == [] and rig.rows() == []


def test_a_huge_model_name_is_refused_never_stored_and_logged_short(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    huge = "m" * 100_000
    with pytest.raises(openai.BadRequestError) as info:
        rig.client().chat.completions.create(**{**ASK, "model": huge})
    assert info.value.code == "invalid_model_name"
    assert info.value.body["param"] == "model"  # type: ignore[index]
    assert "100000 characters long; at most 200" in info.value.message
    assert len(info.value.response.text) < 400
    assert rig.rows() == [] and rig.upstream.requests == []
    assert rig.usage.db.execute("SELECT COUNT(*) FROM llm_reservations").fetchone()[0] == 0
    assert all(len(r.getMessage()) < 300 for r in caplog.records)
    assert "m" * 100 not in caplog.text


def test_a_model_name_with_control_characters_is_refused_escaped(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    resp = _post(rig, {**ASK, "model": "m1\x1b[2J\u202e"})
    assert resp.status_code == 400
    message = resp.json()["error"]["message"]
    assert "\x1b" not in message and "\\x1b" in message
    assert "\x1b" not in caplog.text and "\u202e" not in caplog.text
    assert rig.rows() == [] and rig.upstream.requests == []


def test_n_above_one_is_refused_and_n_1_is_not_forwarded(rig: Rig) -> None:
    client = rig.client()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**ASK, n=64)
    assert info.value.code == "unsupported_value"
    assert info.value.body["param"] == "n"  # type: ignore[index]
    assert "one completion per call" in info.value.message
    assert rig.upstream.requests == [] and rig.rows() == []
    client.chat.completions.create(**ASK, n=1)
    [seen] = rig.upstream.requests
    assert "n" not in seen["body"]


def test_max_tokens_is_capped_by_policy_and_set_when_missing(tmp_path: Path) -> None:
    steps = [{"name": "call", "repeat": True, **HELLO}]
    for rig in _rig(tmp_path, steps, ClawPolicy(models=("m1",), max_tokens=256)):
        client = rig.client()
        client.chat.completions.create(**ASK, max_tokens=10**9)
        client.chat.completions.create(**ASK, max_completion_tokens=10**9)
        client.chat.completions.create(**ASK, max_tokens=100)
        client.chat.completions.create(**ASK)
        assert _post(rig, {**ASK, "max_tokens": 1e9}).status_code == 200  # a float, as sent
        bodies = [r["body"] for r in rig.upstream.requests]
        limits = [
            {k: b[k] for k in ("max_tokens", "max_completion_tokens") if k in b} for b in bodies
        ]
        assert limits == [
            {"max_tokens": 256},
            {"max_completion_tokens": 256},
            {"max_tokens": 100},
            {"max_tokens": 256},
            {"max_tokens": 256},
        ]


def test_the_default_cap_is_4096_tokens(rig: Rig) -> None:
    rig.client().chat.completions.create(**ASK, max_tokens=10**9)
    assert rig.upstream.requests[0]["body"]["max_tokens"] == 4096


def test_only_allowlisted_fields_reach_the_upstream(rig: Rig) -> None:
    rig.client().chat.completions.create(
        **ASK,
        temperature=0.5,
        user="alice's diary, page 1",
        logit_bias={"50256": 100},
        store=True,
        metadata={"exfil": "x" * 100},
        extra_body={"evil_field": {"nested": True}, "n": 1},
    )
    [seen] = rig.upstream.requests
    assert set(seen["body"]) == {"model", "messages", "temperature", "max_tokens"}
    assert "diary" not in json.dumps(seen) and "exfil" not in json.dumps(seen)


def test_streaming_keeps_its_fields_and_always_asks_for_usage(rig: Rig) -> None:
    stream = rig.client().chat.completions.create(
        **ASK,
        stream=True,
        stop=["\n\n"],
        seed=7,
        top_p=0.9,
        extra_body={"stream_options": {"include_usage": False, "sneaky": 1}},
    )
    list(stream)
    body = rig.upstream.requests[0]["body"]
    assert body["stream_options"] == {"include_usage": True}
    assert (body["stop"], body["seed"], body["top_p"], body["stream"]) == (["\n\n"], 7, 0.9, True)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 5),
        ("temperature", "hot"),
        ("temperature", True),
        ("top_p", -0.1),
        ("stream", "yes"),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("max_tokens", 0),
        ("max_tokens", 1.5),
        ("max_completion_tokens", "many"),
        ("messages", []),
        ("messages", [{"role": "wizard", "content": "x"}]),
        ("messages", [{"role": ["user"], "content": "x"}]),  # unhashable: still a 400
        ("tools", [{"type": "shell"}]),
        ("tool_choice", "always"),
        ("tool_choice", ["auto"]),
        ("response_format", {"type": {"t": 1}}),
        ("response_format", {"type": "xml"}),
        ("seed", 1.5),
        ("parallel_tool_calls", 1),
        ("n", "2"),
    ],
)
def test_allowed_fields_are_type_checked(rig: Rig, field: str, value: Any) -> None:
    resp = _post(rig, {**ASK, field: value})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"
    assert rig.upstream.requests == [] and rig.rows() == []


def test_deeply_nested_json_is_a_400(rig: Rig) -> None:
    rig.client()
    with httpx.Client() as http:
        body = b'{"model": "m1", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        resp = http.post(rig.servers["alice"].base_url + "/chat/completions", content=body)
    assert resp.status_code == 400


# ---- reservations: budgets and concurrency under parallel calls --------------------
def _parallel(client: openai.OpenAI, count: int) -> list[Any]:
    """``count`` calls started together; each result is a reply or the exception."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def call(i: int) -> None:
        barrier.wait()
        try:
            results[i] = client.chat.completions.create(**ASK)
        except openai.APIStatusError as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _max_overlap(timings: list[dict[str, Any]]) -> int:
    edges = sorted(
        [(t["received_at"], 1) for t in timings]
        + [(t["received_at"] + t["handled_s"], -1) for t in timings]
    )
    depth = peak = 0
    for _, step in edges:
        depth += step
        peak = max(peak, depth)
    return peak


def test_calls_beyond_the_concurrency_limit_get_429_with_retry_after(tmp_path: Path) -> None:
    steps = [{"name": "slow", "repeat": True, "delay_s": 0.6, **HELLO}]
    policy = ClawPolicy(models=("m1",), requests_per_minute=None)  # default: 2 in flight
    for rig in _rig(tmp_path, steps, policy):
        results = _parallel(rig.client(), 6)
        refused = [r for r in results if isinstance(r, openai.RateLimitError)]
        assert refused and len(refused) + sum(not isinstance(r, Exception) for r in results) == 6
        for exc in refused:
            assert exc.code == "too_many_concurrent_requests"
            assert exc.response.headers["retry-after"] == "1"
            assert "at most 2" in exc.message
        assert _max_overlap(rig.upstream.timings) <= 2
        assert len(rig.upstream.requests) == len(rig.rows()) == 6 - len(refused)
        assert rig.usage.db.execute("SELECT COUNT(*) FROM llm_reservations").fetchone()[0] == 0
        # Another claw has its own slots.
        rig.client("bob").chat.completions.create(**ASK)


def test_parallel_calls_cannot_overshoot_a_small_budget(tmp_path: Path) -> None:
    # Each call really uses 20 + 50 = 70 tokens; the budget is 300.
    usage = {"prompt_tokens": 20, "completion_tokens": 50}
    steps = [
        {"name": "slow", "repeat": True, "delay_s": 0.5, "reply": {"content": "x", "usage": usage}}
    ]
    policy = ClawPolicy(
        models=("m1",),
        daily_tokens=300,
        max_tokens=50,
        concurrent_requests=8,
        requests_per_minute=None,
    )
    for rig in _rig(tmp_path, steps, policy):
        client = rig.client()
        codes: set[str | None] = set()
        for _wave in range(10):
            results = _parallel(client, 8)
            codes |= {r.code for r in results if isinstance(r, openai.RateLimitError)}
            if not any(not isinstance(r, Exception) for r in results):
                break
        else:
            pytest.fail("the budget never ran out")
        total = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rig.rows())
        # At most one call (70 tokens) past the budget, however calls overlap.
        assert 300 <= total < 300 + 70
        assert {"budget_reserved", "insufficient_quota"} <= codes
        with pytest.raises(openai.RateLimitError, match="used its daily budget of 300 tokens"):
            client.chat.completions.create(**ASK)


def test_a_stale_reservation_expires(tmp_path: Path) -> None:
    steps = [{"name": "call", "repeat": True, **HELLO}]
    policy = ClawPolicy(models=("m1",), concurrent_requests=1, requests_per_minute=None)
    for rig in _rig(tmp_path, steps, policy):
        now = rig.now[0]
        # What a controller that hung (alive, so not released at start) leaves behind.
        rig.usage.reserve(
            "alice",
            "m1",
            tokens=5000,
            cost_usd=0.0,
            owner=os.getpid(),
            now=now,
            expires_at=now + timedelta(minutes=18),
            admit=lambda ledger: None,
        )
        client = rig.client()
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(**ASK)
        assert info.value.code == "too_many_concurrent_requests"
        rig.now[0] = now + timedelta(minutes=18)
        client.chat.completions.create(**ASK)
        assert rig.usage.db.execute("SELECT COUNT(*) FROM llm_reservations").fetchone()[0] == 0


def test_a_gateway_reserves_for_at_most_its_deadline_and_grace(tmp_path: Path) -> None:
    steps = [{"name": "slow", "repeat": True, "delay_s": 0.5, **HELLO}]
    for rig in _rig(tmp_path, steps, ClawPolicy(models=("m1",)), max_call_s=30):
        seen: list[dict[str, Any]] = []
        thread = threading.Thread(target=rig.client().chat.completions.create, kwargs=ASK)
        thread.start()
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            with locked(rig.usage.db):  # the gateway's threads share the connection
                seen = [dict(r) for r in rig.usage.db.query("SELECT * FROM llm_reservations")]
        thread.join()
        [row] = seen
        ttl = from_iso(row["expires_at"]) - from_iso(row["created_at"])
        assert ttl == timedelta(seconds=30 + 120 + RESERVATION_GRACE_S)
        assert row["owner"] == os.getpid() and row["tokens"] > 4096  # prompt bound + cap


def test_reservations_of_a_dead_controller_are_released_when_a_gateway_starts(rig: Rig) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    now = rig.now[0]
    for owner in (proc.pid, os.getpid()):
        rig.usage.reserve(
            "alice",
            "m1",
            tokens=1,
            cost_usd=0.0,
            owner=owner,
            now=now,
            expires_at=now + timedelta(minutes=5),
            admit=lambda ledger: None,
        )
    LlmGateway(rig.usage, lambda: LlmConfig(None)).close()
    owners = [r[0] for r in rig.usage.db.execute("SELECT owner FROM llm_reservations")]
    assert owners == [os.getpid()]


# ---- settling: estimates, deadlines, streams never read ----------------------------
def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + (
        b"data: [DONE]\n\n"
    )


def _mock_gateway(
    tmp_path: Path, answer: httpx.Response
) -> Iterator[tuple[LlmGateway, UsageRepository]]:
    db = open_db(tmp_path / "clawden.db")
    config = LlmConfig(
        Upstream("mock", "http://upstream.invalid/v1", REAL_KEY),
        default_policy=ClawPolicy(models=("m1",)),
    )
    usage = UsageRepository(db)
    gateway = LlmGateway(
        usage, lambda: config, transport=httpx.MockTransport(lambda request: answer)
    )
    try:
        yield gateway, usage
    finally:
        gateway.close()
        db.conn.close()


def _request(body: dict[str, Any]) -> HttpRequest:
    return HttpRequest("POST", "/v1/chat/completions", {}, json.dumps(body).encode())


def test_a_stream_without_usage_is_charged_an_estimate(tmp_path: Path) -> None:
    chunk = {"choices": [{"index": 0, "delta": {"content": "x" * 400}}]}
    answer = httpx.Response(200, content=_sse(chunk), headers={"Content-Type": "text/event-stream"})
    for gateway, usage in _mock_gateway(tmp_path, answer):
        resp = gateway.chat_completions(ClawIdentity("alice"), _request({**ASK, "stream": True}))
        assert resp.stream is not None
        assert b"x" * 400 in b"".join(resp.stream)
        [row] = usage.db.query("SELECT * FROM llm_calls")
        assert row["status"] == "ok" and row["note"] == "upstream sent no usage; tokens estimated"
        assert row["completion_tokens"] == 100 and row["prompt_tokens"] > 0


def test_a_stream_closed_before_it_is_read_settles_its_reservation(tmp_path: Path) -> None:
    answer = httpx.Response(200, content=_sse(), headers={"Content-Type": "text/event-stream"})
    for gateway, usage in _mock_gateway(tmp_path, answer):
        resp = gateway.chat_completions(ClawIdentity("alice"), _request({**ASK, "stream": True}))
        assert usage.db.execute("SELECT COUNT(*) FROM llm_reservations").fetchone()[0] == 1
        stream: Any = resp.stream  # the HTTP layer closes any stream that has close()
        stream.close()  # what it does when the claw is gone before the first chunk
        stream.close()
        assert usage.db.execute("SELECT COUNT(*) FROM llm_reservations").fetchone()[0] == 0
        assert [r["status"] for r in usage.db.query("SELECT * FROM llm_calls")] == ["client_gone"]


def test_a_call_past_its_deadline_is_cut_off(tmp_path: Path) -> None:
    steps = [{"name": "slow", "repeat": True, "delay_s": 0.3, **HELLO}]
    for rig in _rig(tmp_path, steps, ClawPolicy(models=("m1",)), max_call_s=0.1):
        client = rig.client()
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(**ASK)
        assert info.value.status_code == 504 and "longer than 0.1 s" in info.value.message
        with pytest.raises(openai.APIError, match="longer than 0.1 s"):
            list(client.chat.completions.create(**ASK, stream=True))
        assert [r["status"] for r in rig.rows()] == ["deadline", "deadline"]
        assert rig.usage.db.execute("SELECT COUNT(*) FROM llm_reservations").fetchone()[0] == 0
