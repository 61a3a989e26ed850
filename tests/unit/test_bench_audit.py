"""The image audit's pure parts: Lynis' report format and the guest command line."""

from __future__ import annotations

import shlex

from bench.audit_image import LYNIS_ARGS, ROOT_CMDLINE, ROOT_RUNNER, parse_report

REPORT = """\
# Lynis Report
report_version_major=1
lynis_version=3.0.8
hardening_index=71
lynis_tests_done=220
tests_executed=BOOT-5122|KRNL-5820|
tests_skipped=FIRE-4513|MALW-3280|
warning[]=FIRE-4512|iptables module(s) loaded, but no rules active|-|-|
suggestion[]=SSH-7408|Consider hardening SSH configuration|AllowTcpForwarding (set YES to NO)|-|
suggestion[]=HRDN-7230|Harden the system by installing at least one malware scanner|-|-|
"""


def test_parse_report_reads_index_findings_and_skips() -> None:
    report = parse_report(REPORT)
    assert report.hardening_index == 71
    assert report.tests_performed == 220
    assert report.skipped == ["FIRE-4513", "MALW-3280"]
    assert report.warnings == [
        {
            "test": "FIRE-4512",
            "text": "iptables module(s) loaded, but no rules active",
            "details": "",
            "solution": "",
        }
    ]
    assert [s["test"] for s in report.suggestions] == ["SSH-7408", "HRDN-7230"]
    assert report.suggestions[0]["details"] == "AllowTcpForwarding (set YES to NO)"
    assert report.as_dict()["lynis_version"] == "3.0.8"


def test_parse_report_tolerates_an_empty_or_partial_report() -> None:
    report = parse_report("garbage\nhardening_index=\nwarning[]=X-1\n")
    assert report.hardening_index is None
    assert report.warnings == [{"test": "X-1", "text": "", "details": "", "solution": ""}]


def test_lynis_never_updates_or_uploads() -> None:
    # The guest has no network; the run must not even try (and no "--upload").
    assert "--upload" not in LYNIS_ARGS
    assert "update" not in LYNIS_ARGS
    assert LYNIS_ARGS in ROOT_RUNNER


def test_root_command_line_is_one_kernel_parameter_per_option() -> None:
    # The kernel splits its command line on spaces outside double quotes.
    params = shlex.split(ROOT_CMDLINE.replace("'", "\\'"))
    assert params[0].startswith("systemd.run=/bin/sh -c")
    assert "systemd.wants=kernel-command-line.service" in params
