"""Quotas on what a claw can make the host store: the host API's 429s (message
rate, bytes a day, undelivered backlog, approvals an hour) on an injected
clock, a refused flood that adds no rows, scheduled replies held to the same
limits, `claw status` showing them, and `claw messages --purge-before`."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlite_utils import Database

from appliance.app import build_context
from appliance.channel.forwarding import ClawIdentity
from appliance.cli import main
from appliance.config import Settings
from appliance.controller.status import quota_lines
from appliance.core.errors import OverQuota
from appliance.core.messages import MAX_TEXT_BYTES
from appliance.core.quotas import (
    APPROVALS_PER_HOUR,
    MESSAGE_BACKLOG,
    MESSAGE_BURST,
    MESSAGE_BYTES_PER_DAY,
    MessageRate,
    Pacer,
    Quotas,
    Refusals,
)
from appliance.schedule.jobs import ScheduleRepository, schedule_add
from appliance.schedule.runner import FakeDelivery, SchedulerRunner
from appliance.services.hostapi import host_api_service
from appliance.services.http import HttpRequest, HttpResponse, HttpService
from appliance.store import Store, open_db
from appliance.store.audit import AuditLog
from appliance.store.messages import MessageRepository
from appliance.store.tx import to_iso
from tests.unit.test_schedule_store import add_claw

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # noon: 43,200 s to 00:00 UTC


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def api(db: Database, clock: Clock) -> HttpService:
    """One host API (as the controller has one), on a store that keeps ``clock``'s time."""
    return host_api_service(Store(db, clock=clock))


def _post(api: HttpService, path: str, body: object, claw: str = "alice") -> HttpResponse:
    return api.dispatch(
        ClawIdentity(claw), HttpRequest("POST", path, {}, json.dumps(body).encode())
    )


def _say(api: HttpService, text: str, claw: str = "alice") -> HttpResponse:
    return _post(api, "/v1/messages", {"text": text}, claw)


def _error(response: HttpResponse) -> str:
    body = json.loads(response.body)
    assert body["error"]["code"] == "over_quota"
    return str(body["error"]["message"])


def _rows(db: Database, table: str) -> int:
    return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608


# ---- messages: rate -------------------------------------------------------------
def test_the_21st_message_of_a_burst_is_a_429_with_retry_after_and_what_to_do(
    api: HttpService, db: Database, clock: Clock
) -> None:
    for n in range(MESSAGE_BURST):
        assert _say(api, f"note {n}").status == 200
    refused = _say(api, "one too many")
    assert refused.status == 429 and refused.headers["Retry-After"] == "6"
    assert _error(refused) == (
        "you sent 20 messages in the last minute; the limit is 10 a minute, "
        "with bursts of up to 20 — wait 6 s before sending another"
    )
    assert len(MessageRepository(db).list("alice", limit=100)) == MESSAGE_BURST
    assert _say(api, "bob is not alice", claw="bob").status == 200  # its own bucket
    clock.advance(5)
    assert _say(api, "too soon").headers["Retry-After"] == "1"
    clock.advance(1)
    assert _say(api, "a token came back").status == 200  # 10 a minute: one every 6 s
    assert _say(api, "and went").status == 429


def test_a_refused_flood_adds_no_rows_and_logs_one_line(
    api: HttpService, db: Database, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(MESSAGE_BURST):
        _say(api, f"note {n}")
    for _ in range(5):  # five approvals, then the pending cap
        _post(api, "/v1/approvals", {"action": "a", "details": "", "timeout_s": 900})
    before = {t: _rows(db, t) for t in ("messages", "approvals", "audit_log")}
    caplog.set_level(logging.INFO, logger="appliance.services.hostapi")
    for _ in range(500):
        assert _say(api, "x" * 60_000).status == 429
        clock.advance(0.01)  # 5 s in all: still under a token
    for _ in range(100):  # five are waiting: each is a denial the agent reads
        denied = _post(api, "/v1/approvals", {"action": "again", "details": ""})
        assert json.loads(denied.body)["status"] == "denied"
    assert {t: _rows(db, t) for t in before} == before
    lines = [r.getMessage() for r in caplog.records if "over quota" in r.getMessage()]
    assert lines == [
        "claw alice: refused 1 request over quota (messages.rate 1); at most one such line a minute"
    ]
    clock.advance(60)
    for _ in range(10):  # the refilled tokens (10) …
        _say(api, "y")
    _say(api, "z")  # … then the next line, summing up the minute
    lines = [r.getMessage() for r in caplog.records if "over quota" in r.getMessage()]
    assert len(lines) == 2
    assert "refused 600 requests over quota (approvals.pending 100, messages.rate 500)" in lines[1]
    assert [r.getMessage() for r in caplog.records] == lines  # no line per refusal


# ---- messages: bytes a day, backlog ---------------------------------------------
def test_bytes_a_day_are_counted_per_utc_day(api: HttpService, db: Database, clock: Clock) -> None:
    big = "x" * 60_000
    for _ in range(17):  # 1,020,000 bytes
        assert _say(api, big).status == 200
    refused = _say(api, big)
    assert (refused.status, refused.headers["Retry-After"]) == (429, "43200")
    assert _error(refused) == (
        "this message is 60000 bytes and 28576 of your 1048576 bytes a day are left — "
        "send at most 28576 bytes, or wait 43200 s (until 00:00 UTC)"
    )
    assert _say(api, "x" * 28_576).status == 200  # exactly the rest fits
    refused = _say(api, "!")
    assert _error(refused) == (
        f"you sent {MESSAGE_BYTES_PER_DAY} bytes of messages today; the limit is "
        f"{MESSAGE_BYTES_PER_DAY} a day — wait 43200 s (until 00:00 UTC) before sending another"
    )
    assert MessageRepository(db).usage("alice", clock()).bytes_today == MESSAGE_BYTES_PER_DAY
    clock.advance(43_200)  # a new UTC day
    assert _say(api, big).status == 200


def test_the_undelivered_backlog_is_capped_until_messages_are_delivered(
    api: HttpService, db: Database, clock: Clock
) -> None:
    for n in range(MESSAGE_BACKLOG):
        assert _say(api, f"n{n}").status == 200
        clock.advance(6)  # the sustained rate
    refused = _say(api, "one more")
    assert (refused.status, refused.headers["Retry-After"]) == (429, "300")
    assert _error(refused) == (
        "200 of your messages are still waiting to be delivered to your owner; the limit is "
        "200 — send nothing more until they have been delivered; try again in 300 s"
    )
    messages = MessageRepository(db)
    messages.mark_delivered(messages.undelivered("alice")[0].id)
    clock.advance(6)
    assert _say(api, "room for one").status == 200
    assert _rows(db, "messages") == MESSAGE_BACKLOG + 1


def test_a_scheduled_reply_is_held_to_the_same_quotas(db: Database, clock: Clock) -> None:
    add_claw(db)
    store = Store(db, clock=clock)
    for _ in range(16):  # 16 × 64 KiB: the whole day's bytes
        store.messages.add_from_claw("alice", "default", "x" * MAX_TEXT_BYTES, now=clock())
    schedule_add(store, "alice", "every", "1h", "UTC", "report", now=T0)
    refusals = Refusals()
    runner = SchedulerRunner(
        ScheduleRepository(db),
        FakeDelivery(replies={"alice": "a long report"}),
        clock=clock,
        messages=store.messages,
        refusals=refusals,
    )
    (fired,) = runner.tick(T0 + timedelta(hours=1))
    assert fired.status.startswith("refused: reply not stored: you sent 1048576 bytes")
    assert [m.kind for m in store.messages.list("alice", limit=100)] == ["chat"] * 16
    assert refusals.totals() == {"alice": {"messages.bytes_per_day": 1}}


# ---- approvals an hour ------------------------------------------------------------
def test_approvals_an_hour_on_top_of_five_pending(
    api: HttpService, db: Database, clock: Clock
) -> None:
    for n in range(APPROVALS_PER_HOUR):
        created = _post(api, "/v1/approvals", {"action": f"a{n}", "details": "", "timeout_s": 10})
        assert json.loads(created.body)["status"] == "pending"
        clock.advance(11)  # it expires, so the 5 pending never stop the next one
    refused = _post(api, "/v1/approvals", {"action": "again", "details": "", "timeout_s": 10})
    # The first was asked 220 s ago: it leaves the hour in 3380 s.
    assert (refused.status, refused.headers["Retry-After"]) == (429, "3380")
    assert _error(refused) == (
        "you asked for 20 approvals in the last hour; the limit is 20 an hour — "
        "wait 3380 s before asking again, and ask only for what you cannot do without"
    )
    assert _rows(db, "approvals") == APPROVALS_PER_HOUR
    assert [e.action for e in AuditLog(db).entries()] == ["approval.request"] * 20
    created = _post(api, "/v1/approvals", {"action": "bob", "details": ""}, claw="bob")
    assert json.loads(created.body)["status"] == "pending"  # another claw's hour is its own
    clock.advance(3380)
    created = _post(api, "/v1/approvals", {"action": "later", "details": "", "timeout_s": 10})
    assert created.status == 201 and json.loads(created.body)["status"] == "pending"


def test_the_repository_refuses_over_the_hour_inside_its_transaction(
    db: Database, clock: Clock
) -> None:
    store = Store(db, clock=clock)
    tight = Quotas(approvals_per_hour=2)
    store.approvals.request("alice", "a", "", 10, quotas=tight)
    store.approvals.request("alice", "b", "", 10, quotas=tight)
    with pytest.raises(OverQuota) as err:
        store.approvals.request("alice", "c", "", 10, quotas=tight)
    assert (err.value.quota, err.value.retry_after_s) == ("approvals.per_hour", 3600)
    assert len(store.approvals.list("alice", pending_only=False)) == 2


# ---- the pure rules -----------------------------------------------------------------
def test_token_bucket_refills_at_the_sustained_rate_up_to_the_burst() -> None:
    rate = MessageRate(per_minute=10, burst=20)
    for _ in range(20):
        rate.admit("alice", 0.0)
    with pytest.raises(OverQuota) as err:
        rate.admit("alice", 0.0)
    assert err.value.retry_after_s == 6 and "you sent 20 messages" in err.value.what
    rate.admit("alice", 600.0)  # ten minutes later: full again, but never more than 20
    for _ in range(19):
        rate.admit("alice", 600.0)
    with pytest.raises(OverQuota, match="you sent 20 messages"):
        rate.admit("alice", 600.0)


def test_quotas_must_be_positive() -> None:
    with pytest.raises(ValueError, match="message_backlog must be positive"):
        Quotas(message_backlog=0)


# ---- the CLI: status and purge ------------------------------------------------------
def _home_db() -> Database:
    return open_db(Settings.from_env().db_path)


def test_status_shows_every_quota(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _home_db()
    try:
        add_claw(db)
        store = Store(db)
        store.messages.add_from_claw("alice", "default", "hello")
        store.messages.add_from_claw("alice", "default", "héllo")
        store.messages.add("alice", "in", "cli", "operator", "not the claw's")
        store.approvals.request("alice", "email.send", "to: grandma", 300)
        schedule_add(store, "alice", "every", "1h", "UTC", "x", created_by="claw")
    finally:
        db.close()
    assert main(["claw", "status", "alice"]) == 0
    out = capsys.readouterr().out
    assert (
        "quotas:\n"
        "  messages:  2 today, 11 of 1048576 bytes (UTC day); at most 10 a minute, bursts of 20\n"
        "  backlog:   2 of 200 messages not delivered yet\n"
        "  approvals: 1 of 20 in the last hour, 1 of 5 pending\n"
        "  schedules: 1 of 32 made by the claw\n"
        "  llm calls: 0 today; the gateway allows 60 a minute (llm.toml)\n"
        "  pace:      10 requests a second after a burst of 40 (all host services); "
        "20 connections a second; past it requests wait their turn\n"
        "  over quota: unknown (controller not running)\n"
    ) in out
    ctx = build_context()
    counted = list(quota_lines(ctx, "alice", {"messages.rate": 7, "approvals.per_hour": 2}))
    assert counted[-1] == (
        "  over quota: 9 since the controller started (approvals.per_hour 2, messages.rate 7)"
    )
    assert list(quota_lines(ctx, "alice", {}))[-1] == (
        "  over quota: none since the controller started"
    )


def _seed_messages() -> None:
    db = _home_db()
    try:
        add_claw(db, "alice")
        add_claw(db, "bob")
        messages = MessageRepository(db)
        for claw in ("alice", "bob"):
            for day in (10, 20, 31):  # January
                at = to_iso(datetime(2026, 1, day, 9, 0, tzinfo=UTC))
                messages.add(claw, "out", "default", claw, f"{claw} {day}", created_at=at)
            at = to_iso(datetime(2026, 2, 1, 0, 0, tzinfo=UTC))
            messages.add(claw, "in", "cli", "operator", f"{claw} feb", created_at=at)
    finally:
        db.close()


def _texts(claw: str) -> list[str]:
    db = _home_db()
    try:
        return [m.text for m in MessageRepository(db).list(claw)]
    finally:
        db.close()


def test_purge_before_deletes_only_older_rows_of_that_claw_and_is_audited(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_messages()
    assert main(["claw", "messages", "alice", "--purge-before", "2026-01-31"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: this would delete 2 message(s) of alice created before 2026-01-31T00:00:00Z"
        " — confirm with `clawden claw messages alice --purge-before 2026-01-31T00:00:00Z"
        " --yes`\n"
    )
    assert len(_texts("alice")) == 4  # nothing went without --yes
    argv = ["claw", "messages", "alice", "--purge-before", "2026-01-31T10:00+01:00", "--yes"]
    assert main(argv) == 0  # 09:00 UTC: the 31st's message is not older
    assert capsys.readouterr().out == (
        "deleted 2 message(s) of alice created before 2026-01-31T09:00:00Z\n"
    )
    assert _texts("alice") == ["alice 31", "alice feb"]
    assert _texts("bob") == ["bob 10", "bob 20", "bob 31", "bob feb"]
    db = _home_db()
    try:
        [entry] = [e for e in AuditLog(db).entries() if e.action == "messages.purge"]
        assert (entry.actor, entry.target) == ("cli", "alice")
        assert entry.details == {"before": "2026-01-31T09:00:00Z", "deleted": 2}
    finally:
        db.close()
    assert main(["audit", "verify"]) == 0
    capsys.readouterr()
    assert main(["claw", "messages", "alice", "--purge-before", "2026-01-01"]) == 0
    assert "nothing to delete" in capsys.readouterr().out


@pytest.mark.parametrize("when", ["yesterday", "2026-13-01", "31/01/2026", ""])
def test_purge_refuses_a_bad_date_in_one_line(
    home: Path, capsys: pytest.CaptureFixture[str], when: str
) -> None:
    _seed_messages()
    assert main(["claw", "messages", "alice", "--purge-before", when, "--yes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: invalid date {when!r} — give an ISO")
    assert len(_texts("alice")) == 4
    db = _home_db()
    try:
        assert AuditLog(db).entries() == []
    finally:
        db.close()


# -- the request pacer ---------------------------------------------------------


def test_a_pacer_lets_a_burst_through_then_spaces_requests_at_its_rate() -> None:
    pacer = Pacer(per_second=10, burst=3)
    waits = [pacer.delay("alice", 100.0) for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.1, 0.2, 0.3])
    # Another claw has its own turn.
    assert pacer.delay("bob", 100.0) == 0.0


def test_a_pacer_forgives_a_quiet_claw_and_never_books_the_past() -> None:
    pacer = Pacer(per_second=10, burst=2)
    for _ in range(5):
        pacer.delay("alice", 0.0)
    # Long after its queue has drained the claw has its whole burst again.
    assert [pacer.delay("alice", 60.0) for _ in range(3)] == pytest.approx([0.0, 0.0, 0.1])


def test_a_pacer_needs_a_rate_and_a_burst() -> None:
    for rate, burst in ((0, 1), (-1, 1), (1, 0)):
        with pytest.raises(ValueError):
            Pacer(per_second=rate, burst=burst)
