"""The claw page, ``/claws/{name}``: power, console tail, workspace files
(USER.md and HEARTBEAT.md editable), schedules, skills, LLM use, messages.

The admin sees every claw and may power, read the console and edit; the
member who owns a claw sees the rest of its page; anyone else gets the same
404 as a claw that does not exist (``visible_claw``), on every route here.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse

from appliance.core.accounts import User
from appliance.core.errors import NotFound
from appliance.core.workspace_files import (
    MAX_EDIT_BYTES,
    FileText,
    check_editable_file,
    check_workspace_file,
)
from appliance.workspace.edits import edit_workspace_file
from web.auth import Csrf, CurrentUser, admin_user, visible_claw
from web.claw_view import claw_page, files_view, power_status
from web.htmx import is_htmx
from web.panel import Panel, panel_of
from web.ports import check_power_action
from web.templating import page

router = APIRouter(prefix="/claws/{name}")


def _claw(request: Request, user: User, name: str) -> tuple[Panel, str]:
    """The panel and ``name`` once ``user`` may see it and it exists."""
    panel = panel_of(request)
    visible_claw(user, name)
    panel.store.claws.require(name)
    return panel, name


def admin_claw(request: Request, user: User, name: str) -> tuple[Panel, str]:
    """Like ``_claw``, for the admin's routes: another member's claw is still
    "not found" (checked first), the member's own claw is "admin only"."""
    panel, name = _claw(request, user, name)
    admin_user(user)
    return panel, name


@router.get("", response_class=HTMLResponse)
def claw(request: Request, user: CurrentUser, name: str) -> HTMLResponse:
    panel, name = _claw(request, user, name)
    return page(request, "claw.html", {"view": claw_page(panel, name, user.is_admin)})


@router.get("/status", response_class=HTMLResponse)
def status(request: Request, user: CurrentUser, name: str) -> HTMLResponse:
    panel, name = _claw(request, user, name)
    return page(request, "_claw_status.html", {"status": power_status(panel, name)})


@router.post("/power", response_class=HTMLResponse, dependencies=[Csrf])
def power(
    request: Request, user: CurrentUser, name: str, action: Annotated[str, Form(max_length=20)]
) -> HTMLResponse:
    panel, name = admin_claw(request, user, name)
    action = check_power_action(action)
    panel.claws.power(name, action, actor=user.actor)
    return page(request, "_claw_status.html", {"status": power_status(panel, name, action)})


@router.get("/files", response_class=HTMLResponse)
def files(request: Request, user: CurrentUser, name: str) -> HTMLResponse:
    panel, name = _claw(request, user, name)
    return page(request, "_claw_files.html", {"claw": name, "files": files_view(panel, name)})


@router.get("/file", response_class=HTMLResponse)
def file(
    request: Request, user: CurrentUser, name: str, path: Annotated[str, Query(max_length=200)]
) -> HTMLResponse:
    panel, name = _claw(request, user, name)
    path = check_workspace_file(path)
    content = panel.claws.read_file(name, path)
    if content is None:
        raise NotFound(f"{name} has no {path}", "it may have been removed; reload the list")
    template = "_claw_file.html" if is_htmx(request) else "claw_file.html"
    return page(request, template, {"claw": name, "file": content})


@router.get("/edit", response_class=HTMLResponse)
def edit_form(
    request: Request, user: CurrentUser, name: str, path: Annotated[str, Query(max_length=200)]
) -> HTMLResponse:
    panel, name = admin_claw(request, user, name)
    path = check_editable_file(path)
    content = panel.claws.read_file(name, path)
    template = "_claw_edit.html" if is_htmx(request) else "claw_edit.html"
    return page(
        request,
        template,
        {"claw": name, "path": path, "text": "" if content is None else content.text,
         "truncated": content is not None and content.truncated, "limit": MAX_EDIT_BYTES},
    )  # fmt: skip


@router.post("/edit", response_class=HTMLResponse, dependencies=[Csrf])
def edit(
    request: Request,
    user: CurrentUser,
    name: str,
    path: Annotated[str, Form(max_length=200)],
    # No max_length here: the edit's own limit gives the clear error, and
    # Starlette caps a form part at 1 MiB before it is parsed.
    text: Annotated[str, Form()],
) -> HTMLResponse:
    panel, name = admin_claw(request, user, name)
    done = edit_workspace_file(
        panel.store.audit, panel.claws.write_file, name, path, text, user.actor
    )
    # Shown as read back from the claw; should it be gone already, as sent.
    content = panel.claws.read_file(name, done.path) or FileText(done.path, text, False)
    template = "_claw_file.html" if is_htmx(request) else "claw_file.html"
    return page(request, template, {"claw": name, "file": content, "saved": done})
