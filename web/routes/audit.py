"""The audit log for the admin: newest first, a page at a time, filtered by
actor, action prefix, target and dates; the chain's verification on top."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from appliance.core.errors import InvalidInput
from appliance.store import AuditEntry, AuditQuery
from web.auth import AdminUser, Csrf
from web.panel import panel_of
from web.templating import page

router = APIRouter()
PAGE_SIZE = 100
Filter = Annotated[str, Query(max_length=200)]


@dataclass(frozen=True)
class AuditRow:
    entry: AuditEntry
    details: str  # pretty JSON: hostile text, rendered escaped with | visible


def _day(name: str, text: str) -> date | None:
    if not text.strip():
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(f"{name} must be a date like 2026-03-01", "pick a day") from None


def _query(actor: str, action: str, target: str, since: str, until: str, before: str) -> AuditQuery:
    first, last = _day("from", since), _day("to", until)
    if before.strip() and not before.strip().isdigit():
        raise InvalidInput("before_seq must be a whole number", "use the page links")
    return AuditQuery(
        actor=actor.strip() or None,
        action_prefix=action.strip() or None,
        target=target.strip() or None,
        since=None if first is None else first.isoformat(),
        # "to" includes that whole day.
        until=None if last is None else (last + timedelta(days=1)).isoformat(),
        before_seq=int(before) if before.strip() else None,
    )


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    user: AdminUser,
    actor: Filter = "",
    action: Filter = "",
    target: Filter = "",
    since: Filter = "",
    until: Filter = "",
    before_seq: Filter = "",
) -> HTMLResponse:
    panel = panel_of(request)
    query = _query(actor, action, target, since, until, before_seq)
    entries = panel.store.audit.search(query, PAGE_SIZE)
    filters = {"actor": actor, "action": action, "target": target, "since": since, "until": until}
    older = None
    if len(entries) == PAGE_SIZE:
        older = "/audit?" + urlencode({**filters, "before_seq": entries[-1].seq})
    rows = [AuditRow(e, json.dumps(e.details, indent=1, ensure_ascii=False)) for e in entries]
    context = {
        "rows": rows,
        "filters": filters,
        "older": older,
        "newest": "/audit?" + urlencode(filters) if query.before_seq else None,
        "check": panel.audit_check.for_page(panel.store.audit, panel.clock),
        "last_seq": panel.store.audit.last_seq(),
    }
    return page(request, "audit.html", context)


@router.post("/audit/verify", response_class=HTMLResponse, dependencies=[Csrf])
def audit_verify(request: Request, user: AdminUser) -> HTMLResponse:
    panel = panel_of(request)
    check = panel.audit_check.run(panel.store.audit, panel.clock)
    return page(
        request, "_audit_check.html", {"check": check, "last_seq": check.verification.count}
    )
