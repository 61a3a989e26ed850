"""Running one command in a claw over its channel, with the limits every
host-side caller needs: stdout capped, stderr's tail kept, a deadline, and
every SSH failure turned into ``Unavailable`` naming the claw.

The output is the guest's and untrusted: callers parse it strictly and
escape it wherever it is shown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import paramiko

from appliance.channel.transport import CommandTimeout, run_command
from appliance.core.errors import Unavailable

# The claw's live SSH transport. Callers outside channel/ only pass it on.
Transport = paramiko.Transport

DEFAULT_STDERR_KEPT = 4096


# The controller's connection lookup: the claw's live transport, or a
# ClawdenError saying why not; the waiting form waits up to the given seconds
# for the claw's channel to come up.
TransportFor = Callable[[str], Transport]
WaitingTransportFor = Callable[[str, float], Transport]


class ChannelDropped(Unavailable):
    """The claw's channel failed while a command ran."""


@dataclass(frozen=True)
class ExecResult:
    exit_code: int  # -1 when the command was killed by a signal
    stdout: bytes  # at most ``max_stdout`` bytes
    stderr_tail: bytes  # the last ``keep_stderr`` bytes
    truncated: bool  # stdout went past ``max_stdout``: the command was abandoned


class OutputFull(Exception):
    """Raised by an ``on_stdout`` that has had enough: the command is abandoned."""

    stderr_tail: bytes = b""


def exec_capped(
    transport: Transport,
    command: str,
    *,
    claw: str,
    doing: str,
    timeout: float,
    max_stdout: int,
    stdin: bytes | None = b"",
    keep_stderr: int = DEFAULT_STDERR_KEPT,
) -> ExecResult:
    """Run ``command`` (a shell line, run as the guest's command user) with
    ``stdin`` then EOF. Past ``max_stdout`` bytes of output the channel is
    closed and the result is ``truncated``. Raises ``CommandTimeout`` after
    ``timeout`` s and ``ChannelDropped`` ("the channel to claw … dropped
    {doing}") when SSH fails."""
    out = bytearray()

    def on_stdout(chunk: bytes) -> None:
        out.extend(chunk)
        if len(out) > max_stdout:
            raise OutputFull  # closes the channel: the rest is never read

    try:
        code, err = exec_streaming(
            transport,
            command,
            on_stdout,
            claw=claw,
            doing=doing,
            timeout=timeout,
            stdin=stdin,
            keep_stderr=keep_stderr,
        )
    except OutputFull as full:
        return ExecResult(-1, bytes(out[:max_stdout]), full.stderr_tail, True)
    return ExecResult(code, bytes(out), err, False)


def exec_streaming(
    transport: Transport,
    command: str,
    on_stdout: Callable[[bytes], None],
    *,
    claw: str,
    doing: str,
    timeout: float,
    stdin: bytes | None = b"",
    keep_stderr: int = DEFAULT_STDERR_KEPT,
) -> tuple[int, bytes]:
    """Run ``command`` like ``exec_capped``, handing stdout to ``on_stdout`` as
    it arrives; (exit code, stderr's tail). ``on_stdout`` raising
    ``OutputFull`` (or anything) closes the channel; ``OutputFull`` comes back
    with the stderr tail so far."""
    err = bytearray()

    def on_stderr(chunk: bytes) -> None:
        err.extend(chunk)
        del err[:-keep_stderr]

    try:
        code = run_command(transport, command, on_stdout, on_stderr, timeout=timeout, stdin=stdin)
    except OutputFull as full:
        full.stderr_tail = bytes(err)
        raise
    except CommandTimeout:
        raise
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise ChannelDropped(
            f"the channel to claw {claw!r} dropped {doing} ({type(exc).__name__})",
            f"check `clawden claw status {claw}` and retry",
        ) from None
    return code, bytes(err)


__all__ = [
    "ChannelDropped",
    "CommandTimeout",
    "ExecResult",
    "OutputFull",
    "Transport",
    "TransportFor",
    "WaitingTransportFor",
    "exec_capped",
    "exec_streaming",
]
