"""The host API a claw reaches on its own ``127.0.0.1:7701``.

Every route acts for the claw whose SSH transport carried the request — the
``ClawIdentity`` the service registry bound to that transport — and nothing in
a request can name another claw: a claw sees and changes only its own
messages and jobs. Shapes are in docs/agent.md ("What the host must provide");
every error is ``{"error": {"message", "code"}}``, and its message is shown to
the claw's model as is, so it says what to do differently.

Approvals are real: a request is queued for the admin (rules in
appliance/core/approvals.py, rows in appliance/store/approvals.py) and the
claw long-polls for the decision; requests and their outcome are in the audit
log. Its action and details are untrusted and only ever stored as
data, then escaped wherever they are shown.

Quotas (appliance/core/quotas.py) bound what a claw can make the host store:
its messages (a rate, bytes a day, an undelivered backlog) and its approval
requests (5 pending, 20 an hour). Over a quota the claw gets a 429 with
``Retry-After`` and a message saying what to do; the refusal is counted in
memory and logged at most once a minute per claw, never stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from appliance.channel.forwarding import ClawIdentity
from appliance.core.approvals import DEFAULT_TIMEOUT_S, MAX_WAIT_S, Approval
from appliance.core.errors import (
    ClawdenError,
    Conflict,
    InvalidInput,
    NotFound,
    OverQuota,
    Unavailable,
)
from appliance.core.messages import check_text
from appliance.core.policy import ALLOW, ASK, POLICY_ACTOR, outcome
from appliance.core.quotas import DEFAULT_QUOTAS, MessageRate, Pacer, Quotas, Refusals
from appliance.core.schedule import CreatedBy, Job
from appliance.core.textsafe import printable
from appliance.schedule.jobs import schedule_add, schedule_rm
from appliance.services.http import HttpRequest, HttpResponse, HttpService, Route, long_poll
from appliance.store import Store

log = logging.getLogger(__name__)

HOST_API_PORT = 7701
# A claw's own messages go to its owner's usual channel, which the channels
# issue will resolve; until then they are stored under this label.
OWNER_CHANNEL = "default"


def error(status: int, message: str, code: str) -> HttpResponse:
    return HttpResponse.json(status, {"error": {"message": message, "code": code}})


_STATUS_OF: tuple[tuple[type[ClawdenError], int, str], ...] = (
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (InvalidInput, 400, "invalid_request"),
    (Unavailable, 503, "unavailable"),
)


def _from_clawden_error(exc: ClawdenError) -> HttpResponse:
    status, code = next(
        ((status, code) for cls, status, code in _STATUS_OF if isinstance(exc, cls)),
        (400, "refused"),
    )
    message = f"{exc.what} — {exc.fix}" if exc.fix else exc.what
    return error(status, message, code)


class _BadBody(Exception):
    pass


def _no_constant(name: str) -> Any:
    raise _BadBody(f"the body is not JSON ({name} is not a JSON number)")


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body or b"{}", parse_constant=_no_constant)
        # A lone surrogate ("\ud800") parses but cannot be stored or sent on.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeError:
        raise _BadBody("the body has a string that is not valid Unicode") from None
    except ValueError:
        raise _BadBody("the body is not JSON") from None
    except RecursionError:
        raise _BadBody("the body is nested too deeply") from None
    if not isinstance(data, dict):
        raise _BadBody("the body must be a JSON object")
    return data


def _field(body: Mapping[str, Any], key: str, kind: type, optional: bool = False) -> Any:
    value = body.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _BadBody(f"{key!r} must be a {kind.__name__}")
    return value


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind.value,
        "spec": job.spec,
        "tz": job.tz,
        "text": job.text,
        "created_by": job.created_by.value,
        "enabled": job.enabled,
        "next_run_at": _iso(job.next_run_at if job.enabled else None),
    }


Handler = Callable[[ClawIdentity, dict[str, Any]], HttpResponse]


class QuotaGuard:
    """What the routes share about quotas: the limits, the in-memory message
    rate, the refusal counter, and the clock (the store's)."""

    def __init__(self, store: Store, quotas: Quotas, refusals: Refusals) -> None:
        self.quotas = quotas
        self.clock = store.clock
        self.refusals = refusals
        self.message_rate = MessageRate(quotas.messages_per_minute, quotas.message_burst)

    def count(self, claw: ClawIdentity, quota: str) -> None:
        """Count one refusal; log about them at most once a minute per claw."""
        line = self.refusals.count(claw.name, quota, self.clock().timestamp())
        if line is not None:
            log.warning("%s", line)

    def refused(self, claw: ClawIdentity, exc: OverQuota) -> HttpResponse:
        """A 429 for the claw; a count, and now and then a log line, for us."""
        self.count(claw, exc.quota)
        response = error(429, str(exc), "over_quota")
        headers = {**response.headers, "Retry-After": str(exc.retry_after_s)}
        return HttpResponse(response.status, response.body, headers)


def _json_route(handler: Handler, guard: QuotaGuard) -> Route:
    """Parse the body, run ``handler``, turn expected failures into 4xx JSON.
    Anything else is the HTTP layer's: a 500 and one log line."""

    def route(claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
        try:
            return handler(claw, _body(request) if request.method == "POST" else {})
        except _BadBody as exc:
            return error(400, str(exc), "bad_request")
        except OverQuota as exc:
            return guard.refused(claw, exc)
        except ClawdenError as exc:
            return _from_clawden_error(exc)

    return route


class HostApi:
    """The store-backed routes, on the controller's ``Store``."""

    def __init__(self, store: Store, guard: QuotaGuard) -> None:
        self.store = store
        self.messages = store.messages
        self.schedules = store.schedules
        self.skills = store.skills
        self.guard = guard

    def send_message(self, claw: ClawIdentity, body: dict[str, Any]) -> HttpResponse:
        text = _field(body, "text", str)
        check_text(text)
        if not text.strip():
            raise _BadBody("the message is empty")
        # The rate first, in memory: a flood is turned away without touching
        # the database. A message then refused for bytes or backlog has still
        # used its turn, so retrying a full backlog in a loop is throttled too.
        now = self.guard.clock()
        self.guard.message_rate.admit(claw.name, now.timestamp())
        message = self.messages.add_from_claw(
            claw.name, OWNER_CHANNEL, text, kind="chat", quotas=self.guard.quotas, now=now
        )
        return HttpResponse.json(200, {"id": message.id, "delivered": message.delivered})

    def list_schedules(self, claw: ClawIdentity, body: dict[str, Any]) -> HttpResponse:
        jobs = self.schedules.list(claw.name)
        return HttpResponse.json(200, {"schedules": [job_json(j) for j in jobs]})

    def create_schedule(self, claw: ClawIdentity, body: dict[str, Any]) -> HttpResponse:
        job = schedule_add(
            self.store,
            claw.name,
            _field(body, "kind", str),
            _field(body, "spec", str),
            _field(body, "tz", str, optional=True),
            _field(body, "text", str),
            created_by=CreatedBy.CLAW.value,
        )
        return HttpResponse.json(201, {"schedule": job_json(job)})

    def delete_schedule(self, claw: ClawIdentity, body: dict[str, Any]) -> HttpResponse:
        job_id = _field(body, "id", int)
        job = self.schedules.get(job_id)
        if job is None or job.claw != claw.name:
            # Another claw's job is "not found" too: its existence is not ours to learn.
            return error(404, f"you have no scheduled job {job_id}", "not_found")
        schedule_rm(self.store, job_id, claw=claw.name)
        return HttpResponse.json(200, {"deleted": True})

    def list_skills(self, claw: ClawIdentity, body: dict[str, Any]) -> HttpResponse:
        """The skills the owner installed here: the guest indexes only these,
        and only while their files still hash to ``sha256``."""
        rows = self.skills.list(claw.name)
        skills = [{"name": s.name, "sha256": s.content_hash} for s in rows]
        return HttpResponse.json(200, {"skills": skills})


def _number(body: Mapping[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadBody(f"{key!r} must be a number of seconds")
    return float(value)


def _approval_json(approval: Approval) -> dict[str, Any]:
    return {"id": approval.id, "status": approval.status, "reason": approval.reason}


class ApprovalRoutes:
    """``/v1/approvals``: queue a request for the admin, long-poll its decision.
    Each request is audited through the store's one ``AuditLog`` (with its
    head file), in the same transaction that records it."""

    def __init__(
        self, store: Store, guard: QuotaGuard, notify: Callable[[Approval], object] | None = None
    ) -> None:
        self.store = store
        self.approvals = store.approvals
        self.audit = store.audit
        self.guard = guard
        # Told of each request left for a person (``ApprovalMailer``), after
        # it is committed; not of those the policy or a grant decided.
        self.notify = notify

    def request(self, claw: ClawIdentity, body: dict[str, Any]) -> HttpResponse:
        action = _field(body, "action", str)
        details = _field(body, "details", str)
        timeout_s = _number(body, "timeout_s", DEFAULT_TIMEOUT_S)
        try:
            # Over the hourly quota nothing is written: no row, no audit entry.
            with self.store.transaction():
                approval = self.approvals.request(
                    claw.name, action, details, timeout_s, quotas=self.guard.quotas
                )
                self.audit.append(
                    f"claw:{claw.name}",
                    "approval.request",
                    approval.id,
                    {
                        "claw": claw.name,
                        "action": approval.action,
                        "sha256": approval.sha256,
                        "expires_at": _iso(approval.expires_at),
                    },
                )
                approval = self._apply_policy(approval)
        except Conflict as exc:
            # Too many waiting: the agent sees a denial with the reason, not an
            # error; like any refusal it is counted, not stored or logged each time.
            self.guard.count(claw, "approvals.pending")
            return HttpResponse.json(201, {"id": "none", "status": "denied", "reason": str(exc)})
        log.info(
            "claw %s asks approval %s for %s", claw.name, approval.id, printable(approval.action)
        )
        if approval.pending and self.notify is not None:
            self.notify(approval)
        return HttpResponse.json(201, _approval_json(approval))

    def _apply_policy(self, approval: Approval) -> Approval:
        """The claw's policy and live grants decide at once, unless the rule
        is ``ask`` (the default) and no grant covers the action; runs inside
        the request's transaction, so the request and its outcome commit
        together."""
        now = approval.created_at
        grant = self.store.grants.active_for(approval.claw, approval.action, now)
        rules = self.store.policy.rules(approval.claw)
        decision = outcome(rules, approval.action, grant, now)
        if decision.rule == ASK or decision.decided_by is None:
            return approval
        allowed = decision.rule == ALLOW
        decided = self.approvals.decide(
            approval.id, allowed, by=decision.decided_by, reason=decision.reason
        )
        by_policy = decision.decided_by == POLICY_ACTOR
        self.audit.append(
            decision.decided_by,
            ("approval.policy_allow" if allowed else "approval.policy_deny")
            if by_policy
            else "approval.granted_auto",
            decided.id,
            {"claw": decided.claw, "action": decided.action, "sha256": decided.sha256},
        )
        return decided

    def wait(self, claw: ClawIdentity, body: dict[str, Any]) -> HttpResponse:
        approval_id = _field(body, "id", str)[:100]
        wait_s = _number(body, "wait_s", MAX_WAIT_S)
        approval = self.approvals.wait(approval_id, claw.name, wait_s)
        return HttpResponse.json(200, _approval_json(approval))


def _whoami(claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
    return HttpResponse.json(200, {"claw": claw.name})


def _health(claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
    return HttpResponse.json(200, {"ok": True})


def host_api_service(
    store: Store | None = None,
    quotas: Quotas = DEFAULT_QUOTAS,
    refusals: Refusals | None = None,
    pacer: Pacer | None = None,
    notify: Callable[[Approval], object] | None = None,
) -> HttpService:
    """The host API; without a store only the identity routes exist (``whoami``,
    ``health``), which is all a channel test needs. ``refusals`` is shared
    with the controller, which reports it in ``claw status``."""
    routes: dict[tuple[str, str], Route] = {
        ("GET", "/v1/whoami"): _whoami,
        ("GET", "/v1/health"): _health,
    }
    if store is not None:
        guard = QuotaGuard(store, quotas, refusals or Refusals())
        api = HostApi(store, guard)
        approvals = ApprovalRoutes(store, guard, notify)
        routes.update(
            {
                ("POST", "/v1/messages"): _json_route(api.send_message, guard),
                ("GET", "/v1/schedules"): _json_route(api.list_schedules, guard),
                ("POST", "/v1/schedules"): _json_route(api.create_schedule, guard),
                ("POST", "/v1/schedules/delete"): _json_route(api.delete_schedule, guard),
                ("GET", "/v1/skills"): _json_route(api.list_skills, guard),
                ("POST", "/v1/approvals"): _json_route(approvals.request, guard),
                ("POST", "/v1/approvals/wait"): long_poll(_json_route(approvals.wait, guard)),
            }
        )
    return HttpService("hostapi", HOST_API_PORT, routes, pacer=pacer)
