"""Conversation history on the data disk: append-only JSONL, trimmed without forgetting.

One file per conversation, ``<state_dir>/conversations/<name>.jsonl``. Every
message is one line ``{"t": time, "m": message}``, written and fsynced before
the loop goes on, so a killed agent loses at most the line being written (a
torn last line is ignored on load). Trimming never rewrites the file: it
appends ``{"t": time, "trim": n}`` meaning "the first n messages are out of
context", so the full record stays on disk for export and audit.

Trimming drops whole *turns*, never single messages: a user message with
every assistant message and tool result after it. Dropping half of one could
leave a tool result without its call, which the API rejects.

Before anything is dropped, the caller's ``remember`` step must succeed — it
asks the model to extract durable facts and writes them to today's memory
note. If it fails, nothing is dropped (users of other claws lose memory at
compaction; ours must not).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

Message = dict[str, Any]
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
INTERRUPTED = "error: interrupted (the agent stopped before this tool finished)"


class HistoryError(Exception):
    pass


def message_chars(message: Message) -> int:
    """The size used for the context budget: JSON characters (~4 per token)."""
    return len(json.dumps(message, ensure_ascii=False))


class History:
    def __init__(self, state_dir: Path, name: str, clock: Callable[[], datetime]) -> None:
        if not NAME_RE.match(name):
            raise HistoryError(f"{name!r} is not a conversation name")
        self.path = state_dir / "conversations" / f"{name}.jsonl"
        self.clock = clock
        self.all: list[Message] = []  # every message ever recorded
        self.stamps: list[str] = []  # when each of ``all`` was recorded (ISO time)
        self.start = 0  # messages before this index are out of context
        self._load()

    @property
    def messages(self) -> list[Message]:
        """The messages in context, oldest first."""
        return self.all[self.start :]

    def _load(self) -> None:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash mid-write
            if isinstance(record, dict) and isinstance(record.get("m"), dict):
                self.all.append(record["m"])
                self.stamps.append(str(record.get("t", "")))
            elif isinstance(record, dict) and isinstance(record.get("trim"), int):
                self.start = max(self.start, min(record["trim"], len(self.all)))
        self._repair()

    def _repair(self) -> None:
        """Answer tool calls a crash left without results, so the API accepts the history.

        Results are appended right after their calls within one delivery (and
        deliveries are serialised by a lock), so unanswered calls can only be
        the tail of the file: answering them by appending keeps it append-only.
        """
        answered = {m.get("tool_call_id") for m in self.all if m.get("role") == "tool"}
        for index in range(len(self.all) - 1, -1, -1):
            if self.all[index].get("role") != "tool":
                break
        else:
            return
        last = self.all[index]
        if last.get("role") != "assistant":
            return
        for call in last.get("tool_calls") or []:
            if call.get("id") not in answered:
                self.append(_tool_msg(str(call.get("id")), INTERRUPTED))

    def _write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        line = json.dumps(record, ensure_ascii=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, message: Message) -> None:
        stamp = self.clock().isoformat()
        self._write({"t": stamp, "m": message})
        self.all.append(message)
        self.stamps.append(stamp)

    def start_fresh(self) -> None:
        """Put every message recorded so far out of context (a heartbeat starts
        from nothing). Written as a trim record, so the file stays append-only
        and the earlier messages stay on disk."""
        if self.start < len(self.all):
            self._write({"t": self.clock().isoformat(), "trim": len(self.all)})
            self.start = len(self.all)

    def size(self) -> int:
        return sum(message_chars(m) for m in self.messages)

    def units(self) -> list[tuple[int, int]]:
        """[start, end) indexes into ``messages`` of each turn, oldest first: a user
        message and everything up to the next one (so tool calls stay with their
        results, and the context always starts with a user message)."""
        msgs, out, begin = self.messages, [], 0
        for i in range(1, len(msgs) + 1):
            if i == len(msgs) or msgs[i].get("role") == "user":
                out.append((begin, i))
                begin = i
        return out

    def trim(
        self,
        budget: int,
        target: int,
        protect_from: int,
        remember: Callable[[list[Message]], None],
    ) -> int:
        """If the context exceeds ``budget`` characters, drop the oldest units until it
        fits ``target`` — never those at or after ``protect_from`` (an index into
        ``all``: the turn in progress). ``remember`` sees the dropped messages first;
        if it raises, nothing is dropped. Returns how many messages were dropped."""
        size = self.size()
        if size <= budget:
            return 0
        cut = 0
        for begin, end in self.units():
            if size <= target or self.start + end > protect_from:
                break
            size -= sum(message_chars(m) for m in self.messages[begin:end])
            cut = end
        if cut == 0:
            return 0
        remember(self.messages[:cut])  # first: raising here keeps every turn
        self._write({"t": self.clock().isoformat(), "trim": self.start + cut})
        self.start += cut
        return cut


def _tool_msg(call_id: str, content: str) -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def transcript(messages: list[Message], limit: int = 60_000) -> str:
    """The dropped turns as plain text for the fact-extraction call."""
    lines: list[str] = []
    for m in messages:
        role = str(m.get("role"))
        if m.get("content"):
            lines.append(f"{role}: {m['content']}")
        for call in m.get("tool_calls") or []:
            fn = call.get("function") or {}
            lines.append(f"{role} called {fn.get('name')}({fn.get('arguments')})")
    text = "\n".join(lines)
    return text if len(text) <= limit else text[: limit // 2] + "\n[...]\n" + text[-limit // 2 :]
