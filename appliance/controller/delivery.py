"""Delivering events to a claw's agent: one SSH exec per event, JSON in and out.

First to the warm agent (docs/agent.md, "The warm agent"): the host's login
connects to its socket with ``socat`` (no sudo, no Python start), writes the
event and reads the reply as it streams, passing each piece on. When the warm
agent is not there — no hello came back, so it never read the event — the
host runs ``clawden-agent deliver`` as ``claw`` (through the guest's
``as-claw`` helper), writes the event to its stdin and reads one JSON line
back (docs/agent.md, "Delivery"). Everything that comes back is untrusted — a
claw's model, or a compromised guest, wrote it — so the reply is size-capped,
parsed strictly, reduced to known fields of known types, and stored or shown
only as data (escaping happens wherever it is displayed).

``deliver_event`` is the primitive; ``converse`` is the controller's ``say``
(a message in, its reply out, both stored); ``ChannelDelivery`` is the
scheduler's ``Delivery`` port on top of it, wired in by the controller.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.channel.exec import (
    CommandTimeout,
    OutputFull,
    Transport,
    TransportFor,
    exec_capped,
    exec_streaming,
)
from appliance.controller.agent_stream import AgentStream, StreamError
from appliance.core.errors import ClawdenError, InvalidInput, Unavailable
from appliance.core.messages import MAX_TEXT_BYTES, Message, check_text
from appliance.core.schedule import Job, JobKind, parse_heartbeat
from appliance.core.textsafe import printable
from appliance.schedule.runner import DeliveryResult
from appliance.store.messages import MessageRepository

log = logging.getLogger(__name__)

# The image installs this wrapper around `python3 -m guest.serve`.
AGENT_COMMAND: tuple[str, ...] = ("clawden-agent", "deliver")
# The warm agent's socket (images/overlay/etc/systemd/system/clawden-agent.socket,
# root:clawctl 0660), reached by the host's login itself. socat's -t: after
# the event's EOF, keep relaying the reply (the exec's deadline bounds it).
WARM_SOCKET = "/run/clawden-agent.sock"
WARM_COMMAND: tuple[str, ...] = ("socat", "-t", "3600", "-", f"UNIX-CONNECT:{WARM_SOCKET}")
# The agent waits up to 900 s for another delivery's lock and an approval may
# take 900 s more (docs/agent.md): a shorter exec would abandon live work.
DEFAULT_TIMEOUT = 1860.0
MAX_EVENT_BYTES = 1024 * 1024  # what the agent reads at most
# One reply line carries the model's final text; anything much larger than a
# message can be is a broken or hostile agent, and is not buffered further.
MAX_REPLY_BYTES = 256 * 1024
# Streamed pieces repeat the reply's text with a few bytes of JSON around
# each word: a few times the reply, bounded all the same.
MAX_STREAM_BYTES = 8 * MAX_REPLY_BYTES
CRASHED_TEXT = (
    "Sorry — my agent stopped in the middle of this message and is restarting. "
    "Nothing stored was lost; please send it again."
)
_STDERR_KEPT = 4096
_ERROR_TEXT = 500  # characters of an agent's error message we pass on

REPLY_STATUSES = frozenset({"reply", "heartbeat_ok", "max_steps", "budget", "unavailable", "error"})
_COUNTERS = ("model_calls", "tool_calls", "prompt_tokens", "completion_tokens", "trimmed")

Reply = dict[str, Any]
TextSink = Callable[[str], None]


class AgentError(ClawdenError):
    """The agent answered with an error, or with something that is not a reply."""


def _cut(text: str) -> str:
    return text if len(text) <= _ERROR_TEXT else text[:_ERROR_TEXT] + "…"


def _check_event(event: dict[str, Any]) -> bytes:
    if not isinstance(event, dict) or event.get("type") not in ("message", "schedule", "heartbeat"):
        raise InvalidInput(
            "an event needs a type: message, schedule or heartbeat", "fix the caller"
        )
    data = json.dumps(event, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if len(data) > MAX_EVENT_BYTES:
        raise InvalidInput(
            f"the event is {len(data)} bytes, the agent reads at most {MAX_EVENT_BYTES}",
            "send a shorter message",
        )
    return data


def _one_json_line(raw: bytes, claw: str) -> Any:
    def bad(why: str) -> AgentError:
        return AgentError(
            f"claw {claw!r}'s agent sent a malformed reply ({why})",
            f"check the agent in the image; `clawden claw console {claw}` may show why",
        )

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("not UTF-8") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise bad(f"{len(lines)} lines instead of one")
    try:
        return json.loads(lines[0])
    except ValueError:
        raise bad("not JSON") from None


def _reply(data: Any, claw: str) -> Reply:
    """Keep the known fields of a success reply, checking each one's type."""
    if (
        not isinstance(data, dict)
        or data.get("status") not in REPLY_STATUSES
        or not isinstance(data.get("text"), str)
    ):
        raise AgentError(
            f"claw {claw!r}'s agent sent a reply without a known status and a text",
            "the image and the host disagree on docs/agent.md: rebuild the image",
        )
    reply: Reply = {"text": data["text"], "status": data["status"]}
    for key in _COUNTERS:
        value = data.get(key, 0)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        reply[key] = value if ok else 0
    return reply


def _failure(code: int, data: Any, claw: str) -> ClawdenError:
    """The ClawdenError for an agent that exited non-zero (codes: docs/agent.md)."""
    err = data.get("error") if isinstance(data, dict) else None
    message = _cut(str(err.get("message", ""))) if isinstance(err, dict) else ""
    kind = _cut(str(err.get("type", ""))) if isinstance(err, dict) else ""
    if code == 2:
        return InvalidInput(
            f"claw {claw!r} refused the event: {message or 'bad event'}",
            "the host sent something the agent does not accept; report this as a bug",
        )
    if code == 3:
        return Unavailable(
            f"claw {claw!r} is busy with another delivery ({message or 'lock not obtained'})",
            "retry once its current task is done",
        )
    if code == 127:
        return Unavailable(
            f"claw {claw!r} has no agent: `{AGENT_COMMAND[0]}` is not installed in its image",
            "build a newer image (`clawden image build`), then stop and start the claw",
        )
    if code == -1:
        return Unavailable(
            f"claw {claw!r}'s agent was killed before it replied",
            f"retry; if it keeps happening read `clawden claw console {claw}`",
        )
    what = f"{kind}: {message}" if kind or message else "no details"
    return AgentError(
        f"claw {claw!r}'s agent failed with exit code {code} ({what})",
        "retry; the traceback is in the controller's log",
    )


def deliver_event(
    transport: Transport,
    event: dict[str, Any],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    command: Sequence[str] = AGENT_COMMAND,
    warm: Sequence[str] | None = WARM_COMMAND,
    on_text: TextSink | None = None,
    claw: str = "?",
) -> Reply:
    """Deliver ``event`` to the warm agent (``warm``; None: never), else run
    the agent's one-shot ``command`` with it on stdin; return the reply
    (``text``, ``status`` and the counters), or raise a ClawdenError. The warm
    agent's pieces of text go to ``on_text`` as they arrive."""
    payload = _check_event(event)
    if warm:
        reply = _deliver_warm(transport, payload, timeout, warm, on_text, claw)
        if reply is not None:
            return reply
    try:
        result = exec_capped(
            transport,
            # Fixed words, each quoted: nothing of the event reaches the line.
            "exec " + shlex.join(command),
            claw=claw,
            doing="during the delivery",
            timeout=timeout,
            max_stdout=MAX_REPLY_BYTES,
            stdin=payload,
            keep_stderr=_STDERR_KEPT,
        )
    except CommandTimeout:
        raise _timed_out(claw, timeout) from None
    if result.truncated:
        raise AgentError(
            f"claw {claw!r}'s agent sent more than {MAX_REPLY_BYTES} bytes instead of one reply",
            "check the agent in the image; the reply was dropped",
        )
    code, out, err = result.exit_code, result.stdout, result.stderr_tail
    if code != 0:
        _log_stderr(claw, f"agent exited {code}", err)
        try:
            data = _one_json_line(out, claw)
        except AgentError:
            data = None
        raise _failure(code, data, claw)
    return _reply(_one_json_line(out, claw), claw)


def _deliver_warm(
    transport: Transport,
    payload: bytes,
    timeout: float,
    command: Sequence[str],
    on_text: TextSink | None,
    claw: str,
) -> Reply | None:
    """The reply through the warm agent; None when it was not reached (it
    sent no hello, so it never read the event: delivering one-shot is safe)."""
    stream = AgentStream(on_text, MAX_STREAM_BYTES)
    try:
        code, err = exec_streaming(
            transport,
            "exec " + shlex.join(command),
            stream.feed,
            claw=claw,
            doing="during the delivery",
            timeout=timeout,
            stdin=payload + b"\n",
            keep_stderr=_STDERR_KEPT,
        )
        stream.finish()
    except CommandTimeout:
        raise _timed_out(claw, timeout) from None
    except OutputFull:
        raise AgentError(
            f"claw {claw!r}'s warm agent sent more than {MAX_STREAM_BYTES} bytes for one reply",
            "check the agent in the image; the reply was dropped",
        ) from None
    except StreamError as exc:
        raise AgentError(
            f"claw {claw!r}'s warm agent broke the protocol ({exc})",
            "check the agent in the image; `clawden claw exec NAME -- journalctl -u "
            "clawden-agent` shows its log",
        ) from None
    if not stream.hello:
        what = f"warm agent not reached (exit {code}), delivering one-shot"
        _log_stderr(claw, what, err, logging.INFO)
        return None
    if not stream.has_final:
        # It read the event and died (killed, out of memory, a bug): the
        # owner hears so, and systemd is already starting a new one.
        log.warning("claw %s: the warm agent stopped mid-delivery (exit %d)", claw, code)
        return {"text": CRASHED_TEXT, "status": "error", **dict.fromkeys(_COUNTERS, 0)}
    data = stream.final
    exit_code = data.get("exit", 0) if isinstance(data, dict) else 0
    if exit_code != 0:
        raise _failure(exit_code if isinstance(exit_code, int) else 1, data, claw)
    return _reply(data, claw)


def _timed_out(claw: str, timeout: float) -> Unavailable:
    return Unavailable(
        f"claw {claw!r} did not reply within {timeout:.0f} s",
        "it may still be working (its history keeps the message); retry with a longer --timeout",
    )


def _log_stderr(claw: str, what: str, err: bytes, level: int = logging.WARNING) -> None:
    if not err and level == logging.INFO:
        log.info("claw %s: %s", claw, what)
        return
    # Guest text: escaped, newlines too, so it cannot forge log lines.
    text = printable(err.decode("utf-8", "replace")).replace("\n", "\\n")
    log.log(level, "claw %s: %s: %s", claw, what, text)


def fit_message(text: str) -> str:
    """``text`` cut to what a stored message may hold (whole characters), marked."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_TEXT_BYTES:
        return text
    note = f"\n[… cut: the reply was {len(raw)} bytes]"
    keep = raw[: MAX_TEXT_BYTES - len(note.encode())]
    return keep.decode("utf-8", "ignore") + note


@dataclass(frozen=True)
class Conversation:
    inbound: Message
    reply: Reply
    outbound: Message | None  # None for a HEARTBEAT_OK reply, which is not stored


def converse(
    messages: MessageRepository,
    transport: Transport,
    claw: str,
    text: str,
    *,
    channel: str = "cli",
    sender: str = "operator",
    timeout: float = DEFAULT_TIMEOUT,
    command: Sequence[str] = AGENT_COMMAND,
    warm: Sequence[str] | None = WARM_COMMAND,
    on_text: TextSink | None = None,
) -> Conversation:
    """Store a message to ``claw``, deliver it, store and return the reply.

    The inbound message is stored first and marked delivered once the agent
    has answered, so a failed delivery leaves an honest undelivered record.
    The reply is returned to the caller on ``channel`` right away, so it is
    stored as delivered.
    """
    check_text(text)
    if not text.strip():
        raise InvalidInput("the message is empty", "say something")
    inbound = messages.add(claw, "in", channel, sender, text, kind="chat")
    event = {"type": "message", "text": text, "channel": channel, "sender": sender}
    reply = deliver_event(
        transport, event, timeout, command=command, warm=warm, on_text=on_text, claw=claw
    )
    messages.mark_delivered(inbound.id)
    outbound = None
    if reply["status"] != "heartbeat_ok":
        outbound = messages.add(
            claw, "out", channel, claw, fit_message(reply["text"]), kind="chat", delivered=True
        )
    return Conversation(inbound, reply, outbound)


def schedule_event(job: Job, reason: str) -> dict[str, Any]:
    """The event for one run of ``job`` (a heartbeat carries only its model)."""
    if job.kind is JobKind.HEARTBEAT:
        model = parse_heartbeat(job.spec).model
        return {"type": "heartbeat", **({"model": model} if model else {})}
    text = job.text
    if reason == "missed":
        text = f"(delivered late: the host was down at the scheduled time)\n{text}"
    return {"type": "schedule", "text": text, "channel": "schedule"}


class ChannelDelivery:
    """The scheduler's ``Delivery`` over the claws' channels.

    ``transport_for(claw)`` returns the claw's live transport or raises (the
    controller's connection lookup); a ClawdenError from it or the delivery
    becomes the job's ``failed: …`` status in the runner.
    """

    def __init__(
        self,
        transport_for: TransportFor,
        timeout: float = DEFAULT_TIMEOUT,
        command: Sequence[str] = AGENT_COMMAND,
        warm: Sequence[str] | None = WARM_COMMAND,
    ) -> None:
        self._transport_for = transport_for
        self.timeout = timeout
        self.command = tuple(command)
        self.warm = warm

    def deliver(self, job: Job, reason: str) -> DeliveryResult:
        transport = self._transport_for(job.claw)
        reply = deliver_event(
            transport,
            schedule_event(job, reason),
            self.timeout,
            command=self.command,
            warm=self.warm,
            claw=job.claw,
        )
        detail = f"{reply['status']}, {reply['model_calls']} model calls"
        if reply["status"] == "heartbeat_ok":
            # The runner recognises this text and does not forward it.
            return DeliveryResult(True, "HEARTBEAT_OK", detail)
        return DeliveryResult(True, fit_message(reply["text"]), detail)
