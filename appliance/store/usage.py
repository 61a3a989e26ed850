"""What each claw spent on models: one row per gateway call in ``llm_calls``.

The gateway writes a row after every forwarded call (streamed or not) and
reads period totals before the next one, so budgets survive controller
restarts. ``clawden llm usage`` (``appliance.cli.llm``) reports from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlite_utils import Database

from appliance.core.llm_policy import Period, Totals, period_start
from appliance.store.tx import locked, to_iso, transaction

Clock = Callable[[], datetime]


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
