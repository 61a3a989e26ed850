"""tests/conftest.py: under CI=true a skipped test fails the run, unless it is
marked ``skip_ok_in_ci(reason=...)``. Checked on a small inner suite run by
pytester with the suite's own hooks and marker registration."""

from __future__ import annotations

import pytest

INNER = """
import pytest

def test_runs():
    pass

def test_skips_at_run_time():
    pytest.skip("no widget here")

@pytest.mark.skipif(True, reason="no gadget here")
def test_skipif_mark():
    pass

@pytest.fixture
def gizmo():
    pytest.skip("no gizmo here")

def test_fixture_skips(gizmo):
    pass

@pytest.mark.skip_ok_in_ci(reason="the allowance under test")
def test_allowed_to_skip():
    pytest.skip("allowed skip")

@pytest.mark.skip_ok_in_ci
def test_allowance_without_a_reason():
    pytest.skip("unexplained skip")

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_failure():
    assert False
"""

MODULE_SKIP = """
import pytest

pytest.skip("this whole module needs a frobnicator", allow_module_level=True)

def test_never_collected():
    pass
"""

MESSAGE = "skipped in CI: {} — a test skipped in CI did not run"


@pytest.fixture
def inner(pytester: pytest.Pytester, request: pytest.FixtureRequest) -> pytest.Pytester:
    # The marker as pyproject.toml registers it; --strict-markers below makes
    # an unregistered (or misspelt) marker an error in the inner run.
    (line,) = [m for m in request.config.getini("markers") if m.startswith("skip_ok_in_ci(")]
    pytester.makeini(f"[pytest]\nmarkers =\n    {line}\n")
    pytester.makeconftest(
        "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport\n"
    )
    return pytester


def test_in_ci_every_unexpected_skip_fails(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    inner.makepyfile(test_inner=INNER)
    result = inner.runpytest("--strict-markers", "-rA")
    # Skips in setup (a skipif mark, a skipping fixture) become setup errors,
    # a skip in the test body a failure; the marked test and the xfail are kept.
    result.assert_outcomes(passed=1, failed=2, errors=2, skipped=1, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    for reason in ("no widget here", "no gadget here", "no gizmo here"):
        assert MESSAGE.format(reason) in out
    assert (
        MESSAGE.format("unexplained skip")
        + (" (@pytest.mark.skip_ok_in_ci needs reason=... to allow a skip in CI)")
        in out
    )
    result.stdout.fnmatch_lines(["SKIPPED *allowed skip*"])
    assert MESSAGE.format("allowed skip") not in out


@pytest.mark.parametrize("value", [None, "", "false", "1"])
def test_outside_ci_skips_stay_skips(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    inner.makepyfile(test_inner=INNER)
    result = inner.runpytest("--strict-markers")
    result.assert_outcomes(passed=1, skipped=5, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    assert "skipped in CI" not in result.stdout.str()


@pytest.mark.parametrize("ci", [True, False])
def test_a_module_skipped_at_import_fails_in_ci(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: bool
) -> None:
    if ci:
        monkeypatch.setenv("CI", "TRUE")  # the value is not case-sensitive
    else:
        monkeypatch.delenv("CI", raising=False)
    inner.makepyfile(test_module_skip=MODULE_SKIP, test_other="def test_ok():\n    pass\n")
    result = inner.runpytest("--strict-markers")
    if ci:
        result.assert_outcomes(errors=1)
        assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error stops the run
        assert MESSAGE.format("this whole module needs a frobnicator") in result.stdout.str()
    else:
        result.assert_outcomes(passed=1, skipped=1)
        assert result.ret == pytest.ExitCode.OK
