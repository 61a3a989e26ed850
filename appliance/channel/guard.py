"""The SSH transport to a claw, hardened against the guest on the other end.

paramiko trusts its peer in ways a claw, whose VM and root are assumed
compromised (and can run an SSH server of their own with the host key it
holds), must not be trusted:

- **Receive windows are not enforced.** paramiko grants each channel a window
  (2 MiB) and a maximum packet (32 KiB) but appends whatever arrives to the
  channel's buffer, so a peer that ignores the window makes the host buffer
  without limit. Here each ``CHANNEL_DATA``/``EXTENDED_DATA`` is checked first:
  a packet larger than the channel's maximum, or data past what the host has
  granted and not yet re-opened, is a protocol violation, and the whole
  transport is closed before a byte of it is buffered.
- **Packets are read whole, whatever length they declare** (up to 4 GiB,
  before anything can look at them): a packet longer than ``MAX_PACKET_BYTES``
  (OpenSSH's own limit) closes the transport instead.
- **Channel opens are unbounded.** A client-mode transport already refuses
  channel types it has no handler for, but every ``forwarded-tcpip`` open gets
  a channel and a call to the forward handler, whatever port it names. Here a
  claw may open only ``forwarded-tcpip`` channels, only for a forward the host
  requested, and only while the transport holds fewer than
  ``MAX_OPEN_CHANNELS`` channels (the host's own exec and SFTP sessions
  included); everything else is refused before paramiko makes a channel.
- **Channel opens come as fast as the guest sends them.** Each costs the
  host's transport thread a little work (and the one interpreter lock all
  claws share), so a claw opening and closing connections in a loop slowed
  the other claws' requests 2-4x. Here the transport thread waits its turn
  before it handles a claw's open past a burst (``CHANNEL_OPENS_PER_SECOND``,
  a ``Pacer``): the claw's further packets wait in its socket, and only its
  own channel is slowed.
- **Every channel id ever seen is remembered** (``channels_seen``): it is
  trimmed to the most recent ``SEEN_IDS_KEPT``.

A violation is logged once, attributed to the claw (so its log budget applies;
so does everything paramiko logs on the transport's thread), recorded in
``ClawTransport.violation`` (the connection manager waits before reconnecting)
and ends the transport's thread as an end of stream would: quietly, with
paramiko's usual clean-up (channels closed, waiters woken, socket closed).

This reaches into paramiko's internals, without patching paramiko itself:
only transports made here are affected. A subclass replaces two entries of
``Transport._channel_handler_table`` (the per-class table of channel message
handlers) and overrides ``Transport._parse_channel_open``; the window
arithmetic relies on how ``Channel`` accounts its window (``in_window_size``,
``in_window_sofar``, ``in_buffer``, ``in_stderr_buffer``, see
``_window_left``); the packet limit uses the ``packetizer_class`` parameter.
``tests/unit/test_channel_guard.py`` checks all of it against the installed
paramiko and fails when these internals change: read them again before
raising ``PARAMIKO_AUDITED``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import NoReturn

import paramiko
from paramiko.common import (
    MSG_CHANNEL_DATA,
    MSG_CHANNEL_EXTENDED_DATA,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_FAILED_RESOURCE_SHORTAGE,
    cMSG_CHANNEL_OPEN_FAILURE,
)
from paramiko.packet import Packetizer

from appliance.channel.logbudget import serving_claw
from appliance.core.quotas import CHANNEL_OPENS_PER_SECOND, Pacer

log = logging.getLogger(__name__)

# The paramiko whose internals this module was written against (see above).
PARAMIKO_AUDITED = "5.1.0"

# OpenSSH's PACKET_MAX_SIZE: no OpenSSH peer sends a longer packet, and a
# channel's data packets are at most its maximum (32 KiB) plus a few bytes.
MAX_PACKET_BYTES = 256 * 1024
# All channels on one transport: a claw's forwarded connections (at most
# 16 per service, three services) plus the host's own sessions.
MAX_OPEN_CHANNELS = 64
# paramiko remembers the id of every channel ever opened, so that a message
# still in flight for a closed one is ignored rather than fatal. Past this many,
# all but the newest half (and the open channels') are forgotten.
SEEN_IDS_KEPT = 4096

FORWARDED_TCPIP = b"forwarded-tcpip"
SSH_EXTENDED_DATA_STDERR = 1


class GuestViolation(EOFError):
    """The guest broke the SSH protocol; the transport is closed.

    An ``EOFError`` so that paramiko's transport thread ends as it does on a
    closed stream: no traceback logged, everything cleaned up."""


class _BoundedPacketizer(Packetizer):
    """Refuses to read a packet longer than ``MAX_PACKET_BYTES``.

    ``read_message`` asks ``read_all`` for each packet's body at the length its
    header declares, before anything else sees it; so the length is checked
    there, before a byte of the body is read."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.owner: ClawTransport | None = None

    def read_all(self, n: int, check_rekey: bool = False) -> bytes:
        if n > MAX_PACKET_BYTES:
            what = f"a {n}-byte packet (at most {MAX_PACKET_BYTES} are read)"
            if self.owner is not None:
                self.owner.refuse(what)
            raise GuestViolation(what)
        return super().read_all(n, check_rekey)


_paramiko_feed = paramiko.Channel._feed  # type: ignore[attr-defined]
_paramiko_feed_extended = paramiko.Channel._feed_extended  # type: ignore[attr-defined]


def _window_left(chan: paramiko.Channel) -> int:
    """How many bytes the host has granted ``chan``'s peer and not yet received.

    paramiko never lowers ``in_window_size`` (the initial grant). What the
    peer has sent since is either still buffered (``in_buffer``, and
    ``in_stderr_buffer``) or was read; what was read is either counted in
    ``in_window_sofar`` (not yet granted again) or was granted again by a
    WINDOW_ADJUST, which reset ``in_window_sofar`` to 0. So what is left is the
    grant minus the buffered bytes minus ``in_window_sofar``.

    A reader on another thread first takes bytes from the buffer, then adds
    them to ``in_window_sofar`` (or sends them in a WINDOW_ADJUST). Reading
    ``in_window_sofar`` first and the buffers after can therefore only see a
    read as already taken and not yet counted: the result may be a little
    more than exact (never more than the grant minus what is buffered, so
    the buffers still never exceed the grant), never less, so a peer that
    respects the window is never refused. After EOF or close paramiko stops
    counting reads; the result then errs the same, lenient, way."""
    not_granted_again = chan.in_window_sofar
    buffered = len(chan.in_buffer) + len(chan.in_stderr_buffer)
    return chan.in_window_size - not_granted_again - buffered


def _admit(chan: paramiko.Channel, size: int) -> None:
    """Raise ``GuestViolation`` unless ``size`` bytes of data fit ``chan``'s
    maximum packet and its receive window."""
    transport = chan.transport
    if not isinstance(transport, ClawTransport):  # not ours: nothing to enforce here
        return
    if size > chan.in_max_packet_size:
        transport.refuse(
            f"channel {chan.chanid}: a {size}-byte data packet, "
            f"larger than the {chan.in_max_packet_size} the host allows"
        )
    left = _window_left(chan)
    if size > left:
        transport.refuse(
            f"channel {chan.chanid}: {size} bytes sent into a receive window "
            f"with {max(left, 0)} left (of {chan.in_window_size})"
        )


def _feed_within_window(chan: paramiko.Channel, m: paramiko.Message) -> None:
    start = m.packet.tell()
    _admit(chan, len(m.get_binary()))
    m.packet.seek(start)
    _paramiko_feed(chan, m)


def _feed_extended_within_window(chan: paramiko.Channel, m: paramiko.Message) -> None:
    # Only stderr (1) is defined (RFC 4254 5.2), and all sshd sends. paramiko
    # would drop other types with a log line each, outside the window count.
    start = m.packet.tell()
    code = m.get_int()
    if code != SSH_EXTENDED_DATA_STDERR and isinstance(chan.transport, ClawTransport):
        chan.transport.refuse(f"channel {chan.chanid}: extended data of unknown type {code}")
    _admit(chan, len(m.get_binary()))
    m.packet.seek(start)
    _paramiko_feed_extended(chan, m)


class ClawTransport(paramiko.Transport):
    """A client transport to one claw's guest (see the module doc)."""

    # paramiko looks channel messages up in this class-level table on the
    # instance: this copy differs in the two data messages only.
    _channel_handler_table = {
        **paramiko.Transport._channel_handler_table,  # type: ignore[attr-defined]
        MSG_CHANNEL_DATA: _feed_within_window,
        MSG_CHANNEL_EXTENDED_DATA: _feed_extended_within_window,
    }

    def __init__(self, sock: socket.socket, claw: str) -> None:
        super().__init__(sock, packetizer_class=_BoundedPacketizer)
        self.claw = claw
        self.violation: str | None = None
        self._forwards: set[tuple[str, int]] = set()
        self._forwards_lock = threading.Lock()
        self._open_pacer = Pacer(CHANNEL_OPENS_PER_SECOND, MAX_OPEN_CHANNELS)
        packetizer = self.packetizer
        assert isinstance(packetizer, _BoundedPacketizer)
        packetizer.owner = self

    def run(self) -> None:
        # The transport's own thread: what it logs (here, in paramiko, in the
        # forward handler) counts against this claw's log budget.
        with serving_claw(self.claw):
            super().run()

    def refuse(self, what: str) -> NoReturn:
        """End the transport for a protocol violation (on its own thread)."""
        if self.violation is None:
            self.violation = what
            log.warning(
                "claw %s broke the SSH protocol: %s; connection closed",
                self.claw,
                what,
                extra={"claw": self.claw},
            )
        raise GuestViolation(what)

    # -- the forwards the host asked for: the only channels a claw may open

    def request_port_forward(
        self,
        address: str,
        port: int,
        handler: Callable[[paramiko.Channel, tuple[str, int], tuple[str, int]], object]
        | None = None,
    ) -> int:
        # Allowed before asking: the guest may connect the moment it agrees.
        with self._forwards_lock:
            self._forwards.add((address, port))
        try:
            granted = super().request_port_forward(address, port, handler)
        except BaseException:
            self._forward_ended(address, port)
            raise
        if granted != port:  # port 0: the guest picked one
            self._forward_ended(address, port)
            with self._forwards_lock:
                self._forwards.add((address, granted))
        return granted

    def cancel_port_forward(self, address: str, port: int) -> None:
        self._forward_ended(address, port)
        super().cancel_port_forward(address, port)

    def _forward_ended(self, address: str, port: int) -> None:
        with self._forwards_lock:
            self._forwards.discard((address, port))

    def _parse_channel_open(self, m: paramiko.Message) -> None:
        # On the transport's own thread: waiting here holds back this claw's
        # packets only (its sshd's writes then wait in turn), never another's.
        wait = self._open_pacer.delay(self.claw, time.monotonic())
        if wait > 0:
            time.sleep(wait)
        start = m.packet.tell()
        kind = m.get_string()
        peer_chanid = m.get_int()
        m.get_int()  # the guest's initial window
        m.get_int()  # the guest's maximum packet
        if kind != FORWARDED_TCPIP:
            self._refuse_open(
                peer_chanid,
                OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
                f"a {_shown(kind)} channel (only forwarded connections are accepted)",
            )
            return
        listen_addr, listen_port = m.get_string(), m.get_int()
        origin_addr = m.get_string()
        with self._forwards_lock:
            forwarded = (_text(listen_addr), listen_port) in self._forwards
        if not forwarded or _text(origin_addr) is None:
            self._refuse_open(
                peer_chanid,
                OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
                f"a connection to {_shown(listen_addr)}:{listen_port}"
                + (
                    ", which the host does not forward"
                    if not forwarded
                    else f" from a malformed address {_shown(origin_addr)}"
                ),
            )
            return
        held = len(self._channels)  # type: ignore[attr-defined]
        if held >= MAX_OPEN_CHANNELS:
            self._refuse_open(
                peer_chanid,
                OPEN_FAILED_RESOURCE_SHORTAGE,
                f"a connection to port {listen_port}: {held} channels already open "
                f"(at most {MAX_OPEN_CHANNELS})",
            )
            return
        m.packet.seek(start)
        super()._parse_channel_open(m)  # type: ignore[misc]
        self._forget_old_channel_ids()

    def _refuse_open(self, peer_chanid: int, reason: int, what: str) -> None:
        log.warning("claw %s: refused %s", self.claw, what, extra={"claw": self.claw})
        msg = paramiko.Message()
        msg.add_byte(cMSG_CHANNEL_OPEN_FAILURE)
        msg.add_int(peer_chanid)
        msg.add_int(reason)
        msg.add_string("")
        msg.add_string("en")
        self._send_message(msg)  # type: ignore[attr-defined]

    def _forget_old_channel_ids(self) -> None:
        """Past ``SEEN_IDS_KEPT`` ids in ``channels_seen``, keep those of open
        channels and the ``SEEN_IDS_KEPT // 2`` newest; a message for an id
        forgotten here ends the transport, as one for an id never used does."""
        with self.lock:
            seen = self.channels_seen
            if len(seen) <= SEEN_IDS_KEPT:
                return
            live = self._channels  # type: ignore[attr-defined]
            for chanid in list(seen)[: len(seen) - SEEN_IDS_KEPT // 2]:
                if live.get(chanid) is None:
                    del seen[chanid]


def _text(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _shown(raw: bytes) -> str:
    """Guest bytes for a log line: short, one line, quoted."""
    return repr(raw[:64].decode("utf-8", "replace"))
