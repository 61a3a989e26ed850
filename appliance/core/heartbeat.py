"""Is a heartbeat worth a model call, and is a reply worth forwarding? (pure)

A claw's heartbeat reads its checklist, HEARTBEAT.md, in the workspace. Most
of the time that file is a template with nothing to do, and a model call to
learn so would cost a full context every 30 minutes per claw. So the host
reads the file first and calls no model unless it holds real task text.

What does **not** count as a task (everything else does):

* blank lines;
* HTML comments ``<!-- … -->``, across lines, and an unterminated one to the
  end of the file (it hides the rest from a markdown reader too);
* headings: ATX (``# Daily``, ``## Checks ##``) and setext (a line of text
  over a line of only ``=`` or ``-``); thematic breaks (``---``, ``* * *``);
* list items with no text: ``-``, ``*``, ``+``, ``1.``, ``- [ ]``, ``- [x]``;
* **checked** items, ``- [x] water the plants``: done, nothing left to do;
* empty blockquote markers (``>``).

A plain paragraph ("Check the weather before 8") is a task: the file is an
instruction to the claw, not only a checklist.

A claw answers a heartbeat with the token ``HEARTBEAT_OK`` when nothing needs
the owner's attention; such a reply is never forwarded to the owner.
"""

from __future__ import annotations

import re
from typing import Protocol

HEARTBEAT_OK = "HEARTBEAT_OK"

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_HEADING = re.compile(r"^#{1,6}(?:\s|$)")
_RULE = re.compile(r"^(?:=+|(?:-\s*)+|(?:\*\s*)+|(?:_\s*)+)$")
# A list marker, then optionally a checkbox, then the item's text.
_ITEM = re.compile(r"^(?:[-*+]|\d{1,9}[.)])(?:\s+|$)(?:\[([ xX]?)\](?:\s+|$))?(.*)$")
_SETEXT = re.compile(r"^(?:=+|-+)$")
_BLOCKQUOTE = re.compile(r"^(?:>\s*)+")
# Markdown and sentence punctuation a model may wrap the token in.
_WRAPPING = " \t\r\n*_~`'\".!:;#>-()[]"


def heartbeat_is_actionable(text: str) -> bool:
    """True when HEARTBEAT.md holds any open task text (see the module doc)."""
    lines = _COMMENT.sub("\n", text).splitlines()
    for index, line in enumerate(lines):
        following = lines[index + 1].strip() if index + 1 < len(lines) else ""
        if _SETEXT.match(following) and not _ITEM.match(line.strip()):
            continue  # the text of a setext heading ("Title" over "=====")
        if _is_task(line):
            return True
    return False


def _is_task(raw: str) -> bool:
    line = _BLOCKQUOTE.sub("", raw.strip()).strip()
    if not line or _HEADING.match(line) or _RULE.match(line):
        return False
    item = _ITEM.match(line)
    if item is None:
        return True
    box, rest = item.group(1), item.group(2).strip()
    if box is not None and box.lower() == "x":
        return False
    # The item's own text decides; recursing handles nested markers ("- - [ ]").
    return bool(rest) and _is_task(rest)


def is_heartbeat_ok(reply: str) -> bool:
    """True when ``reply`` is just HEARTBEAT_OK, maybe wrapped in whitespace or
    markdown/punctuation (``**HEARTBEAT_OK**``, ```HEARTBEAT_OK```, ``HEARTBEAT_OK.``).
    Anything more (``HEARTBEAT_OK, but the disk is full``) is forwarded."""
    return reply.strip(_WRAPPING).upper() == HEARTBEAT_OK


class HeartbeatSource(Protocol):
    """Reads a claw's HEARTBEAT.md; None when there is none (or it cannot be read)."""

    def read(self, claw: str) -> str | None: ...


class FakeHeartbeatSource:
    """HEARTBEAT.md contents per claw, in memory, counting reads."""

    def __init__(self, files: dict[str, str] | None = None) -> None:
        self.files = dict(files or {})
        self.reads: list[str] = []

    def read(self, claw: str) -> str | None:
        self.reads.append(claw)
        return self.files.get(claw)
