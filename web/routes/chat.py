"""The web chat: a member talks with their own claw (the admin with any), and
the reply streams in as the claw writes it.

The web chat is the first messaging channel (``appliance/core/channels.py``):
the sender is the session's account, never a field of the request; the
``ChannelRouter`` applies the rules every channel shares and delivers
through the controller's ``say`` (``ClawOps``), which stores both sides with
channel ``web``. ``POST /claws/{name}/chat`` answers with the reply's
pieces as server-sent events (``web/chat_stream.py``); ``panel.js`` adds
them as text nodes and, when the reply is complete, swaps in the stored
message rendered here (Markdown through ``web/markdown.py``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from appliance.controller.messaging import ChannelRouter
from appliance.core.accounts import User
from appliance.core.channels import WEB, Inbound
from appliance.core.errors import NotFound
from appliance.core.model import Claw
from web.auth import Csrf, CurrentUser, visible_claw
from web.chat_stream import ReplyStream
from web.panel import Panel, panel_of
from web.templating import page

router = APIRouter()

HISTORY = 50  # messages shown when the page opens


def chat_router(request: Request) -> ChannelRouter:
    """The app's one router (its per-claw slots must be shared by every
    request), made on first use."""
    state = request.app.state
    if getattr(state, "chat_router", None) is None:
        panel = panel_of(request)
        state.chat_router = ChannelRouter(panel.claws, panel.store.claws.get)
    found: ChannelRouter = state.chat_router
    return found


def _claw(panel: Panel, user: User, name: str) -> Claw:
    visible_claw(user, name)
    claw = panel.store.claws.get(name)
    if claw is None:
        raise NotFound(f"no claw {name[:40]!r}", "pick one from the dashboard")
    return claw


@router.get("/claws/{name}/chat", response_class=HTMLResponse)
def chat_page(request: Request, name: str, user: CurrentUser) -> HTMLResponse:
    panel = panel_of(request)
    claw = _claw(panel, user, name)
    history = panel.store.messages.list(claw.name, limit=HISTORY)
    return page(request, "chat.html", {"claw": claw, "history": history})


@router.get("/claws/{name}/chat/messages/{message_id}", response_class=HTMLResponse)
def chat_message(request: Request, name: str, message_id: int, user: CurrentUser) -> HTMLResponse:
    """One stored message, rendered: what replaces the streamed text."""
    panel = panel_of(request)
    claw = _claw(panel, user, name)
    message = panel.store.messages.get(claw.name, message_id)
    if message is None:
        raise NotFound(f"claw {claw.name!r} has no message {message_id}", "reload the page")
    return page(request, "_chat_message.html", {"message": message})


@router.post("/claws/{name}/chat", dependencies=[Csrf])
async def chat_send(
    request: Request,
    name: str,
    user: CurrentUser,
    # No max_length: an over-long message gets check_text's clear 400
    # (with the limit in it) rather than a bare validation error.
    text: Annotated[str, Form()] = "",
) -> StreamingResponse:
    inbound = Inbound(WEB, user, name, text)
    # Refusals (empty, too long, not yours, stopped, busy) come before the
    # stream starts, as an ordinary error response with its status.
    accepted = await run_in_threadpool(chat_router(request).accept, inbound)
    stream = ReplyStream(accepted)
    stream.start()
    return StreamingResponse(
        stream.events(),
        media_type="text/event-stream",
        # No proxy may hold the pieces back until the reply is complete.
        headers={"x-accel-buffering": "no"},
    )
