"""One authenticated SSH transport to a claw, over its virtio-serial socket.

The VM has no network device: the host end of its only virtio-serial port is a
unix socket owned by libvirt. We connect a plain ``AF_UNIX`` socket to it and
run a paramiko client ``Transport`` over that byte stream. Trust is pinned
both ways at provisioning: the guest's host key must match the one the host
minted for that claw (anything else is refused before authenticating), and the
host authenticates with the per-claw client key the guest's sshd accepts.
"""

from __future__ import annotations

import shlex
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paramiko

from appliance.channel.guard import ClawTransport
from appliance.channel.keys import load_public_key
from appliance.core.errors import IntegrityError, Unavailable

# The host logs in as the guest's control account, never as the agent's own
# user (`claw`): the agent cannot signal, trace or prlimit the session that
# carries the host's forwards, nor plant a file that runs before a host
# command (docs/security.md, "The control user").
GUEST_USER = "clawctl"
# Every host command runs as the agent through this root-owned helper, which
# clawctl may run through exactly one sudoers rule. It gives the command a
# fixed environment, /data/home, no_new_privs and no capabilities.
AS_AGENT: tuple[str, ...] = ("/usr/bin/sudo", "-n", "/usr/lib/clawden/as-claw")


def agent_command_line(argv: Sequence[str], runner: Sequence[str] = AS_AGENT) -> str:
    """The line clawctl's shell (dash) runs for ``argv`` as the agent: every
    word quoted, and ``exec`` so that the command's exit status or signal is
    what sshd reports. ``runner`` is ``()`` only where the "guest" is a test
    sshd on this machine."""
    return "exec " + shlex.join([*runner, *argv])


class HostKeyMismatch(IntegrityError):
    """The guest presented a host key other than the pinned one."""


@dataclass(frozen=True)
class ChannelTarget:
    """Everything needed to reach one claw; holds a private key, so no repr of it."""

    claw: str
    socket_path: Path
    pinned_host_key: str  # "ssh-ed25519 AAAA..." as minted at provisioning
    client_key: paramiko.PKey
    user: str = GUEST_USER

    def __repr__(self) -> str:
        return f"ChannelTarget(claw={self.claw!r}, socket_path={str(self.socket_path)!r})"


def fingerprint(key: paramiko.PKey) -> str:
    return key.fingerprint  # "SHA256:..." (paramiko >= 3.2)


class NoBanner(Unavailable):
    """The guest's sshd did not greet us in time (booting, or a stale session)."""


BANNER_WINDOW = 5.0


class _Replay:
    """A socket whose first reads replay bytes already read from it."""

    def __init__(self, sock: socket.socket, head: bytes) -> None:
        self._sock, self._head = sock, head

    def recv(self, n: int) -> bytes:
        if self._head:
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._sock.recv(n)

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


def _await_banner(sock: socket.socket, timeout: float) -> _Replay:
    """Wait for the guest sshd's banner *before* sending anything.

    virtio-serial can fold a quick host close-and-reopen into no event at all
    for the guest, so bytes sent right away may feed the previous session's
    dying sshd and be lost. A banner can only come from a fresh sshd; after it
    the port is safe to write to. Anything before it is an old session's tail.
    """
    sock.settimeout(timeout)
    buf = b""
    while True:
        start = buf.find(b"SSH-")
        if start >= 0 and (start == 0 or buf[start - 1 : start] == b"\n") and b"\n" in buf[start:]:
            return _Replay(sock, buf[start:])
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError("control socket closed before the guest's banner")
        buf = buf[-4096:] + chunk


def open_transport(target: ChannelTarget, timeout: float = BANNER_WINDOW) -> ClawTransport:
    """Connect, check the pinned host key, authenticate; return a live transport.

    ``timeout`` bounds the wait for the guest's greeting; on expiry the caller
    should hang up for a moment (so the guest sees the disconnect and starts a
    fresh sshd) and try again — ``ClawConnection`` does exactly that.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        sock.connect(str(target.socket_path))
    except OSError as exc:
        sock.close()
        raise Unavailable(
            f"cannot reach claw {target.claw!r}: control socket {target.socket_path} "
            f"is not accepting connections ({exc.strerror or exc})",
            f"check the claw is running: `clawden claw status {target.claw}`",
        ) from None
    try:
        replay = _await_banner(sock, timeout)
    except (OSError, EOFError):
        sock.close()
        raise NoBanner(
            f"claw {target.claw!r} did not greet within {timeout:.0f} s",
            f"it may still be booting; see `clawden claw console {target.claw}`",
        ) from None
    # Hardened against a hostile guest: windows, packet sizes and channel
    # opens are enforced (see channel/guard.py).
    transport = ClawTransport(replay, target.claw)  # type: ignore[arg-type]
    transport.banner_timeout = 30
    transport.handshake_timeout = 30
    transport.auth_timeout = 30
    try:
        transport.start_client(timeout=30)
        offered = transport.get_remote_server_key()
        pinned = load_public_key(target.pinned_host_key)
        if offered.get_name() != pinned.get_name() or offered.asbytes() != pinned.asbytes():
            raise HostKeyMismatch(
                f"claw {target.claw!r} presented SSH host key {fingerprint(offered)}, "
                f"but {fingerprint(pinned)} is pinned; connection refused",
                "the VM's seed disk was replaced or tampered with: inspect it, then "
                f"re-provision with `clawden claw destroy {target.claw} --yes` and create it again",
            )
        transport.auth_publickey(target.user, target.client_key)
        if not transport.is_authenticated():
            raise Unavailable(f"claw {target.claw!r} refused the host's key", "re-create the claw")
        # Keepalives make a dead guest visible within seconds instead of never.
        transport.set_keepalive(10)
        return transport
    except HostKeyMismatch:
        disconnect(transport)
        raise
    except (paramiko.SSHException, OSError, EOFError) as exc:
        disconnect(transport)
        raise Unavailable(
            f"SSH handshake with claw {target.claw!r} failed: {exc}",
            f"the guest may still be booting; retry, or read `clawden claw console {target.claw}`",
        ) from None


def disconnect(transport: paramiko.Transport) -> None:
    """Close with SSH_MSG_DISCONNECT first (paramiko's close() sends none), so
    the guest's sshd exits at once and the next connection meets a fresh one."""
    if transport.is_active():
        msg = paramiko.Message()
        msg.add_byte(paramiko.common.cMSG_DISCONNECT)
        msg.add_int(11)  # SSH_DISCONNECT_BY_APPLICATION
        msg.add_string("bye")
        msg.add_string("")
        try:
            transport._send_user_message(msg)  # type: ignore[attr-defined]  # no public API
        except (paramiko.SSHException, OSError, EOFError):
            pass  # already gone: closing is all that is left
    transport.close()
    # paramiko's close() is a no-op on a transport whose handshake never
    # finished, which would leak the unix socket: close it ourselves.
    transport.sock.close()


class CommandTimeout(Unavailable):
    """A guest command ran past its timeout (its channel is closed on the way out)."""


class InputSource(Protocol):
    """Input for a command that arrives while it runs (``claw exec``'s stdin,
    streamed by the CLI through the controller)."""

    def read_nowait(self) -> bytes | None:
        """What has arrived (``b""`` if nothing yet), or ``None`` at the end of
        the input. May raise to abandon the command."""


def run_command(
    transport: paramiko.Transport,
    command: str,
    on_stdout: Callable[[bytes], None],
    on_stderr: Callable[[bytes], None],
    timeout: float | None = None,
    stdin: bytes | InputSource | None = None,
) -> int:
    """Run ``command`` (a shell command line for the login's shell; see
    ``agent_command_line`` for running one as the agent) in the guest, streaming
    its output as it arrives; return its exit code (-1 if killed by a signal).

    ``stdin``, when given, is written to the command and followed by EOF:
    bytes all at once, an ``InputSource`` as its input arrives. With None
    nothing is sent and stdin stays open. A callback (or the source) may raise
    to abandon the command: the channel is closed and the exception propagates.
    """
    chan = transport.open_session(timeout=30)
    try:
        chan.settimeout(0.2)
        chan.exec_command(command)
        deadline = None if timeout is None else time.monotonic() + timeout
        # stdin is fed in the same loop that drains stdout: writing it all
        # first would deadlock on a command (like `cat`) that echoes more than
        # the SSH window holds before it reads on.
        source = None if stdin is None or isinstance(stdin, bytes) else stdin
        pending = memoryview(stdin if isinstance(stdin, bytes) else b"")
        feeding = stdin is not None  # until EOF is sent or the command stops reading
        while True:
            progressed = False
            if feeding and not pending and source is not None:
                chunk = source.read_nowait()
                if chunk is None:
                    source = None  # the end of the input: EOF once it is all sent
                else:
                    pending = memoryview(chunk)
            if feeding and pending:
                sent = _feed(chan, pending)
                progressed = sent > 0
                if sent < 0:
                    feeding = False  # the command no longer takes input
                else:
                    pending = pending[sent:]
            if feeding and not pending and source is None:
                chan.shutdown_write()  # EOF: the command sees the end of its input
                feeding = False
            while chan.recv_ready():
                on_stdout(chan.recv(65536))
                progressed = True
            while chan.recv_stderr_ready():
                on_stderr(chan.recv_stderr(65536))
                progressed = True
            # sshd may send the exit status before the last of the output:
            # only the channel's EOF (or close) says all output has arrived.
            if (
                chan.exit_status_ready()
                and (chan.eof_received or chan.closed)
                and not chan.recv_ready()
                and not chan.recv_stderr_ready()
            ):
                break
            if deadline is not None and time.monotonic() > deadline:
                raise CommandTimeout(
                    f"command did not finish within {timeout:.0f} s",
                    "raise --timeout or simplify the command",
                )
            if not progressed:
                time.sleep(0.01)
        return chan.recv_exit_status()
    finally:
        chan.close()


def _feed(chan: paramiko.Channel, data: memoryview) -> int:
    """Send what the channel's window takes now, without blocking; -1 when the
    command no longer accepts input (it exited or closed its stdin)."""
    if chan.exit_status_ready() or chan.closed:
        return -1
    sent = 0
    try:
        while sent < len(data) and chan.send_ready():
            n = chan.send(data[sent : sent + 32768].tobytes())
            if n <= 0:
                break
            sent += n
    except OSError:
        return -1  # the remote end closed: the rest of the input is not wanted
    return sent
