"""The append-only, hash-chained audit log.

Three layers, each catching what the one before cannot:

1. triggers abort any UPDATE or DELETE on ``audit_log`` (accidents);
2. the hash chain (see ``audit_chain``) exposes edited, removed or reordered
   rows, even by someone who drops the triggers;
3. the head file, rewritten on every append, records the last ``seq`` and
   hash, so removing the *last* rows, or rewriting the whole chain, shows too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from appliance.core.errors import InvalidInput
from appliance.store.audit_chain import GENESIS, canonical_json, check_chain, entry_hash
from appliance.store.tx import before_commit, locked, transaction, utc_now

# Details are for humans reading the log later; a secret here would be copied
# into every export and backup. Matching is on key names, at any depth.
SECRET_KEYS = frozenset({"private_key", "api_key", "token", "password", "secret"})

# A verification of a heavily damaged log should stay readable.
MAX_PROBLEMS = 50


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts: str
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class AuditVerification:
    ok: bool
    count: int
    problems: list[str] = field(default_factory=list)
    # The newest entry's hash: an operator can note it somewhere else (paper,
    # another machine) to detect a later rewrite of the whole log.
    head_hash: str | None = None


@dataclass(frozen=True)
class AuditQuery:
    """Which entries to list (every field optional): exact actor and target,
    actions starting with ``action_prefix``, ``since`` ≤ ts < ``until`` (ISO
    text, compared as the stored UTC timestamps), seq below ``before_seq``."""

    actor: str | None = None
    action_prefix: str | None = None
    target: str | None = None
    since: str | None = None
    until: str | None = None
    before_seq: int | None = None


@dataclass(frozen=True)
class _Head:
    count: int
    hash: str


def _refuse_secrets(value: Any, path: str = "details") -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            if str(key).lower() in SECRET_KEYS:
                raise InvalidInput(
                    f"refusing to write {path}.{key} to the audit log: it looks like a secret",
                    "log a fingerprint or an id instead of the secret itself",
                )
            _refuse_secrets(inner, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_secrets(item, path)


def _to_entry(row: dict[str, Any]) -> AuditEntry:
    return AuditEntry(
        seq=int(row["seq"]),
        ts=row["ts"],
        actor=row["actor"],
        action=row["action"],
        target=row["target"],
        details=json.loads(row["details"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


class AuditLog:
    def __init__(self, db: Database, head_file: Path | None = None) -> None:
        self.db = db
        self.head_file = head_file

    def append(
        self, actor: str, action: str, target: str, details: dict[str, Any] | None = None
    ) -> AuditEntry:
        """Add an entry at the end of the chain and return it.

        Reading the tail and inserting happen in one ``BEGIN IMMEDIATE``
        transaction: a second writer waits, then builds on this entry, so
        concurrent processes can never fork the chain.
        """
        details = dict(details or {})
        _refuse_secrets(details)
        try:
            details_json = canonical_json(details)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(
                f"audit details for {action!r} are not plain JSON ({exc})",
                "pass only str, int, float, bool, None, lists and dicts with str keys",
            ) from None
        with transaction(self.db):
            tail = self._tail()
            seq = 1 if tail is None else tail.count + 1
            prev_hash = GENESIS if tail is None else tail.hash
            ts = utc_now()
            digest = entry_hash(seq, ts, actor, action, target, details, prev_hash)
            self.db.execute(
                "INSERT INTO audit_log (seq, ts, actor, action, target, details, prev_hash, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, ts, actor, action, target, details_json, prev_hash, digest),
            )
            if self.head_file is not None and self._head_matches(tail):
                # Written before COMMIT, under the write lock, so heads are
                # published in chain order even with several writers.
                before_commit(self.db, self._write_head)
        return AuditEntry(seq, ts, actor, action, target, details, prev_hash, digest)

    def entries(self, since_seq: int = 0, limit: int | None = None) -> list[AuditEntry]:
        """Entries with ``seq > since_seq``, oldest first."""
        with locked(self.db):
            rows = self.db.query(
                "SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?",
                [since_seq, -1 if limit is None else limit],
            )
            return [_to_entry(row) for row in rows]

    def search(self, query: AuditQuery, limit: int = 100) -> list[AuditEntry]:
        """Entries matching ``query``, newest first, at most ``limit``.

        Walks the primary key downwards and stops at ``limit`` matches, so a
        page of a 100k-row log costs a few milliseconds unless the filters
        match almost nothing."""
        where: list[str] = ["1"]
        args: list[str | int] = []
        for column, value in (("actor", query.actor), ("target", query.target)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if query.action_prefix:
            # substr, not LIKE: LIKE is case-insensitive and treats _ and % as wildcards.
            where.append("substr(action, 1, ?) = ?")
            args += [len(query.action_prefix), query.action_prefix]
        if query.since:
            where.append("ts >= ?")
            args.append(query.since)
        if query.until:
            where.append("ts < ?")
            args.append(query.until)
        if query.before_seq is not None:
            where.append("seq < ?")
            args.append(query.before_seq)
        with locked(self.db):
            rows = self.db.query(
                f"SELECT * FROM audit_log WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",  # noqa: S608
                [*args, limit],
            )
            return [_to_entry(row) for row in rows]

    def last_seq(self) -> int:
        with locked(self.db):
            tail = self._tail()
        return 0 if tail is None else tail.count

    def verify(self) -> AuditVerification:
        """Check the whole chain (and the head file, if there is one).

        Runs under the write lock so no append is half-done (head file
        written, row not yet committed) while we compare the two.
        """
        with transaction(self.db):
            report = check_chain(
                self.db.query("SELECT * FROM audit_log ORDER BY seq"), self._seq_of_hash
            )
            problems = report.problems
            if self.head_file is not None:
                problems += self._check_head(report.last_seq, report.last_hash)
        if len(problems) > MAX_PROBLEMS:
            extra = len(problems) - MAX_PROBLEMS
            problems = [*problems[:MAX_PROBLEMS], f"... and {extra} more problems"]
        return AuditVerification(
            ok=not problems, count=report.count, problems=problems, head_hash=report.last_hash
        )

    def reseal(self, actor: str, reason: str) -> AuditEntry:
        """Accept the log as it is now and restart head tracking from here.

        After a tamper report (or a crash between writing the head file and
        committing) the head file is deliberately left alone by ``append`` so
        the evidence stays; an admin who has looked into it calls this. The
        reseal itself is audited, with what the old head said.
        """
        with transaction(self.db):
            old = self._read_head()
            tail = self._tail()
            entry = self.append(
                actor,
                "audit.reseal",
                "audit_log",
                {
                    "reason": reason,
                    "old_head_count": None if old is None else old.count,
                    "old_head_hash": None if old is None else old.hash,
                    "log_count": 0 if tail is None else tail.count,
                },
            )
            if self.head_file is not None:
                before_commit(self.db, self._write_head)
        return entry

    # -- internals ---------------------------------------------------------

    def _tail(self) -> _Head | None:
        rows = list(self.db.query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"))
        return _Head(int(rows[0]["seq"]), rows[0]["hash"]) if rows else None

    def _seq_of_hash(self, digest: str) -> int | None:
        rows = list(self.db.query("SELECT seq FROM audit_log WHERE hash = ?", [digest]))
        return int(rows[0]["seq"]) if rows else None

    def _head_matches(self, tail: _Head | None) -> bool:
        """Whether the head file still describes the tail we are extending.

        If not, rows were removed or rewritten since the last append; moving
        the head forward would hide that, so the stale head is kept as
        evidence until an admin calls ``reseal``.
        """
        head = self._read_head()
        if head is None:
            # No head file yet: fine for a brand-new log, suspicious otherwise.
            return tail is None
        return tail is not None and head == tail

    def _read_head(self) -> _Head | None:
        if self.head_file is None:
            return None
        try:
            data = json.loads(self.head_file.read_text(encoding="utf-8"))
            return _Head(int(data["count"]), str(data["hash"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            # Unreadable is as bad as wrong: report it, never guess.
            return _Head(-1, "")

    def _write_head(self) -> None:
        assert self.head_file is not None
        tail = self._tail()
        assert tail is not None  # only called after an append, inside its transaction
        head = {"count": tail.count, "hash": tail.hash}
        self.head_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.head_file.with_name(f".{self.head_file.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (canonical_json(head) + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.head_file)

    def _check_head(self, last_seq: int, last_hash: str | None) -> list[str]:
        assert self.head_file is not None
        head = self._read_head()
        if head is None:
            if last_seq == 0:
                return []
            return [f"head file {self.head_file} is missing (the log has {last_seq} rows)"]
        if head.count < 0:
            return [f"head file {self.head_file} is unreadable"]
        if last_seq < head.count:
            return [
                f"the last {head.count - last_seq} rows were removed "
                f"(head file says count {head.count})"
            ]
        if last_seq > head.count:
            return [
                f"{last_seq - head.count} rows were added without updating the head file "
                f"(head file says count {head.count})"
            ]
        if head.count > 0 and head.hash != last_hash:
            return [f"head hash mismatch: row {last_seq} does not match the head file"]
        return []
