"""The hostile-guest suite for the host services, through a real sshd forward.

Each test is an attack a compromised claw can make on the host's services
(docs/security.md, "Host services under attack"; issue 8, findings 1-4, 6),
made as the claw would make it: from a process connecting to the claw's
forwarded loopback ports, through a real OpenSSH sshd and an SSH channel,
into the host's own services built by the composition root and running in a
process of their own (tests/support/host_process.py). Each asserts that the
attack was refused, and (``healthy_through``) that the host stayed healthy:
another claw served throughout, threads and RSS bounded, the log bounded,
nothing stored lost. Run them with ``pytest -m hostile``.

The claws: bob is the bystander; alice attacks the HTTP layer, mallory and
trudy the message and approval quotas, eve and walter the gateway (each its
own claw, so one attack's quota is not spent by another's).
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.core.quotas import (
    APPROVALS_PER_HOUR,
    MESSAGE_BURST,
    MESSAGE_BYTES_PER_DAY,
    MESSAGES_PER_MINUTE,
)
from appliance.services.http import MAX_BODY
from appliance.store import open_db
from appliance.store.approvals import ApprovalRepository
from tests.support.host_health import Bounds, chat, healthy_through, query, request
from tests.support.hostile_host import SCENARIO, HostProcess, host_process
from tests.support.local_sshd import sshd_available

pytestmark = [
    pytest.mark.hostile,
    pytest.mark.skipif(not sshd_available(), reason="needs openssh-server and socat"),
]

CLAWS = ("bob", "alice", "mallory", "trudy", "eve", "walter")
# Every call "uses" 400 tokens, and takes a moment (so parallel calls overlap).
COSTLY = {
    **SCENARIO,
    "steps": [
        {
            **SCENARIO["steps"][0],
            "delay_s": 0.2,
            "reply": {"content": "ok", "usage": {"prompt_tokens": 20, "completion_tokens": 380}},
        }
    ],
}
WALTER_BUDGET = 1000
WALTER_CAP = 400  # max_tokens: one call's completion cap
HEAD_TIMEOUT_S, BODY_TIMEOUT_S = 10.0, 30.0  # HttpLimits' defaults, which the host uses


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostProcess]:
    policy = (
        f"[claws.walter]\ndaily_tokens = {WALTER_BUDGET}\nmax_tokens = {WALTER_CAP}\n"
        "concurrent_requests = 64\nrequests_per_minute = 1000000\n"
    )
    workdir = Path(tmp_path_factory.mktemp("hostile", numbered=True))
    with host_process(workdir, CLAWS, COSTLY, policy) as running:
        _seed(running)
        yield running


def _seed(host: HostProcess) -> None:
    """Rows every claw wrote before any attack (healthy_through checks they stay)."""
    for claw in CLAWS:
        api = host.port(claw, "hostapi")
        assert request(api, "POST", "/v1/messages", {"text": f"hello from {claw}"})[0] == 200
        body = {"action": "email.send", "details": "to grandma", "timeout_s": 900}
        assert request(api, "POST", "/v1/approvals", body)[0] == 201
    assert chat(host.port("bob", "llm"))[0] == 200


def _exchange(port: int, data: bytes, then: bytes = b"", timeout: float = 10) -> bytes:
    """Send ``data`` (and try to push ``then`` after it), read until the host closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        try:
            sock.sendall(then)
        except OSError:
            pass  # the host closed first: what it should do
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        return answer


@pytest.mark.parametrize(
    "head, expected",
    [
        ("Content-Length: -1", b"400"),
        ("Content-Length: +5", b"400"),
        ("Content-Length: 0x10", b"400"),
        ("Content-Length: 99999999999999999999999999999", b"4"),  # h11: 400; ours: 413
        (f"Content-Length: {8 * MAX_BODY}", b"413"),
        ("Content-Length: 5\r\nContent-Length: 5", b"400"),
        ("Content-Length: 5\r\nContent-Length: 7", b"400"),
        ("Content-Length: 5, 5", b"400"),
        ("Transfer-Encoding: chunked", b"400"),
        ("Transfer-Encoding: chunked\r\nContent-Length: 5", b"400"),
        ("Transfer-Encoding: gzip, chunked", b"400"),
    ],
)
def test_bad_framing_is_refused_without_reading_the_body(
    host: HostProcess, head: str, expected: bytes
) -> None:
    """Finding 1: a negative Content-Length read 24 MiB "until close" and the
    controller kept 49 MB of it. Every framing trick gets an answer at once,
    and the 24 MiB the claw pushes after it are not read."""
    port = host.port("alice", "hostapi")
    raw = f"POST /v1/messages HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n".encode()
    with healthy_through(host, f"bad framing {head!r}"):
        started = time.monotonic()
        answer = _exchange(port, raw, b"x" * (24 * 1024 * 1024))
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 " + expected), answer[:200]
    assert took < 20, f"the refusal took {took:.1f} s"


def test_slowloris_heads_and_bodies_are_cut_at_their_deadlines(host: HostProcess) -> None:
    """Finding 2: a timeout that restarts with every byte let 1 byte per 10 s
    hold 200 connections for a minute. Deadlines cut the trickling head at
    ``head_timeout_s`` and the trickling body ``body_timeout_s`` after its head,
    and the claw's 17th connection is refused while it holds 16."""
    port = host.port("alice", "hostapi")
    heads: list[socket.socket] = []
    bodies: list[socket.socket] = []
    cut: dict[int, float] = {}
    with healthy_through(host, "slowloris"):
        try:
            for _ in range(8):
                heads.append(socket.create_connection(("127.0.0.1", port), timeout=10))
                bodies.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            socks = heads + bodies
            started = time.monotonic()
            body_head = b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
            for sock in bodies:
                sock.sendall(body_head)
            time.sleep(0.5)
            # All 16 of her connections are held: the next is closed at once.
            assert _exchange(port, b"GET /v1/whoami HTTP/1.1\r\nHost: x\r\n\r\n") == b""
            trickle = b"GET /v1/whoami HTTP/1.1\r\nX-Slow: " + b"a" * 1000
            for n in range(1000):
                if len(cut) == len(socks) or time.monotonic() - started > 60:
                    break
                for i, sock in enumerate(socks):
                    if i in cut:
                        continue
                    try:
                        sock.sendall(trickle[n : n + 1] if i < len(heads) else b"{")
                    except OSError:
                        cut[i] = time.monotonic() - started
                time.sleep(0.5)
        finally:
            for sock in heads + bodies:
                sock.close()
    head_cuts = [cut.get(i) for i in range(len(heads))]
    body_cuts = [cut.get(i) for i in range(len(heads), 2 * len(heads))]
    assert all(c is not None and c < HEAD_TIMEOUT_S + 5 for c in head_cuts), head_cuts
    assert all(c is not None and c < BODY_TIMEOUT_S + 5 for c in body_cuts), body_cuts


def _still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the far end has neither closed nor answered."""
    count = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            count += sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            count += 1  # nothing to read, not closed: still held
        except OSError:
            pass
    return count


def test_a_flood_of_400_connections_gets_16_per_service(host: HostProcess) -> None:
    """Finding 2: 400 connections made 406 controller threads. Each service
    serves at most 16 of one claw's connections; the rest are closed at once.
    The host takes a claw's channel opens at its pace (a burst of 64, then
    20 a second), so the last of the 400 wait in the claw's own sshd for a
    while — holding nothing on the host — before they are refused."""
    held: list[socket.socket] = []
    services = ("hostapi", "llm", "egress")
    with healthy_through(host, "400 connections", Bounds(threads=3 * 16 + 4)):
        try:
            for n in range(400):
                port = host.port("alice", services[n % 3])
                held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            deadline = time.monotonic() + 60
            while (open_ := _still_open(held)) > 3 * 16 and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            for sock in held:
                sock.close()
    assert open_ <= 3 * 16, f"{open_} of 400 connections were held open (cap 16 per service)"


def test_300_long_polls_hold_at_most_4(host: HostProcess) -> None:
    """Finding 2: 300 approval long polls took ~30 % of a core and delayed
    others. At most 4 of a claw's long polls are held; the rest are refused
    (429, or closed past the connection cap) at once."""
    api = host.port("alice", "hostapi")
    answers: list[int] = []
    lock = threading.Lock()

    def wait(approval: str) -> None:
        try:
            status = request(api, "POST", "/v1/approvals/wait", {"id": approval, "wait_s": 3})[0]
        except OSError:
            status = 0
        with lock:
            answers.append(status)

    with healthy_through(host, "300 long polls", Bounds(threads=16 + 4)):
        status, body = request(api, "POST", "/v1/approvals", {"action": "a", "details": "d"})
        assert status in (201, 429), body
        pending = query(host.db_path, "SELECT id FROM approvals WHERE claw='alice' LIMIT 1")
        waiters = [threading.Thread(target=wait, args=(pending[0][0],)) for _ in range(300)]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join(60)
    held = answers.count(200)
    assert len(answers) == 300
    # Waiting 3 s each, the 4 slots can have served a few rounds, never many.
    assert held <= 4 * 3, f"{held} long polls were held (4 at a time)"
    assert answers.count(429) + answers.count(0) >= 300 - held


def test_a_message_flood_is_stopped_at_the_burst(host: HostProcess) -> None:
    """Finding 3: 300 messages in 4 s. The claw's rate (10 a minute after a
    burst of 20) refuses the rest with 429, and writes nothing for them. (The
    host's request pace makes the 300 take ~15 s, in which the rate allows a
    few more.)"""
    api = host.port("mallory", "hostapi")
    with healthy_through(host, "300 messages"):
        started = time.monotonic()
        statuses = [
            request(api, "POST", "/v1/messages", {"text": f"spam {n}"})[0] for n in range(300)
        ]
        refilled = math.ceil((time.monotonic() - started) * MESSAGES_PER_MINUTE / 60)
    allowed = MESSAGE_BURST + refilled
    assert statuses.count(200) <= allowed, f"{statuses.count(200)} stored, {allowed} allowed"
    assert statuses.count(200) + statuses.count(429) == 300
    [(rows,)] = query(host.db_path, "SELECT count(*) FROM messages WHERE claw='mallory'")
    assert rows <= allowed + 1  # + the one before the attack


def test_64_kib_messages_stop_at_the_daily_bytes(host: HostProcess) -> None:
    """Finding 3: 64 KiB messages at 33/s grew the database by ~2 MB/s. A
    claw's messages are at most 1 MiB a day; a larger message is a 400."""
    api = host.port("trudy", "hostapi")
    with healthy_through(host, "64 KiB messages", Bounds(rss_peak_mib=48)):
        too_big = request(api, "POST", "/v1/messages", {"text": "x" * (64 * 1024 + 1)})
        statuses = [
            request(api, "POST", "/v1/messages", {"text": "x" * (64 * 1024 - 100)})[0]
            for _ in range(40)
        ]
    assert too_big[0] == 400, too_big
    assert statuses.count(429) >= 40 - MESSAGE_BURST
    [(stored,)] = query(
        host.db_path, "SELECT coalesce(sum(length(text)), 0) FROM messages WHERE claw='trudy'"
    )
    assert stored <= MESSAGE_BYTES_PER_DAY, f"{stored} bytes stored in a day"


def test_approval_churn_stops_at_the_hourly_quota(host: HostProcess) -> None:
    """Finding 3: asking again as requests expire made ~43k rows a day. Even
    with every request answered at once (pending never full), a claw gets at
    most 20 an hour."""
    api = host.port("mallory", "hostapi")
    db = open_db(host.db_path)  # the operator's CLI, answering each request
    try:
        repo = ApprovalRepository(db)
        with healthy_through(host, "approval churn"):
            statuses = []
            for n in range(100):
                body = {"action": "email.send", "details": f"churn {n}", "timeout_s": 10}
                status, answer = request(api, "POST", "/v1/approvals", body)
                statuses.append(status)
                if status == 201:
                    repo.decide(answer["id"], False, by="cli")
    finally:
        db.close()
    [(rows,)] = query(host.db_path, "SELECT count(*) FROM approvals WHERE claw='mallory'")
    assert statuses.count(201) <= APPROVALS_PER_HOUR - 1  # one was asked before
    assert rows <= APPROVALS_PER_HOUR, f"{rows} approval rows in an hour"


def test_model_name_n_and_max_tokens_are_bounded_before_the_upstream(host: HostProcess) -> None:
    """Finding 4: a 100,000-character model name was stored; ``n: 64`` and
    ``max_tokens: 1e9`` reached the upstream."""
    llm = host.port("eve", "llm")
    sent_before = len(host.upstream_log.read_text().splitlines())
    with healthy_through(host, "gateway inputs"):
        huge = chat(llm, model="m" * 100_000)
        star = chat(llm, model="*")
        many = chat(llm, n=64)
        inflated = chat(llm, max_tokens=10**9, max_completion_tokens=10**9, x_evil=1)
    assert huge[0] == 400 and star[0] in (400, 403), (huge, star)
    assert many[0] == 400 and "n > 1" in many[1]["error"]["message"], many
    assert inflated[0] == 200, inflated
    sent = [json.loads(line)["body"] for line in host.upstream_log.read_text().splitlines()]
    eve = sent[sent_before:]
    assert eve, "the call that should have been forwarded was not"
    assert all(len(b["model"]) < 200 for b in eve)
    assert all(b.get("n", 1) == 1 and "x_evil" not in b for b in eve)
    assert all(b.get("max_tokens", 0) <= 4096 for b in eve)
    longest = query(host.db_path, "SELECT max(length(model)) FROM llm_calls")[0][0]
    assert longest < 200, f"a {longest}-character model name was stored"


def test_parallel_gateway_calls_do_not_get_past_the_budget(host: HostProcess) -> None:
    """Finding 4: budgets were checked before each call, so parallel calls
    all passed. Each call reserves its worst case; the budget is overshot by
    at most one call."""
    llm = host.port("walter", "llm")
    statuses: list[int] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            status = chat(llm)[0]
        except OSError:  # closed past her 16 connections
            status = 0
        with lock:
            statuses.append(status)

    with healthy_through(host, "parallel gateway calls"):
        callers = [threading.Thread(target=call) for _ in range(40)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(60)
    [(used,)] = query(
        host.db_path,
        "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM llm_calls "
        "WHERE claw='walter'",
    )
    assert statuses.count(200) >= 1, statuses
    assert used <= WALTER_BUDGET + WALTER_CAP + 100, f"{used} tokens used of {WALTER_BUDGET}"


def test_error_provoking_inputs_leave_a_bounded_log(host: HostProcess) -> None:
    """Finding 6: a bad Content-Length, a lone surrogate or a NaN timeout was
    a 500 with a traceback: 100 requests, 104 KB of log. Now each is a 4xx,
    and the claw's lines in the log are capped (30 a minute)."""
    api = host.port("alice", "hostapi")
    bodies = [
        ("/v1/messages", b'{"text": "\\ud800"}'),
        ("/v1/approvals", b'{"action": "a", "details": "x", "timeout_s": NaN}'),
        ("/v1/approvals/wait", b'{"id": "x", "wait_s": Infinity}'),
        ("/v1/messages", b"[" * 50_000 + b"]" * 50_000),
    ]
    log_before = host.log_bytes()
    with healthy_through(host, "300 error-provoking requests", Bounds(log_kib=16)):
        statuses = []
        for n in range(300):
            path, body = bodies[n % len(bodies)]
            head = (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            answer = _exchange(api, head.encode() + body)
            statuses.append(answer[9:12])
    assert set(statuses) <= {b"400", b"413", b"429"}, set(statuses)
    with host.log_path.open("rb") as log:
        log.seek(log_before)
        added = log.read().decode(errors="replace")
    assert "Traceback" not in added
