"""The admin sets a claw's heartbeat from its page: how often it wakes, in
which hours, or off — the same use cases and audit as `clawden schedule add
NAME heartbeat SPEC` and `clawden schedule rm ID`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from appliance.schedule.jobs import schedule_add, schedule_rm
from web.auth import Csrf, CurrentUser
from web.htmx import redirect
from web.routes.claws import admin_claw

router = APIRouter(prefix="/claws/{name}")


@router.post("/heartbeat", dependencies=[Csrf])
def set_heartbeat(
    request: Request,
    user: CurrentUser,
    name: str,
    # "every=30m active=08:00-22:00 model=NAME"; empty for the defaults.
    spec: Annotated[str, Form(max_length=200)] = "",
    enabled: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    panel, name = admin_claw(request, user, name)
    store = panel.store
    current = store.schedules.heartbeat(name)
    if enabled:
        tz = None if current is None else current.tz
        job = schedule_add(store, name, "heartbeat", spec.strip(), tz, "")
        store.audit.append(
            user.actor, "schedule.add", name, {"job": job.id, "kind": job.kind.value}
        )
    elif current is not None and current.enabled:
        schedule_rm(store, current.id)
        store.audit.append(user.actor, "schedule.rm", str(current.id), {})
    return redirect(request, f"/claws/{name}")
