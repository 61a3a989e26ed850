"""`clawden schedule add|list|rm` and `clawden claw messages` on a real SQLite
home: what they print, what they store, and that bad input changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cli import main
from appliance.config import Settings
from appliance.schedule.jobs import ScheduleRepository, ensure_heartbeat
from appliance.store import Store, open_db
from appliance.store.messages import MessageRepository
from tests.unit.test_schedule_store import add_claw


@pytest.fixture
def home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    db = open_db(Settings.from_env().db_path)
    add_claw(db)
    ensure_heartbeat(Store(db), "alice")
    db.close()
    return home


def _jobs() -> list[tuple[str, str, bool]]:
    db = open_db(Settings.from_env().db_path)
    try:
        return [(j.kind.value, j.spec, j.enabled) for j in ScheduleRepository(db).list("alice")]
    finally:
        db.close()


def test_add_list_rm_round_trip(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schedule", "add", "alice", "cron", "30 7 * * 1-5", "Morning briefing"]) == 0
    out = capsys.readouterr().out
    assert "job 2: cron 30 7 * * 1-5 (Europe/Berlin) for alice" in out
    assert "next run: " in out

    assert main(["schedule", "list", "alice"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:4] == ["ID", "CLAW", "KIND", "SPEC"]
    assert any("heartbeat" in line and "every=30m" in line for line in listing[1:])
    assert any("Morning briefing" in line for line in listing[1:])

    assert main(["schedule", "rm", "2"]) == 0
    assert "removed job 2" in capsys.readouterr().out
    # The operator's rm of a heartbeat keeps its settings and turns it off.
    assert main(["schedule", "rm", "1"]) == 0
    assert "turned off" in capsys.readouterr().out
    assert _jobs() == [("heartbeat", "every=30m", False)]
    # ... and `schedule add NAME heartbeat` brings it back with new settings.
    assert main(["schedule", "add", "alice", "heartbeat", "every=1h active=08:00-22:00"]) == 0
    assert _jobs() == [("heartbeat", "every=1h active=08:00-22:00", True)]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["schedule", "add", "alice", "cron", "61 * * * *", "x"], "cron"),
        (["schedule", "add", "alice", "weekly", "1d", "x"], "unknown job kind 'weekly'"),
        (["schedule", "add", "alice", "every", "2h", ""], "the job has no text"),
        (["schedule", "add", "alice", "at", "2001-01-01T00:00", "x"], "in the past"),
        (["schedule", "add", "alice", "every", "2h", "x", "--tz", "Mars/Olympus"], "Mars"),
        (["schedule", "add", "nobody", "every", "2h", "x"], "no claw named 'nobody'"),
        (["schedule", "list", "nobody"], "no claw named 'nobody'"),
        (["schedule", "rm", "99"], "no scheduled job 99"),
        (["claw", "messages", "nobody"], "no claw named 'nobody'"),
        (["claw", "messages", "alice", "--limit", "0"], "invalid limit 0"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    before = _jobs()
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and " — " in err[0]
    assert expected in err[0]
    assert _jobs() == before


def test_messages_are_shown_escaped_oldest_first(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["claw", "messages", "alice"]) == 0
    assert "no messages for alice yet" in capsys.readouterr().out
    db = open_db(Settings.from_env().db_path)
    repo = MessageRepository(db)
    repo.add("alice", "in", "cli", "operator", "hello", kind="chat", delivered=True)
    repo.add("alice", "out", "schedule", "alice", "rain at 5\x1b[2J pm", kind="heartbeat")
    db.close()
    assert main(["claw", "messages", "alice"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out  # a claw cannot drive the operator's terminal
    assert out.index("hello") < out.index("rain at 5")
    assert "[heartbeat/schedule] (not delivered yet)" in out
