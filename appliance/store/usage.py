"""What each claw spent on models: one row per gateway call in ``llm_calls``,
and the worst case of each call still in flight in ``llm_reservations``.

Before forwarding a call the gateway *reserves* (``reserve``): in one write
transaction it reads what the claw used this day and month and what its
calls in flight reserved, lets the policy decide, and inserts the new
reservation. ``BEGIN IMMEDIATE`` serialises that read-decide-write across the
gateway's threads (and processes), so two calls can never both see the same
remaining budget. ``settle`` then replaces the reservation by the call's row
in ``llm_calls``, again in one transaction. Reservations expire: one left by
a crashed controller stops counting at ``expires_at``, or at once when the
next gateway finds its owner process gone (``release_orphans``).

Budgets survive controller restarts because they are read from here.
``clawden llm usage`` (``appliance.cli.llm``) reports from ``llm_calls``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from sqlite_utils import Database

from appliance.core.llm_policy import Ledger, Period, Totals, period_start
from appliance.store.tx import locked, to_iso, transaction

Clock = Callable[[], datetime]
R = TypeVar("R")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class UsageRow:
    claw: str
    period: str  # "2025-01-31" or "2025-01"
    totals: Totals
    unpriced_calls: int


class UsageRepository:
    def __init__(self, db: Database, clock: Clock = _utc_now) -> None:
        self.db = db
        self.clock = clock

    def record(
        self,
        claw: str,
        model: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_usd: float = 0.0,
        status: str = "ok",
        duration_ms: int = 0,
        note: str | None = None,
        ts: datetime | None = None,
    ) -> None:
        with transaction(self.db):
            self.db.execute(
                "INSERT INTO llm_calls (claw, ts, model, prompt_tokens, completion_tokens,"
                " cost_usd, status, duration_ms, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    claw,
                    to_iso(ts or self.clock()),
                    model,
                    max(0, int(prompt_tokens)),
                    max(0, int(completion_tokens)),
                    max(0.0, float(cost_usd)),
                    status,
                    max(0, int(duration_ms)),
                    note,
                ),
            )

    # ---- reservations ------------------------------------------------------------
    def reserve(
        self,
        claw: str,
        model: str,
        *,
        tokens: int,
        cost_usd: float,
        owner: int,
        now: datetime,
        expires_at: datetime,
        admit: Callable[[Ledger], R | None],
    ) -> int | R:
        """Reserve ``tokens`` and ``cost_usd`` for one call of ``claw`` if
        ``admit`` (given today's and this month's usage and the unexpired
        reservations) returns None; return the reservation's id, or what
        ``admit`` returned instead. Expired reservations are dropped first."""
        with transaction(self.db):
            self.db.execute("DELETE FROM llm_reservations WHERE expires_at <= ?", (to_iso(now),))
            day, month = self.period_totals(claw, now)
            refusal = admit(Ledger(day, month, self.pending(claw, now)))
            if refusal is not None:
                return refusal
            cursor = self.db.execute(
                "INSERT INTO llm_reservations (claw, model, tokens, cost_usd, owner, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    claw,
                    model,
                    max(0, int(tokens)),
                    max(0.0, float(cost_usd)),
                    int(owner),
                    to_iso(now),
                    to_iso(expires_at),
                ),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def settle(
        self,
        reservation: int,
        claw: str,
        model: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_usd: float = 0.0,
        status: str = "ok",
        duration_ms: int = 0,
        note: str | None = None,
        ts: datetime | None = None,
    ) -> None:
        """Replace a reservation by the call's real usage, atomically: no
        reader ever sees the call counted twice or not at all."""
        with transaction(self.db):
            self.release(reservation)
            self.record(
                claw,
                model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost_usd=cost_usd,
                status=status,
                duration_ms=duration_ms,
                note=note,
                ts=ts,
            )

    def release(self, reservation: int) -> None:
        with transaction(self.db):
            self.db.execute("DELETE FROM llm_reservations WHERE id = ?", (reservation,))

    def release_orphans(self, alive: Callable[[int], bool]) -> int:
        """Drop the reservations of owner processes ``alive`` says are gone;
        how many were dropped."""
        with transaction(self.db):
            owners = [
                int(r[0])
                for r in self.db.execute("SELECT DISTINCT owner FROM llm_reservations").fetchall()
            ]
            gone = [o for o in owners if not alive(o)]
            dropped = 0
            for owner in gone:
                dropped += self.db.execute(
                    "DELETE FROM llm_reservations WHERE owner = ?", (owner,)
                ).rowcount
        return dropped

    def pending(self, claw: str, now: datetime) -> Totals:
        """The unexpired reservations of ``claw``: requests = calls in flight."""
        with locked(self.db):
            row = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(tokens), 0), COALESCE(SUM(cost_usd), 0.0)"
                " FROM llm_reservations WHERE claw = ? AND expires_at > ?",
                (claw, to_iso(now)),
            ).fetchone()
        return Totals(int(row[0]), int(row[1]), 0, float(row[2]))

    # ---- reading -------------------------------------------------------------------
    def totals(self, claw: str, since: datetime) -> Totals:
        """Everything ``claw`` used from ``since`` on (inclusive)."""
        with locked(self.db):
            row = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0),"
                " COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cost_usd), 0.0)"
                " FROM llm_calls WHERE claw = ? AND ts >= ?",
                (claw, to_iso(since)),
            ).fetchone()
        return Totals(int(row[0]), int(row[1]), int(row[2]), float(row[3]))

    def period_totals_by_claw(self, now: datetime) -> dict[str, tuple[Totals, Totals]]:
        """(today, this month) for every claw that used anything this month,
        in one query (the dashboard shows them all at once)."""
        day, month = to_iso(period_start(now, "day")), to_iso(period_start(now, "month"))
        with locked(self.db):
            rows = self.db.execute(
                "SELECT claw,"
                " SUM(ts >= ?), SUM(CASE WHEN ts >= ? THEN prompt_tokens ELSE 0 END),"
                " SUM(CASE WHEN ts >= ? THEN completion_tokens ELSE 0 END),"
                " SUM(CASE WHEN ts >= ? THEN cost_usd ELSE 0.0 END),"
                " COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd)"
                " FROM llm_calls WHERE ts >= ? GROUP BY claw",
                (day, day, day, day, month),
            ).fetchall()
        return {
            str(r[0]): (
                Totals(int(r[1]), int(r[2]), int(r[3]), float(r[4])),
                Totals(int(r[5]), int(r[6]), int(r[7]), float(r[8])),
            )
            for r in rows
        }

    def per_day(self, claw: str, since: datetime) -> dict[str, Totals]:
        """``claw``'s use per UTC day ("2026-03-01") from ``since`` on; days
        without a call are absent."""
        with locked(self.db):
            rows = self.db.execute(
                "SELECT substr(ts, 1, 10), COUNT(*), COALESCE(SUM(prompt_tokens), 0),"
                " COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cost_usd), 0.0)"
                " FROM llm_calls WHERE claw = ? AND ts >= ? GROUP BY 1 ORDER BY 1",
                (claw, to_iso(since)),
            ).fetchall()
        return {r[0]: Totals(int(r[1]), int(r[2]), int(r[3]), float(r[4])) for r in rows}

    def period_totals(self, claw: str, now: datetime) -> tuple[Totals, Totals]:
        """(today, this month) for ``claw``, UTC."""
        return (
            self.totals(claw, period_start(now, "day")),
            self.totals(claw, period_start(now, "month")),
        )

    def report(
        self, claw: str | None, period: Period, now: datetime | None = None
    ) -> list[UsageRow]:
        """Per claw, the current ``period`` (UTC day or month) so far."""
        now = now or self.clock()
        start = period_start(now, period)
        label = f"{start:%Y-%m-%d}" if period == "day" else f"{start:%Y-%m}"
        sql = (
            "SELECT claw, COUNT(*), COALESCE(SUM(prompt_tokens), 0),"
            " COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cost_usd), 0.0),"
            " COALESCE(SUM(note LIKE 'no price%'), 0) FROM llm_calls WHERE ts >= ?"
        )
        args: list[str] = [to_iso(start)]
        if claw is not None:
            sql += " AND claw = ?"
            args.append(claw)
        sql += " GROUP BY claw ORDER BY claw"
        with locked(self.db):
            rows = self.db.execute(sql, args).fetchall()
        return [
            UsageRow(r[0], label, Totals(int(r[1]), int(r[2]), int(r[3]), float(r[4])), int(r[5]))
            for r in rows
        ]
