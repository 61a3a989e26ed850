"""The audit log's hash chain: how an entry is hashed, and how a sequence of
stored rows is checked. Pure functions, no database, so the rules are easy to
read and to test.

Each entry's hash covers its own sequence number and its predecessor's hash,
so editing, removing or moving any row breaks either that row's hash or the
next row's link. Removing rows at the *end* leaves a valid, shorter chain;
only an outside record of the head (``AuditLog``'s head file) catches that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64
"""The ``prev_hash`` of the first entry."""


def canonical_json(value: Any) -> str:
    """One byte-exact encoding per value: sorted keys, no whitespace, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def entry_hash(
    seq: int,
    ts: str,
    actor: str,
    action: str,
    target: str,
    details: dict[str, Any],
    prev_hash: str,
) -> str:
    payload = {
        "seq": seq,
        "ts": ts,
        "actor": actor,
        "action": action,
        "target": target,
        "details": details,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def row_hash(row: dict[str, Any]) -> str | None:
    """The hash a stored row *should* have, or None if it cannot even be
    decoded (its details are not JSON: also an edit)."""
    try:
        details = json.loads(row["details"])
    except (TypeError, ValueError):
        return None
    return entry_hash(
        row["seq"],
        row["ts"],
        row["actor"],
        row["action"],
        row["target"],
        details,
        row["prev_hash"],
    )


@dataclass
class ChainReport:
    count: int = 0
    last_seq: int = 0
    last_hash: str | None = None
    problems: list[str] = field(default_factory=list)


def check_chain(
    rows: Iterable[dict[str, Any]], seq_of_hash: Callable[[str], int | None]
) -> ChainReport:
    """Check rows given in ascending ``seq`` order.

    ``seq_of_hash`` finds which row (if any) stores a given hash; it tells a
    row that was *moved* (its link points at some other existing row) from one
    that was edited.
    """
    report = ChainReport()
    prev: dict[str, Any] | None = None
    prev_moved = False
    for row in rows:
        seq = int(row["seq"])
        report.count += 1
        expected = report.last_seq + 1
        after_gap = False
        if seq < expected:
            # Only possible for seq <= 0: the primary key orders the rest.
            report.problems.append(f"rows out of order at {seq} (sequence numbers start at 1)")
            continue
        if seq > expected:
            report.problems.append(_gap(expected, seq))
            after_gap = True

        want_prev = GENESIS if prev is None else prev["hash"]
        self_ok = row_hash(row) == row["hash"]
        # After a gap the true predecessor is gone: the gap is the finding.
        link_ok = after_gap or row["prev_hash"] == want_prev
        moved = False
        if self_ok and not link_ok and not prev_moved:
            # (A moved predecessor already explains a broken link.)
            report.problems.append(_broken(seq, prev))
        elif not self_ok and link_ok:
            report.problems.append(f"row {seq} was edited (hash mismatch)")
        elif not self_ok:
            points_at = 0 if row["prev_hash"] == GENESIS else seq_of_hash(row["prev_hash"])
            prev_seq = 0 if prev is None else int(prev["seq"])
            if points_at is not None and points_at != prev_seq:
                # Intact entry, wrong place: its link names another row.
                moved = True
                report.problems.append(f"rows out of order at {seq}")
            else:
                report.problems.append(
                    f"row {seq} was edited (hash mismatch, and its prev_hash does not match "
                    f"{'the genesis value' if prev is None else f'row {prev_seq}'})"
                )
        prev, prev_moved = row, moved
        report.last_seq, report.last_hash = seq, row["hash"]
    return report


def _gap(expected: int, seq: int) -> str:
    if seq - expected == 1:
        return f"row {expected} is missing (gap {expected - 1}→{seq})"
    return f"rows {expected}–{seq - 1} are missing (gap {expected - 1}→{seq})"


def _broken(seq: int, prev: dict[str, Any] | None) -> str:
    if prev is None:
        return f"chain broken at {seq} (prev_hash is not the genesis value)"
    return f"chain broken at {seq} (prev_hash does not match row {prev['seq']})"
