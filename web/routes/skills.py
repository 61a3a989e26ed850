"""Installing a skill from the claw page: ``POST /claws/{name}/skills``, a
multipart upload of a ``.tar.gz``/``.tgz``/``.tar``/``.zip`` and the admin's
TOTP code (``appliance/accounts/skill_upload.py`` has the rules).

The upload is hostile bytes of a bounded size: the request's declared length
is checked before its body is read at all (``upload_guard``, ahead of the CSRF
check that would parse it), the file part is read up to the archive cap
only, and it is written 0600 into a fresh staging folder under
``$CLAWDEN_HOME/tmp`` that is removed when the request ends, installed or
refused. The copy into the claw goes through ``ClawOps.put_tree``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from appliance.accounts.skill_upload import Uploaded, install_uploaded_skill
from appliance.core.accounts import User
from appliance.core.errors import InvalidInput
from appliance.workspace.skill_install import staging
from web.auth import Csrf, CurrentUser, admin_user, visible_claw
from web.htmx import is_htmx
from web.panel import Panel, panel_of
from web.templating import page

router = APIRouter()

# Room for the multipart framing, the CSRF token and the code around the file.
FORM_OVERHEAD = 64 * 1024
_AGAIN = "choose the skill's .tar.gz or .zip (or its folder, from the host's CLI) and try again"


async def upload_guard(request: Request, user: CurrentUser, name: str) -> AsyncIterator[None]:
    """Before a byte of the body is parsed or spooled to disk: who asks
    (``_check_claw``), and the upload's Content-Length against the cap (one
    without a length is refused too: a browser always sends it for a form).
    Then the form is parsed once, for the CSRF check and the route, and its
    spooled file closed when the request ends, whatever happened."""
    await run_in_threadpool(_check_claw, panel_of(request), user, name)
    limit = panel_of(request).skill_limits.max_archive_bytes
    length = request.headers.get("content-length", "")
    if not length.isdigit():
        raise InvalidInput("the upload did not say how large it is", _AGAIN)
    if int(length) > limit + FORM_OVERHEAD:
        raise InvalidInput(f"the upload is over the {limit}-byte cap for a skill archive", _AGAIN)
    form = await request.form(max_files=1, max_fields=8)
    try:
        yield
    finally:
        await form.close()


UploadGuard = Depends(upload_guard)


def _check_claw(panel: Panel, user: User, name: str) -> None:
    # Another member's claw is "not found" (checked first), the member's own
    # claw "admin only", as on the claw page's other admin routes.
    visible_claw(user, name)
    panel.store.claws.require(name)
    admin_user(user)


@router.post("/claws/{name}/skills", response_class=HTMLResponse, dependencies=[UploadGuard, Csrf])
async def install_skill(request: Request, user: CurrentUser, name: str) -> Response:
    panel = panel_of(request)  # the claw and the user were checked by upload_guard
    form = await request.form()  # parsed by upload_guard, with its limits
    archive, code = form.get("archive"), form.get("code")
    if not isinstance(archive, UploadFile):
        raise InvalidInput("no skill archive was sent", _AGAIN)
    if not isinstance(code, str) or len(code) > 64:
        raise InvalidInput("no TOTP code was sent", "type the code your authenticator shows")
    limit = panel.skill_limits.max_archive_bytes
    data = await archive.read(limit + 1)
    if len(data) > limit:
        raise InvalidInput(f"the archive is over the {limit}-byte cap", _AGAIN)
    done = await run_in_threadpool(
        _install, panel, user, name, archive.filename or "", data, code.strip()
    )
    if not is_htmx(request):
        return RedirectResponse(f"/claws/{name}", status_code=303)
    skills = panel.store.skills.list(name)
    return page(request, "_claw_skills.html", {"claw": name, "skills": skills, "installed": done})


def _install(
    panel: Panel, user: User, claw: str, filename: str, data: bytes, code: str
) -> Uploaded:
    with staging(panel.home) as stage:
        upload = stage / "upload"
        _write_private(upload, data)
        return install_uploaded_skill(
            panel.store,
            user.name,
            claw,
            upload,
            filename,
            code,
            panel.claws.put_tree,
            stage,
            panel.skill_limits,
            panel.clock,
        )


def _write_private(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
        out.write(data)
