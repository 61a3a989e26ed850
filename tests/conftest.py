"""Suite-wide hooks.

In CI (``CI=true``) a skipped test is a failure: a test that was skipped did
not run, and a green run that silently skipped the channel or lifecycle tests
(a missing sshd, qemu-img, ...) proves nothing. A test that may legitimately
skip in CI says so with ``@pytest.mark.skip_ok_in_ci(reason="...")`` — keep
those rare, and give the reason.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Generator

import pytest

# tests.support.browser: the browser fixtures (browser_session, browser,
# page_events, page) for every test; chromium starts only when a test asks.
pytest_plugins = ["pytester", "tests.support.browser"]

ALLOW_MARKER = "skip_ok_in_ci"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason pytest recorded for a skip ("Skipped: " prefix removed)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


def _fail_skip(report: pytest.TestReport | pytest.CollectReport, note: str = "") -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"skipped in CI: {_skip_reason(report)} — a test skipped in CI did not run{note}"
    )


def _allowed(item: pytest.Item) -> tuple[bool, str]:
    marker = item.get_closest_marker(ALLOW_MARKER)
    if marker is None:
        return False, ""
    reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
    if not isinstance(reason, str) or not reason.strip():
        return False, f" (@pytest.mark.{ALLOW_MARKER} needs reason=... to allow a skip in CI)"
    return True, ""


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # An xfail ran (and failed as expected): that is not a skip.
    if report.skipped and not hasattr(report, "wasxfail") and in_ci():
        allowed, note = _allowed(item)
        if not allowed:
            _fail_skip(report, note)
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    # A whole module skipped while it is imported (pytest.skip(allow_module_level=True),
    # a module-level importorskip) never reaches the runtest hooks: caught here.
    report = yield
    if report.skipped and in_ci():
        _fail_skip(report)
    return report


@pytest.fixture(autouse=True)
def _sigpipe_ignored() -> Generator[None, None, None]:
    """Keep SIGPIPE ignored in the test process, as Python starts it.

    ``appliance.cli.main`` restores SIGPIPE's default (so `clawden … | head`
    exits quietly), and tests call ``main()`` in-process: without this, a
    later test whose server writes to a socket the client already closed
    kills the whole pytest run (exit 141) instead of getting EPIPE.
    """
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
