"""The services a claw reaches through its channel (host API, LLM gateway,
egress stub), over a real sshd (socat-bridged, no VM).

The "guest" is this machine: the host's remote forwards listen on loopback
ports here, and the guest's own client (``appliance.guest.hostapi``) calls
them, so the host and the agent are checked against the same contract.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paramiko
import pytest
from sqlite_utils import Database

from appliance.app import service_registry
from appliance.channel.forwarding import ClawIdentity, ForwardedService, ServiceRegistry
from appliance.channel.transport import ChannelTarget, open_transport
from appliance.config import Settings
from appliance.core.errors import Conflict
from appliance.core.model import Claw, ClawState
from appliance.guest.hostapi import Approval, HostApiError, HttpHostApi
from appliance.guest.tools import ToolContext, default_toolbox
from appliance.schedule.jobs import ensure_heartbeat
from appliance.services.egress_stub import CODE, REASON, egress_stub_service
from appliance.services.hostapi import host_api_service
from appliance.store import ClawRepository, Store, open_db
from appliance.store.approvals import ApprovalRepository
from appliance.store.messages import MessageRepository
from appliance.store.skills import SkillRepository
from tests.support.local_sshd import LocalSshd, local_sshd, sshd_available

pytestmark = pytest.mark.skipif(not sshd_available(), reason="needs openssh-server and socat")


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[LocalSshd]:
    with local_sshd(tmp_path / "sshd") as server:
        yield server


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    # A file, as in the controller: the services use it from their own threads.
    database = open_db(tmp_path / "store.db")
    for name in ("alice", "bob"):
        ClawRepository(database).add(
            Claw(name, name.title(), ClawState.RUNNING, "img", 1, 512, "2026-01-01")
        )
        ensure_heartbeat(Store(database), name, "UTC")
    yield database
    database.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connect(server: LocalSshd, claw: str, services: list[ForwardedService]) -> paramiko.Transport:
    """A transport for ``claw`` serving ``services``, each on a fresh loopback port
    (every claw shares this machine's loopback, unlike real guests)."""
    for service in services:
        service.guest_port = _free_port()
    target = ChannelTarget(
        claw=claw,
        socket_path=server.socket_path,
        pinned_host_key=server.host_public,
        client_key=paramiko.Ed25519Key.from_private_key(io.StringIO(server.client_private)),
        user=server.user,
    )
    transport = open_transport(target, timeout=10)
    ServiceRegistry(services).install(transport, ClawIdentity(claw))
    return transport


@pytest.fixture
def two_claws(sshd: LocalSshd, db: Database) -> Iterator[tuple[HttpHostApi, HttpHostApi]]:
    alice_api, bob_api = host_api_service(Store(db)), host_api_service(Store(db))
    alice = _connect(sshd, "alice", [alice_api])
    bob = _connect(sshd, "bob", [bob_api])
    try:
        yield (
            HttpHostApi(f"http://127.0.0.1:{alice_api.guest_port}", timeout_s=10),
            HttpHostApi(f"http://127.0.0.1:{bob_api.guest_port}", timeout_s=10),
        )
    finally:
        alice.close()
        bob.close()


def test_messages_are_stored_for_the_claw_the_channel_belongs_to(
    two_claws: tuple[HttpHostApi, HttpHostApi], db: Database
) -> None:
    alice, bob = two_claws
    assert alice.whoami() == "alice" and bob.whoami() == "bob"
    answer = alice.send_message("milk is on the list")
    [stored] = MessageRepository(db).list("alice")
    assert answer == {"id": stored.id, "delivered": False}
    assert (stored.direction, stored.sender, stored.kind, stored.text) == (
        "out",
        "alice",
        "chat",
        "milk is on the list",
    )
    assert MessageRepository(db).list("bob") == []
    with pytest.raises(HostApiError, match="limit is 65536"):
        alice.send_message("x" * 70_000)


def test_each_claw_sees_and_changes_only_its_own_schedules(
    two_claws: tuple[HttpHostApi, HttpHostApi],
) -> None:
    alice, bob = two_claws
    job = alice.create_schedule("cron", "0 9 * * mon", "Europe/Berlin", "Plan the week.")
    assert job["created_by"] == "claw" and job["tz"] == "Europe/Berlin"
    assert job["kind"] == "cron" and job["enabled"] is True and job["next_run_at"]
    mine = alice.list_schedules()
    assert {j["kind"] for j in mine} == {"heartbeat", "cron"}
    assert set(mine[0]) == {
        "id",
        "kind",
        "spec",
        "tz",
        "text",
        "created_by",
        "enabled",
        "next_run_at",
    }
    theirs = bob.list_schedules()
    assert [j["kind"] for j in theirs] == ["heartbeat"]
    # Bob cannot delete (or even learn about) Alice's job; nobody their heartbeat.
    with pytest.raises(HostApiError, match=f"no scheduled job {job['id']}.*not_found"):
        bob.delete_schedule(int(job["id"]))
    heartbeat = next(j for j in mine if j["kind"] == "heartbeat")
    with pytest.raises(HostApiError, match="never its heartbeat"):
        alice.delete_schedule(int(heartbeat["id"]))
    with pytest.raises(HostApiError, match="cannot create or change its heartbeat"):
        alice.create_schedule("heartbeat", "every=5m", None, "beat")
    with pytest.raises(HostApiError, match="invalid cron"):
        alice.create_schedule("cron", "61 * * * *", None, "bad")
    alice.delete_schedule(int(job["id"]))
    assert [j["kind"] for j in alice.list_schedules()] == ["heartbeat"]


def _decide_when_asked(db: Database, approved: bool, reason: str | None = None) -> str:
    """Play the admin: wait for alice's request to appear, then decide it."""
    repo = ApprovalRepository(db)
    deadline = time.monotonic() + 10
    while not (pending := repo.list("alice")) and time.monotonic() < deadline:
        time.sleep(0.05)
    [approval] = pending
    repo.decide(approval.id, approved, by="cli", reason=reason)
    return approval.id


def test_a_claw_waits_for_its_admin_and_sees_the_decision(
    two_claws: tuple[HttpHostApi, HttpHostApi], db: Database
) -> None:
    alice, bob = two_claws
    for approved, reason, expected in (
        (True, None, ("approved", "approved by your admin")),
        (False, "not today", ("denied", "not today")),
    ):
        got: list[Approval] = []
        claw = threading.Thread(
            target=lambda out: out.append(alice.request_approval("email.send", "to grandma", 60)),
            args=(got,),
        )
        claw.start()
        approval_id = _decide_when_asked(db, approved, reason)
        claw.join(timeout=15)
        assert not claw.is_alive()
        assert (got[0].id, got[0].status, got[0].reason) == (approval_id, *expected)
    # Bob can neither read nor learn about Alice's request.
    with pytest.raises(HostApiError, match=f"you have no approval request '{approval_id}'"):
        bob._call("POST", "/v1/approvals/wait", {"id": approval_id, "wait_s": 1})
    raw = alice._call("POST", "/v1/approvals/wait", {"id": approval_id, "wait_s": 5})
    assert raw == {"id": approval_id, "status": "denied", "reason": "not today"}
    with pytest.raises(HostApiError, match="newline or other control character"):
        alice.request_approval("email.send\nrm -rf /", "x", 10)


def test_an_approval_nobody_decides_expires_and_the_claw_is_told(
    two_claws: tuple[HttpHostApi, HttpHostApi], db: Database, tmp_path: Path
) -> None:
    # The claw's own tool, over the real client and channel, with the shortest
    # timeout there is (10 s; the host clamps to it too). Nobody decides.
    alice, _ = two_claws
    box = default_toolbox(ToolContext(tmp_path, alice, lambda: datetime.now(UTC)))
    asked = {"action": "email.send", "details": "to grandma", "timeout_s": 10}
    started = time.monotonic()
    said = box.run("request_approval", json.dumps(asked))
    waited = time.monotonic() - started
    [approval] = ApprovalRepository(db).list("alice", pending_only=False)
    assert approval.status == "expired" and approval.decided_by is None
    assert approval.expires_at - approval.created_at == timedelta(seconds=10)
    # What the model reads: the host's expiry, said as such — not the claw
    # giving up on its own clock ("timeout"), and not an error.
    assert said == (
        f"approval {approval.id} for 'email.send': NOT approved (expired): "
        "no decision before it expired"
    )
    assert waited >= 9.0  # it really waited for the decision it never got
    # Asking again gets the same answer; a late decision by the admin is refused.
    raw = alice._call("POST", "/v1/approvals/wait", {"id": approval.id, "wait_s": 1})
    expired = {"id": approval.id, "status": "expired", "reason": "no decision before it expired"}
    assert raw == expired
    with pytest.raises(Conflict, match=f"approval {approval.id} is already expired"):
        ApprovalRepository(db).decide(approval.id, True, by="cli")


def test_malformed_bodies_get_a_json_error(
    two_claws: tuple[HttpHostApi, HttpHostApi],
) -> None:
    alice, _ = two_claws
    request = urllib.request.Request(alice.base_url + "/v1/messages", data=b"[1, 2]", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10)
    with info.value as resp:
        assert resp.code == 400
        assert json.loads(resp.read()) == {
            "error": {"message": "the body must be a JSON object", "code": "bad_request"}
        }
    with pytest.raises(HostApiError, match="'id' must be a int"):
        alice._call("POST", "/v1/schedules/delete", {"id": "1"})


def test_the_egress_stub_refuses_http_and_connect(sshd: LocalSshd) -> None:
    stub = egress_stub_service()
    transport = _connect(sshd, "alice", [stub])
    try:
        guest = HttpHostApi(proxy_url=f"http://127.0.0.1:{stub.guest_port}", timeout_s=10)
        with pytest.raises(HostApiError) as info:
            guest.web_fetch("http://example.com/")
        assert (
            str(info.value) == f"the host refused to fetch http://example.com/: {REASON} ({CODE})"
        )
        # CONNECT (https) by hand: Python 3.11's urllib leaks its socket when a
        # proxy refuses a tunnel, which this suite's warnings-as-errors would
        # blame on the test. The client only sees the status line.
        with socket.create_connection(("127.0.0.1", stub.guest_port), timeout=10) as conn:
            conn.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
        assert answer.startswith(f"HTTP/1.1 403 {REASON}\r\n".encode())
    finally:
        transport.close()


def test_the_registry_serves_all_three_ports_and_the_gateway_explains_no_upstream(
    sshd: LocalSshd, tmp_path: Path, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    settings = Settings(home=tmp_path / "home", libvirt_uri="fake:///")
    registry = service_registry(settings, Store(db))  # must not fail without an upstream
    assert registry.ports == [7701, 7702, 7703]
    gateway = next(s for s in registry if s.name == "llm")
    transport = _connect(sshd, "alice", [gateway])
    try:
        url = f"http://127.0.0.1:{gateway.guest_port}/v1/chat/completions"
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        request = urllib.request.Request(url, data=body.encode(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10)
        with info.value as resp:
            assert resp.code == 503
            error = json.loads(resp.read())["error"]
        assert error["message"] == (
            "no model provider is configured on the host yet: the admin sets the model "
            "provider in the panel's Settings or in llm.toml"
        )
        assert error["code"] == "gateway_misconfigured" and error["type"] == "server_error"
    finally:
        transport.close()


def test_each_claw_sees_only_the_skills_installed_on_it(
    two_claws: tuple[HttpHostApi, HttpHostApi], db: Database
) -> None:
    alice, bob = two_claws
    assert alice.installed_skills() == {}
    SkillRepository(db).record("alice", "weather-report", "a" * 64, "weather.tgz")
    SkillRepository(db).record("alice", "weather-report", "b" * 64, "weather.tgz")  # reinstall
    assert alice.installed_skills() == {"weather-report": "b" * 64}
    assert bob.installed_skills() == {}
