"""HEARTBEAT.md: what counts as a task, and which replies are HEARTBEAT_OK."""

from __future__ import annotations

import pytest

from appliance.core.heartbeat import (
    FakeHeartbeatSource,
    heartbeat_is_actionable,
    is_heartbeat_ok,
)

TEMPLATE = """\
# HEARTBEAT.md

<!-- Keep this file empty (or only headings and comments) to skip heartbeat
     model calls. Add tasks below when you want the claw to check something
     periodically. -->

## Daily checks

- [ ]
- [ ]

## Weekly
*
1.
---
"""

DONE_LIST = """\
# Today
- [x] water the plants
- [X] call grandma
>
"""

WITH_TASK = TEMPLATE + "- [ ] Remind Alice about the dentist at 15:00\n"

PARAGRAPH = """\
# Heartbeat
Check whether the school sent a new newsletter and summarise it.
"""

UNTERMINATED = """\
# Notes
<!-- drafts:
- [ ] buy a new router
"""


@pytest.mark.parametrize(
    "text", ["", "\n\n  \n", TEMPLATE, DONE_LIST, UNTERMINATED, "Title\n=====\n"]
)
def test_only_headings_comments_and_empty_or_done_items_are_not_actionable(text: str) -> None:
    assert heartbeat_is_actionable(text) is False


@pytest.mark.parametrize(
    "text",
    [
        WITH_TASK,
        PARAGRAPH,
        "- [ ] ping the backup server",
        "* check the weather",
        "2. tidy the downloads folder",
        "> - [ ] quoted task still counts",
        "<!-- note --> look at the calendar",
        "- - [ ] nested item with text",
        "**Every morning:** read the news",
    ],
)
def test_any_open_task_text_is_actionable(text: str) -> None:
    assert heartbeat_is_actionable(text) is True


def test_nested_empty_markers_are_not_tasks() -> None:
    assert heartbeat_is_actionable("- - [ ]\n  - [ ]\n") is False


@pytest.mark.parametrize(
    "reply",
    [
        "HEARTBEAT_OK",
        "  HEARTBEAT_OK\n",
        "**HEARTBEAT_OK**",
        "`HEARTBEAT_OK`",
        "HEARTBEAT_OK.",
        "_HEARTBEAT_OK_",
        "heartbeat_ok",
    ],
)
def test_heartbeat_ok_alone_is_recognised(reply: str) -> None:
    assert is_heartbeat_ok(reply) is True


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "HEARTBEAT_OK, but the disk is 95% full",
        "The dentist is at 15:00. HEARTBEAT_OK",
        "HEARTBEAT",
        "OK",
        "HEARTBEAT_OKAY",
    ],
)
def test_anything_more_is_forwarded(reply: str) -> None:
    assert is_heartbeat_ok(reply) is False


def test_fake_source_returns_files_and_counts_reads() -> None:
    source = FakeHeartbeatSource({"alice": "# x"})
    assert source.read("alice") == "# x"
    assert source.read("bob") is None
    assert source.reads == ["alice", "bob"]
