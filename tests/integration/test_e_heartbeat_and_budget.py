"""The claw's own life in a real VM: heartbeats from the host's scheduler,
budgets enforced by the gateway, and state that survives restarts.

Heartbeats are driven by the real controller's scheduler: the test only sets
alice's heartbeat to every minute and waits for the beat it is after, then
puts the default back so later tests meet a quiet claw.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from appliance.core.llm_policy import period_start
from appliance.guest.heartbeat import HEARTBEAT_TOOLS, OPEN_TOOL
from appliance.llm.scripted import ScriptedModelServer
from appliance.store import open_db
from appliance.store.tx import from_iso, to_iso, utc_now
from appliance.store.usage import UsageRepository
from tests.integration.conftest import Env, RunningController, scripted_llm

pytestmark = pytest.mark.integration

CLAW = "alice"
WORKSPACE = "/data/workspace"
# Generous: one scheduler pass (10 s) after a one-minute interval, plus an
# agent run under TCG; a bound on waiting, not a timing assertion.
BEAT_WAIT = 360.0
QUIET_BEATS = 3  # beats in a row whose requests are compared
QUIET = "# Heartbeat\n\n<!-- Add a line here for the claw to act on every heartbeat. -->\n- [ ]\n"


def _db(env: Env) -> sqlite3.Connection:
    db = sqlite3.connect(env.home / "clawden.db", timeout=30)
    db.row_factory = sqlite3.Row
    return db


def _query(env: Env, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    db = _db(env)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _heartbeat(env: Env) -> sqlite3.Row:
    (row,) = _query(env, "SELECT * FROM schedules WHERE claw = ? AND kind = 'heartbeat'", (CLAW,))
    return row


SKIPPED = "skipped: nothing actionable"


def _wait_for_beat(env: Env, after: str) -> str:
    """The status of alice's first heartbeat run that started after ``after``."""
    return _wait_for_run(env, lambda run_at: run_at > after)


def _wait_for_run(env: Env, new: Callable[[str], bool], past_skipped: bool = False) -> str:
    """The status of the first ended run whose ``last_run_at`` is ``new``
    (with ``past_skipped``, the first that was not skipped as quiet)."""
    deadline = time.monotonic() + BEAT_WAIT
    while time.monotonic() < deadline:
        row = _heartbeat(env)
        status = str(row["last_status"])
        ended = row["last_run_at"] and new(row["last_run_at"]) and status != "running"
        if ended and not (past_skipped and status.startswith(SKIPPED)):
            return status
        time.sleep(2)
    raise AssertionError(f"no heartbeat ran within {BEAT_WAIT:.0f} s: {dict(_heartbeat(env))}")


def _set_checklist(env: Env, text: str) -> str:
    """Write HEARTBEAT.md between beats; the run to wait for beats after.

    A beat is claimed first and reads HEARTBEAT.md a few seconds later (an
    exec in the guest): one claimed before the write could read the new text
    and act. So wait until no beat is running, note the last run, then write:
    every later run reads either text (quiet ones are skipped:
    ``_wait_for_acting_beat``). The last run, not the clock: a run's
    ``last_run_at`` is its scheduler pass's start, which can be seconds
    before the claim, so a beat claimed just after the write can carry an
    earlier time than the write's (it once acted unseen and used up the
    scenario, and the beat waited for found it exhausted)."""
    deadline = time.monotonic() + BEAT_WAIT
    while (row := _heartbeat(env))["last_status"] == "running":
        assert time.monotonic() < deadline, f"a heartbeat ran for over {BEAT_WAIT:.0f} s"
        time.sleep(1)
    _write(env, "HEARTBEAT.md", text)
    return str(row["last_run_at"] or "")


def _wait_for_acting_beat(env: Env, last_run: str) -> str:
    """The status of the first heartbeat run after ``last_run`` that acted."""
    return _wait_for_run(env, lambda run_at: run_at != last_run, past_skipped=True)


def _now_iso() -> str:
    return utc_now()


def _write(env: Env, rel: str, text: str) -> None:
    # The text travels as an argument (exec quotes each one for the guest's shell).
    script = f'printf "%s" "$1" > {WORKSPACE}/{rel}'
    env.run("claw", "exec", CLAW, "--", "sh", "-c", script, "write", text)


def _read(env: Env, path: str) -> str:
    return env.run("claw", "exec", CLAW, "--", "cat", path).stdout


def _out_messages(env: Env) -> list[tuple[str, str]]:
    rows = _query(
        env,
        "SELECT kind, text FROM messages WHERE claw = ? AND direction = 'out' ORDER BY id",
        (CLAW,),
    )
    return [(r["kind"], r["text"]) for r in rows]


def _chats(upstream: ScriptedModelServer) -> list[dict[str, Any]]:
    return [r for r in upstream.requests if r["path"] == "/v1/chat/completions"]


def _tool_names(chat: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in chat["body"].get("tools") or []]


def _usage_calls(env: Env) -> int:
    (row,) = _query(env, "SELECT count(*) AS n FROM llm_calls WHERE claw = ?", (CLAW,))
    return int(row["n"])


@pytest.fixture
def fast_heartbeat(clawden_env: Env, two_claws: tuple[str, str]) -> Iterator[None]:
    clawden_env.run("schedule", "add", CLAW, "heartbeat", "every=1m")
    try:
        yield
    finally:
        _write(clawden_env, "HEARTBEAT.md", QUIET)
        clawden_env.run("schedule", "add", CLAW, "heartbeat", "")  # back to the defaults


def test_an_idle_heartbeat_calls_no_model(clawden_env: Env, fast_heartbeat: None) -> None:
    # A delivery has happened (test_d), so alice has her starter workspace;
    # its HEARTBEAT.md is a template with nothing to do.
    starter = _read(clawden_env, f"{WORKSPACE}/HEARTBEAT.md")
    assert starter.strip(), "the starter workspace has a HEARTBEAT.md"
    never = {"steps": [{"name": "never", "repeat": True, "reply": {"content": "called!"}}]}
    with scripted_llm(clawden_env, never) as upstream:
        since = _now_iso()
        assert _wait_for_beat(clawden_env, since) == "skipped: nothing actionable"
        _write(clawden_env, "HEARTBEAT.md", QUIET)  # and an explicit "empty" checklist
        assert _wait_for_beat(clawden_env, _now_iso()) == "skipped: nothing actionable"
        assert upstream.requests == []


def test_a_heartbeat_with_a_task_uses_a_tool_memory_and_messages(
    clawden_env: Env, fast_heartbeat: None
) -> None:
    today = datetime.now().astimezone().strftime("%Y-%m-%d")  # the guest runs in UTC too
    scenario = {
        "steps": [
            {
                "name": "check the disk",
                "match": {"last_user_contains": "Heartbeat"},
                "reply": {
                    "tool_calls": [
                        {
                            "name": "shell",
                            "arguments": {
                                "command": f"df -P /data > {WORKSPACE}/disk-report.txt && echo ok"
                            },
                        },
                        {
                            "name": "memory_append",
                            "arguments": {"text": "Checked the data disk for Alice (heartbeat)."},
                        },
                    ]
                },
            },
            {
                "name": "tell the owner",
                "match": {"last_role": "tool"},
                "reply": {
                    "tool_calls": [
                        {
                            "name": "send_message",
                            "arguments": {"text": "Alice, your disk report is ready."},
                        }
                    ]
                },
            },
            {
                "name": "done",
                "match": {"last_role": "tool"},
                "reply": {"content": "Disk checked and Alice told."},
            },
        ]
    }
    calls_before = _usage_calls(clawden_env)
    messages_before = _out_messages(clawden_env)
    with scripted_llm(clawden_env, scenario) as upstream:
        last_run = _set_checklist(clawden_env, "# Heartbeat\n- [ ] Check the disk and tell Alice\n")
        status = _wait_for_acting_beat(clawden_env, last_run)
        said = _out_messages(clawden_env)[len(messages_before) :]
        assert status == "ok: reply stored for the owner (reply, 3 model calls)", (status, said)
        # The next beat may already be calling (its scenario is used up): the
        # acting beat's calls are the first three.
        chats = _chats(upstream)[:3]
        assert len(chats) == 3
        # The checklist reached the model (the heartbeat's light context).
        assert "Check the disk and tell Alice" in str(chats[0]["body"]["messages"])
        # A light call: two messages and one tool; the beat's small set once it acts.
        assert [len(c["body"]["messages"]) for c in chats] == [2, 5, 7]
        assert _tool_names(chats[0]) == [OPEN_TOOL]
        assert _tool_names(chats[1]) == _tool_names(chats[2]) == list(HEARTBEAT_TOOLS)

    # The tool ran inside the VM; the memory note is on the data disk.
    assert "/data" in _read(clawden_env, f"{WORKSPACE}/disk-report.txt")
    note = _read(clawden_env, f"{WORKSPACE}/memory/{today}.md")
    assert "Checked the data disk for Alice (heartbeat)." in note
    # The host holds the message the claw sent and its final reply, and the usage.
    new = _out_messages(clawden_env)[len(messages_before) :]
    assert ("chat", "Alice, your disk report is ready.") in new
    assert ("heartbeat", "Disk checked and Alice told.") in new
    assert _usage_calls(clawden_env) == calls_before + 3

    # Nothing to report: HEARTBEAT_OK is not forwarded to the owner. Several
    # beats in a row each carry the same light request: no earlier beat (only
    # the last report, quoted once), one tool, the checklist and the identity.
    ok = {"steps": [{"name": "ok", "repeat": True, "reply": {"content": "HEARTBEAT_OK"}}]}
    with scripted_llm(clawden_env, ok) as upstream:
        before = _out_messages(clawden_env)
        for _beat in range(QUIET_BEATS):
            status = _wait_for_beat(clawden_env, _now_iso())
            assert status.startswith("ok: HEARTBEAT_OK, not forwarded"), status
        quiet = _chats(upstream)
    assert _out_messages(clawden_env) == before
    assert len(quiet) >= QUIET_BEATS
    for chat in quiet:
        messages = chat["body"]["messages"]
        assert [m["role"] for m in messages] == ["system", "user"]
        assert _tool_names(chat) == [OPEN_TOOL]
        assert "## HEARTBEAT.md" in messages[0]["content"]
        assert "Check the disk and tell Alice" in messages[0]["content"]
        assert "## IDENTITY.md" in messages[0]["content"]
        assert messages[1]["content"].count("Disk checked and Alice told.") == 1
        assert "df -P" not in str(messages)  # the acting beat's tool calls stay out


def _utc_day() -> datetime:
    """The start of today as the gateway counts budgets (its clock: UTC now)."""
    return period_start(datetime.now(UTC), "day")


def _spend_today(env: Env, tokens: int) -> None:
    """Record ``tokens`` of alice's spending now, as the gateway records a
    call: the same repository, the same clock. (The controller has the store
    open too; SQLite serialises the two writers.)"""
    db = open_db(env.home / "clawden.db")
    try:
        UsageRepository(db).record(
            CLAW, "budget-test", prompt_tokens=tokens, note="spent by the budget test"
        )
    finally:
        db.close()


def test_budget_exhaustion_is_a_clear_reply_and_the_next_day_resumes(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    answer = {"steps": [{"name": "answer", "repeat": True, "reply": {"content": "Hello again!"}}]}
    policy = "[policy]\ndaily_tokens = 1000\n"
    with scripted_llm(clawden_env, answer, policy=policy) as upstream:
        # The day's budget, used up here (not by whatever earlier tests spent).
        # If midnight UTC passes between spending and asking, the spending
        # became yesterday's and the call may go through: once more, then.
        for _attempt in range(2):
            day, chats_before = _utc_day(), len(_chats(upstream))
            _spend_today(clawden_env, 1000)
            proc = clawden_env.run("claw", "say", CLAW, "are you there?", "--timeout", "600")
            if _utc_day() == day:
                break
        else:
            raise AssertionError("the UTC day changed during both attempts")
        assert "daily budget of 1000 tokens" in proc.stdout, proc.stdout + proc.stderr
        assert "status budget" in proc.stderr
        # Refused by the gateway, before the upstream.
        assert len(_chats(upstream)) == chats_before

        # The agent survived: the same claw answers once the period rolls
        # over (simulated by moving all of alice's usage a day back, so none
        # is today's — also if midnight passes in between).
        db = _db(clawden_env)
        try:
            for row in db.execute("SELECT id, ts FROM llm_calls WHERE claw = ?", (CLAW,)):
                yesterday = to_iso(from_iso(row["ts"]) - timedelta(days=1))
                db.execute("UPDATE llm_calls SET ts = ? WHERE id = ?", (yesterday, row["id"]))
            db.commit()
        finally:
            db.close()
        proc = clawden_env.run("claw", "say", CLAW, "and now?", "--timeout", "600")
        assert proc.stdout.strip() == "Hello again!"
        assert len(_chats(upstream)) == chats_before + 1


def test_restarts_lose_no_schedule_message_or_memory(
    clawden_env: Env, controller: RunningController, two_claws: tuple[str, str]
) -> None:
    clawden_env.run("schedule", "add", CLAW, "cron", "0 9 * * *", "Morning briefing", "--tz", "UTC")
    _write(clawden_env, "MEMORY.md", "# Memory\n- Alice likes tulips.\n")

    def snapshot() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], str]:
        jobs = _query(clawden_env, "SELECT id, kind, spec, tz, text, enabled FROM schedules")
        msgs = _query(clawden_env, "SELECT id, direction, kind, text FROM messages")
        memory = _read(clawden_env, f"{WORKSPACE}/MEMORY.md")
        return [tuple(r) for r in jobs], [tuple(r) for r in msgs], memory

    before = snapshot()
    assert any(job[4] == "Morning briefing" for job in before[0])
    assert before[1], "earlier tests stored messages"

    controller.restart()
    clawden_env.run("claw", "exec", CLAW, "--", "true")  # the channel is back
    assert snapshot() == before

    clawden_env.run("claw", "stop", CLAW, timeout=300)
    clawden_env.run("claw", "start", CLAW, "--timeout", "400", timeout=600)
    assert snapshot() == before

    # The restarted scheduler fires alice's heartbeat again.
    clawden_env.run("schedule", "add", CLAW, "heartbeat", "every=1m")
    try:
        assert _wait_for_beat(clawden_env, _now_iso()) == "skipped: nothing actionable"
    finally:
        clawden_env.run("schedule", "add", CLAW, "heartbeat", "")
    job = next(j for j in before[0] if j[4] == "Morning briefing")
    clawden_env.run("schedule", "rm", str(job[0]))
