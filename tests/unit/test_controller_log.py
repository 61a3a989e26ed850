"""The controller's log: a per-claw budget (a claw that makes the host log
cannot flood it) and a rotating file under ``CLAWDEN_HOME/logs``."""

from __future__ import annotations

import logging
import stat
import sys
import threading
from collections.abc import Iterator
from logging.handlers import RotatingFileHandler
from pathlib import Path

import pytest

from appliance import app
from appliance.channel.logbudget import ClawLogBudget, serving_claw
from appliance.config import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("test.controller_log")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger
    logger.handlers.clear()


def _budgeted(logger: logging.Logger, budget: ClawLogBudget, count: int = 1) -> tuple[Collect, ...]:
    handlers = tuple(Collect() for _ in range(count))
    for handler in handlers:
        handler.addFilter(budget)
        logger.addHandler(handler)
    # The summary line is logged by logbudget's own logger; send it here too.
    summary = logging.getLogger("appliance.channel.logbudget")
    for handler in handlers:
        summary.addHandler(handler)
    return handlers


@pytest.fixture(autouse=True)
def _no_summary_handlers() -> Iterator[None]:
    yield
    logging.getLogger("appliance.channel.logbudget").handlers.clear()


def test_a_flood_from_one_claw_is_cut_to_the_budget_and_summed_up(
    logger: logging.Logger,
) -> None:
    clock = Clock()
    budget = ClawLogBudget(lines=5, window_s=60, clock=clock)
    [out] = _budgeted(logger, budget)
    with serving_claw("alice"):
        for n in range(1000):
            logger.warning("bad request %d", n)
    logger.warning("the controller's own line")  # not a claw's: never dropped
    logger.warning("bob's line", extra={"claw": "bob"})  # bob has his own budget
    assert out.messages == [
        *(f"bad request {n}" for n in range(5)),
        "the controller's own line",
        "bob's line",
    ]
    clock.now += 61
    with serving_claw("alice"):
        logger.warning("a minute later")
    assert out.messages[-2:] == [
        "claw alice: 995 log lines suppressed (at most 5 per claw per 60 s)",
        "a minute later",
    ]


def test_tracebacks_are_limited_too(logger: logging.Logger) -> None:
    budget = ClawLogBudget(lines=10, tracebacks=1, clock=Clock())
    [out] = _budgeted(logger, budget)
    with serving_claw("alice"):
        for _ in range(3):
            try:
                raise ZeroDivisionError("boom")
            except ZeroDivisionError:
                logger.exception("handler failed")
    assert [r.exc_info is not None for r in out.records] == [True, False, False]
    assert out.messages[1] == (
        "handler failed (ZeroDivisionError; traceback suppressed: this claw already had one logged)"
    )


def test_handlers_sharing_a_budget_count_each_line_once(logger: logging.Logger) -> None:
    budget = ClawLogBudget(lines=3, clock=Clock())
    first, second = _budgeted(logger, budget, count=2)
    with serving_claw("alice"):
        for n in range(6):
            logger.warning("line %d", n)
    assert first.messages == second.messages == ["line 0", "line 1", "line 2"]


def test_the_claw_is_the_one_this_thread_serves(logger: logging.Logger) -> None:
    budget = ClawLogBudget(lines=1, clock=Clock())
    [out] = _budgeted(logger, budget)

    def serve(name: str) -> None:
        with serving_claw(name):
            logger.warning("from %s", name)
            logger.warning("again from %s", name)

    threads = [threading.Thread(target=serve, args=(n,)) for n in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(out.messages) == ["from alice", "from bob"]
    logger.warning("outside")  # the context ended with the block
    assert out.messages[-1] == "outside"


def test_serve_logs_to_a_rotating_file_under_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path / "home", libvirt_uri="test:///default")
    root = logging.Logger("test.root", logging.WARNING)
    budget = app.controller_logging(settings, root)
    try:
        [to_stderr, to_file] = root.handlers
        assert isinstance(to_file, RotatingFileHandler)
        assert to_file.baseFilename == str(tmp_path / "home" / "logs" / "controller.log")
        assert (to_file.maxBytes, to_file.backupCount) == (10 * 1024 * 1024, 5)
        assert type(to_stderr) is logging.StreamHandler and to_stderr.stream is sys.stderr
        assert all(budget in h.filters for h in root.handlers)
        assert stat.S_IMODE(settings.logs_dir.stat().st_mode) == 0o700
        root.warning("hello from the controller")
        to_file.flush()
        assert "WARNING test.root: hello from the controller" in (
            settings.controller_log.read_text()
        )
        # It rotates: at most 5 old files beside the current one.
        to_file.maxBytes = 200
        for n in range(100):
            root.warning("line %d", n)
        names = sorted(p.name for p in settings.logs_dir.iterdir())
        assert names == ["controller.log"] + [f"controller.log.{i}" for i in range(1, 6)]
    finally:
        for handler in root.handlers:
            handler.close()


def test_recent_warnings_keep_the_newest_and_a_few_per_claw(tmp_path: Path) -> None:
    from appliance.channel.logring import WarningRing

    settings = Settings(home=tmp_path / "home", libvirt_uri="test:///default")
    root = logging.Logger("test.ring", logging.INFO)
    ring = WarningRing(capacity=5, per_claw=2)
    budget = app.controller_logging(settings, root, ring=ring)
    try:
        assert ring in root.handlers and budget in ring.filters
        root.info("not a warning")
        root.warning("controller %d", 1)
        with serving_claw("alice"):
            for n in range(4):
                root.warning("alice %d", n)
        root.error("controller %d", 2)
        lines = ring.recent()
        assert [line.split(": ", 1)[1] for line in lines] == [
            "controller 2", "alice 3", "alice 2", "controller 1"
        ]  # fmt: skip
        assert " ERROR test.ring: " in lines[0]
        for n in range(3, 9):
            root.warning("controller %d", n)
        assert [line.split(": ", 1)[1] for line in ring.recent()] == [
            f"controller {n}" for n in range(8, 3, -1)
        ]
    finally:
        for handler in root.handlers:
            handler.close()
