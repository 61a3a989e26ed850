"""A claw's reply, from the worker thread that waits for it to the browser,
as a stream of server-sent events.

``ClawOps.say`` blocks for as long as the claw thinks (minutes, with tools),
so it runs on a thread of its own — not the server's threadpool, which a few
slow claws would drain, and never the event loop. Its pieces cross to the
response's async generator through an ``asyncio.Queue`` fed with
``call_soon_threadsafe``, so the loop keeps serving every other request and
several chats stream at once.

The thread belongs to the delivery, not to the request: when the browser
hangs up mid-reply the generator stops, the thread goes on, and the reply
is stored all the same (as the controller's ``_relay`` does for the CLI).

Events (``text/event-stream``; every ``data`` is one line of JSON, so no
piece of model text can forge an event):

* ``piece`` — a JSON string, the next piece of the reply (untrusted text:
  ``panel.js`` adds it as a text node);
* ``done`` — ``{"in_id": …, "out_id": …}``, the stored messages, whose
  rendered partials replace the streamed text;
* ``error`` — ``{"what": …, "fix": …}``, a ``ClawdenError`` (or a bug,
  logged, with a neutral text), after which the stream ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from appliance.controller.messaging import Accepted
from appliance.core.errors import ClawdenError

log = logging.getLogger(__name__)

# A comment line while the claw is quiet, so no proxy or browser takes the
# silent connection for dead.
KEEPALIVE_S = 15.0
END_EVENTS = ("done", "error")


def sse(event: str, data: Any) -> bytes:
    # json.dumps escapes newlines, so the data stays on its one line.
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class ReplyStream:
    """Runs one accepted delivery on its own thread and yields its events."""

    def __init__(self, accepted: Accepted, keepalive: float = KEEPALIVE_S) -> None:
        self._accepted = accepted
        self._keepalive = keepalive
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def start(self) -> None:
        claw = self._accepted.inbound.claw
        threading.Thread(target=self._deliver, name=f"chat-{claw}", daemon=True).start()

    def _put(self, event: str, data: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (event, data))
        except RuntimeError:
            pass  # the loop is closed (the server stopping): the delivery goes on

    def _deliver(self) -> None:
        claw = self._accepted.inbound.claw
        try:
            reply = self._accepted.deliver(lambda piece: self._put("piece", piece))
        except ClawdenError as exc:
            self._put("error", {"what": exc.what, "fix": exc.fix})
        except Exception:
            # A bug, not the member's doing: logged with its traceback (never
            # the message text), and a neutral error to the page.
            log.exception("web chat with claw %s failed", claw)
            self._put(
                "error",
                {"what": "the reply failed on the host", "fix": "try again; the log says why"},
            )
        else:
            self._put("done", {"in_id": reply.in_id, "out_id": reply.out_id})

    async def events(self) -> AsyncIterator[bytes]:
        while True:
            try:
                event, data = await asyncio.wait_for(self._queue.get(), self._keepalive)
            except TimeoutError:
                yield b": still thinking\n\n"
                continue
            yield sse(event, data)
            if event in END_EVENTS:
                return
