"""The host API a claw reaches on its own ``127.0.0.1:7701``.

Every route acts for the claw whose SSH transport carried the request — the
``ClawIdentity`` the service registry bound to that transport — and nothing in
a request can name another claw: a claw sees and changes only its own
messages and jobs. Shapes are in docs/agent.md ("What the host must provide");
every error is ``{"error": {"message", "code"}}``, and its message is shown to
the claw's model as is, so it says what to do differently.

Approvals are a stub by design until the approvals issue: every request is
denied at once with a reason saying so. Denying is the only safe stand-in —
the agent asks before risky actions, and a stub that approved would wave
them all through.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlite_utils import Database

from appliance.channel.http import HttpRequest, HttpResponse, HttpService, Route
from appliance.channel.services import ClawIdentity
from appliance.errors import ClawdenError, Conflict, InvalidInput, NotFound, Unavailable
from appliance.messages import MessageRepository, check_text
from appliance.schedule import ScheduleRepository, schedule_add, schedule_rm
from appliance.schedule.model import CreatedBy, Job
from appliance.textsafe import printable

log = logging.getLogger(__name__)

HOST_API_PORT = 7701
# A claw's own messages go to its owner's usual channel, which the channels
# issue will resolve; until then they are stored under this label.
OWNER_CHANNEL = "default"
APPROVALS_STUB_REASON = "approvals are not available yet: ask your operator"


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


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        raise _BadBody("the body is not JSON") from None
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


def _json_route(handler: Handler) -> Route:
    """Parse the body, run ``handler``, turn expected failures into 4xx JSON."""

    def route(claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
        try:
            return handler(claw, _body(request) if request.method == "POST" else {})
        except _BadBody as exc:
            return error(400, str(exc), "bad_request")
        except ClawdenError as exc:
            return _from_clawden_error(exc)
        except Exception:  # noqa: BLE001 — the claw gets an answer, the log the detail
            log.exception(
                "host API %s %s failed for claw %s", request.method, request.path, claw.name
            )
            return error(
                500, "the host failed to do this; its operator can check the log", "internal"
            )

    return route


class HostApi:
    """The store-backed routes; ``db`` is the controller's store connection."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.messages = MessageRepository(db)
        self.schedules = ScheduleRepository(db)

    def send_message(self, claw: ClawIdentity, body: dict[str, Any]) -> HttpResponse:
        text = _field(body, "text", str)
        check_text(text)
        if not text.strip():
            raise _BadBody("the message is empty")
        message = self.messages.add(claw.name, "out", OWNER_CHANNEL, claw.name, text, kind="chat")
        return HttpResponse.json(200, {"id": message.id, "delivered": message.delivered})

    def list_schedules(self, claw: ClawIdentity, body: dict[str, Any]) -> HttpResponse:
        jobs = self.schedules.list(claw.name)
        return HttpResponse.json(200, {"schedules": [job_json(j) for j in jobs]})

    def create_schedule(self, claw: ClawIdentity, body: dict[str, Any]) -> HttpResponse:
        job = schedule_add(
            self.db,
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
        schedule_rm(self.db, job_id, claw=claw.name)
        return HttpResponse.json(200, {"deleted": True})


def _approval_requested(claw: ClawIdentity, body: dict[str, Any]) -> HttpResponse:
    action = body.get("action")
    log.info(
        "claw %s asked to approve %s: denied (approvals not available yet)",
        claw.name,
        printable(str(action)[:200]),
    )
    return HttpResponse.json(
        201, {"id": "unavailable", "status": "denied", "reason": APPROVALS_STUB_REASON}
    )


def _approval_wait(claw: ClawIdentity, body: dict[str, Any]) -> HttpResponse:
    approval_id = str(body.get("id", ""))[:100]
    return HttpResponse.json(
        200, {"id": approval_id, "status": "denied", "reason": APPROVALS_STUB_REASON}
    )


def _whoami(claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
    return HttpResponse.json(200, {"claw": claw.name})


def _health(claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
    return HttpResponse.json(200, {"ok": True})


def host_api_service(db: Database | None = None) -> HttpService:
    """The host API; without a store only the identity routes exist (``whoami``,
    ``health``), which is all a channel test needs."""
    routes: dict[tuple[str, str], Route] = {
        ("GET", "/v1/whoami"): _whoami,
        ("GET", "/v1/health"): _health,
        ("POST", "/v1/approvals"): _json_route(_approval_requested),
        ("POST", "/v1/approvals/wait"): _json_route(_approval_wait),
    }
    if db is not None:
        api = HostApi(db)
        routes.update(
            {
                ("POST", "/v1/messages"): _json_route(api.send_message),
                ("GET", "/v1/schedules"): _json_route(api.list_schedules),
                ("POST", "/v1/schedules"): _json_route(api.create_schedule),
                ("POST", "/v1/schedules/delete"): _json_route(api.delete_schedule),
            }
        )
    return HttpService("hostapi", HOST_API_PORT, routes)
