"""The long-running controller: owns every running claw's channel.

On start it reconciles (finishing whatever a killed CLI left half-done), then
keeps looping: every couple of seconds it makes the set of supervised channels
match the claws that are running, and every so often it reconciles again so a
crashed guest comes back. It also serves the CLI's local API.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from appliance.channel.exec import Transport
from appliance.channel.forwarding import ServiceRegistry
from appliance.channel.manager import ChannelManager, ClawConnection
from appliance.channel.transport import AS_AGENT, ChannelTarget, agent_command_line, run_command
from appliance.controller.boot_burst import BootBurst
from appliance.controller.context import Context
from appliance.controller.delivery import (
    AGENT_COMMAND,
    DEFAULT_TIMEOUT,
    WARM_COMMAND,
    ChannelDelivery,
    Conversation,
    converse,
)
from appliance.controller.domains import find_domain
from appliance.controller.guestcopy import put_tree_handler
from appliance.controller.guestfiles import channel_target
from appliance.controller.heartbeat_source import ChannelHeartbeatSource
from appliance.controller.reconcile import RetryGate, reconcile
from appliance.controller.rpc import ClientInput, Reply, RpcServer, encode_chunk
from appliance.core.errors import ClawdenError, InvalidInput, NotFound, Unavailable
from appliance.core.model import ClawState, validate_claw_name
from appliance.core.ports import DomainState
from appliance.core.quotas import Refusals
from appliance.schedule.runner import SchedulerRunner, SchedulerThread

log = logging.getLogger(__name__)

SYNC_EVERY = 2.0
RECONCILE_EVERY = 30.0
SCHEDULE_EVERY = 10.0
# How long a scheduled delivery waits for a claw's channel to come up (a claw
# that was just started, or whose channel is reconnecting).
SCHEDULE_CHANNEL_WAIT = 60.0


class Controller:
    def __init__(
        self,
        context_factory: Callable[[], Context],
        registry: ServiceRegistry,
        say: Callable[[str], None] = print,
        agent_command: Sequence[str] = AGENT_COMMAND,
        refusals: Refusals | None = None,
        as_agent: Sequence[str] = AS_AGENT,
        warm_command: Sequence[str] | None = WARM_COMMAND,
    ) -> None:
        # One Context (one SQLite connection) for every thread: the store
        # serialises access itself, and opening more connections per request
        # would only leak them.
        self._ctx = context_factory()
        self._say = say
        self._stop = threading.Event()
        self._sync_lock = threading.Lock()
        self._gate = RetryGate()
        self._messages = self._ctx.store.messages
        self._refusals = refusals or Refusals()
        # Host commands run as the agent through the guest's helper
        # (``as_agent``; a test "guest" on this machine has none). The guest
        # command events are delivered to; tests point it elsewhere.
        self._as_agent = tuple(as_agent)
        self._agent_command = (*self._as_agent, *agent_command)
        # The warm agent's socket is the host login's own to reach: no as-claw.
        self._warm_command = warm_command
        self.boot_burst = BootBurst(self._ctx, report=self._say)
        self.channels = ChannelManager(
            registry,
            self._target_for,
            self._audit_event,
            on_started=self.boot_burst.begin,
            on_ready=self.boot_burst.end,
        )
        self.scheduler = SchedulerThread(
            SchedulerRunner(
                self._ctx.store.schedules,
                ChannelDelivery(
                    self._scheduled_transport,
                    command=self._agent_command,
                    warm=self._warm_command,
                ),
                heartbeats=ChannelHeartbeatSource(self._scheduled_transport, runner=self._as_agent),
                messages=self._messages,
                refusals=self._refusals,
            ),
            interval_s=SCHEDULE_EVERY,
        )
        self._rpc = RpcServer(
            self._ctx.settings.controller_socket,
            {
                "ping": self._ping,
                "status": self._status,
                "wait_ready": self._wait_ready,
                "reconnect": self._reconnect,
                "say": self._op_say,
                "put_tree": put_tree_handler(
                    self.transport_for, staging=self._ctx.settings.home / "tmp"
                ),
            },
            input_handlers={"exec": self._exec},
        )

    # ---- lifecycle ------------------------------------------------------
    def run(self, when_ready: Callable[[], None] | None = None) -> None:
        """Serve until ``stop``; ``when_ready`` runs once the controller has
        said it is ready (``clawden serve`` prints the panel's address then,
        so it is the last thing on the screen)."""
        self._reconcile(initial=True)
        self._rpc.start()
        # Jobs live in SQLite: whatever came due while the controller was down
        # is handled now, by the missed-run policy (docs/scheduler.md).
        self.scheduler.start()
        self._say(f"controller ready (pid {os.getpid()}, socket {self._rpc.path})")
        if when_ready is not None:
            when_ready()
        last_reconcile = time.monotonic()
        try:
            while not self._stop.wait(SYNC_EVERY):
                if time.monotonic() - last_reconcile > RECONCILE_EVERY:
                    self._reconcile(initial=False)
                    last_reconcile = time.monotonic()
                self._sync_channels()
        finally:
            self._rpc.close()
            # Closing the channels first ends any delivery in progress (it was
            # claimed before it started, so it is not repeated on restart).
            self.channels.close()
            self.scheduler.stop(timeout=10)

    def stop(self) -> None:
        self._stop.set()

    def _reconcile(self, initial: bool) -> None:
        try:
            report = reconcile(self._ctx, self._say if initial else log.info, self._gate)
        except ClawdenError as exc:
            self._say(f"reconcile skipped: {exc}")
            return
        for line in report.errors:
            self._say(f"reconcile: {line}")
        if initial and report.changed:
            self._say(
                f"reconciled: resumed {len(report.resumed)}, renamed {len(report.renamed)},"
                f" restarted {len(report.restarted)}, stopped {len(report.stopped)},"
                f" orphans removed {len(report.orphans_removed)}"
            )
        self._sync_channels()

    def _sync_channels(self) -> None:
        # Serialised: an RPC thread and the main loop must not compute
        # "wanted" at different moments and undo each other's work.
        with self._sync_lock:
            self._sync_channels_locked()

    def _sync_channels_locked(self) -> None:
        try:
            wanted = {
                c.name
                for c in self._ctx.claws.list()
                if c.state is ClawState.RUNNING
                and find_domain(self._ctx, c.name).state is DomainState.RUNNING
            }
        except ClawdenError as exc:
            log.warning("cannot list claws: %s", exc)
            return
        for claw in self.channels.claws():
            if claw not in wanted:
                self.channels.drop(claw)
        for claw in wanted:
            self.channels.ensure(claw)
        self.boot_burst.end_overdue()

    def _target_for(self, claw: str) -> ChannelTarget:
        return channel_target(self._ctx, claw)

    def _audit_event(self, action: str, claw: str, details: dict[str, object]) -> None:
        self._ctx.audit.append("controller", action, claw, dict(details))
        self._say(f"{claw}: {action}: {details.get('error', '')}")

    # ---- API handlers (each runs on its own thread) --------------------
    def _ping(self, request: dict[str, Any], send: Callable[[Reply], None]) -> Reply:
        return {"pid": os.getpid()}

    def _status(self, request: dict[str, Any], send: Callable[[Reply], None]) -> Reply:
        claws = {}
        for claw in self.channels.claws():
            conn = self.channels.get(claw)
            if conn is not None:
                st = conn.status()
                claws[claw] = {
                    "state": st.state.value,
                    "since": st.since,
                    "connects": st.connects,
                    "last_error": st.last_error,
                }
        return {"pid": os.getpid(), "channels": claws, "refusals": self._refusals.totals()}

    @property
    def refusals(self) -> Refusals:
        """What the host API and scheduler refused over quota (in memory)."""
        return self._refusals

    def _connection(self, claw: str) -> ClawConnection:
        """The claw's supervised connection, started here if the main loop
        has not got to it yet. Looks at this one claw only — its store row and
        its domain's state — as ``_sync_channels`` would for it."""
        with self._sync_lock:
            record = self._ctx.claws.require(claw)
            if record.state is not ClawState.RUNNING:
                raise ClawdenError(
                    f"claw {claw!r} is {record.state.value}",
                    f"start it: `clawden claw start {claw}`",
                )
            try:
                running = find_domain(self._ctx, claw).state is DomainState.RUNNING
            except ClawdenError as exc:
                log.warning("cannot read claw %s's domain: %s", claw, exc)
            else:
                if running:
                    self.channels.ensure(claw)
                else:
                    self.channels.drop(claw)
        conn = self.channels.get(claw)
        if conn is None:
            raise NotFound(
                f"claw {claw!r} is not running in libvirt",
                f"run `clawden reconcile` or `clawden claw start {claw}`",
            )
        return conn

    def _ready_connection(self, claw: str, wait: float) -> tuple[ClawConnection | None, bool]:
        """The claw's *current* connection once ready, waiting up to ``wait`` s.

        Waits in short slices and looks the connection up again each time: a
        sync may replace it meanwhile (claw restarted, channel dropped), and
        waiting on a stopped one would never end.
        """
        deadline = time.monotonic() + wait
        while True:
            try:
                conn = self._connection(claw)
            except NotFound:
                conn = None
            left = deadline - time.monotonic()
            if conn is not None and conn.wait_ready(max(0.0, min(1.0, left))):
                return conn, True
            if time.monotonic() >= deadline:
                return conn, False
            if conn is None:
                time.sleep(min(0.5, max(0.0, left)))  # domain not up yet: poll gently

    def _wait_ready(self, request: dict[str, Any], send: Callable[[Reply], None]) -> Reply:
        claw = str(request["claw"])
        conn, ready = self._ready_connection(claw, float(request.get("timeout", 300)))
        if conn is None:
            return {"ready": False, "state": "not running", "last_error": None}
        st = conn.status()
        return {"ready": ready, "state": st.state.value, "last_error": st.last_error}

    def transport_for(self, claw: str, wait: float = 30.0) -> Transport:
        """The claw's live transport, waiting up to ``wait`` s for its channel
        (for ``ChannelDelivery``); raises a ClawdenError saying why not."""
        conn, _ = self._ready_connection(claw, wait)
        if conn is None:
            conn = self._connection(claw)  # raises the informative NotFound
        return conn.transport()

    def _scheduled_transport(self, claw: str) -> Transport:
        """A running claw's transport for the scheduler. A claw that is not
        running is reported as such, without waiting: its heartbeat is then
        recorded as skipped and its other jobs as failed, with that reason."""
        record = self._ctx.claws.require(claw)
        if record.state is not ClawState.RUNNING:
            raise Unavailable(
                f"claw {claw!r} is {record.state.value}", f"start it: `clawden claw start {claw}`"
            )
        return self.transport_for(claw, SCHEDULE_CHANNEL_WAIT)

    def _exec(
        self, request: dict[str, Any], send: Callable[[Reply], None], stdin: ClientInput
    ) -> Reply:
        """Run ``argv`` in the claw. With ``"stdin": true`` the client streams
        the command's input after the request (``rpc.ClientInput``); without,
        the command's stdin is empty (EOF at once)."""
        claw = str(request["claw"])
        argv = [str(a) for a in request["argv"]]
        timeout = request.get("timeout")
        conn, _ = self._ready_connection(claw, float(request.get("wait", 0)))
        if conn is None:
            conn = self._connection(claw)  # raises the informative NotFound
        code = run_command(
            conn.transport(),
            # As the agent, argv exactly as given (each word quoted).
            agent_command_line(argv, self._as_agent),
            lambda b: send({"stdout": encode_chunk(b)}),
            lambda b: send({"stderr": encode_chunk(b)}),
            timeout=None if timeout is None else float(timeout),
            stdin=stdin if request.get("stdin") is True else b"",
        )
        if code < 0:
            # No exit status came back: the command was killed by a signal, or
            # the channel dropped under it (guest stopped, reboot).
            raise Unavailable(
                f"the command in claw {claw!r} ended without an exit status "
                "(killed by a signal, or the channel dropped)",
                f"check `clawden claw status {claw}`; the command may or may not have finished",
            )
        return {"exit": code}

    def _reconnect(self, request: dict[str, Any], send: Callable[[Reply], None]) -> Reply:
        """Drop a claw's channel and open a fresh one (keys re-read from the store)."""
        claw = str(request["claw"])
        self.channels.drop(claw)
        self._connection(claw)
        return {"reconnecting": claw}

    def _op_say(self, request: dict[str, Any], send: Callable[[Reply], None]) -> Reply:
        """Deliver a chat message from the operator; both sides are stored."""
        claw = validate_claw_name(str(request.get("claw", "")))
        text = request.get("text")
        if not isinstance(text, str):
            text = ""
        talk = self.say(
            claw,
            text,
            channel=str(request.get("channel") or "cli"),
            on_text=_relay(send),
            timeout=float(request.get("timeout") or DEFAULT_TIMEOUT),
            wait=float(request.get("wait", 0)),
        )
        return {
            **talk.reply,
            "in_id": talk.inbound.id,
            "out_id": None if talk.outbound is None else talk.outbound.id,
        }

    def say(
        self,
        claw: str,
        text: str,
        channel: str,
        on_text: Callable[[str], None],
        timeout: float = DEFAULT_TIMEOUT,
        wait: float = 0.0,
        sender: str = "operator",
    ) -> Conversation:
        """Deliver ``text`` to ``claw`` and wait for its reply, streamed to
        ``on_text`` piece by piece (the CLI's ``say`` and the panel's chat).
        ``sender`` is who the channel says wrote it (the CLI: the operator;
        the web chat: the logged-in account), stored and shown to the agent."""
        if not text.strip():
            raise InvalidInput("the message is empty", f'usage: clawden claw say {claw} "TEXT"')
        # Validate and reach the claw before storing anything: a message that
        # was never attempted is not left behind as undelivered.
        transport = self.transport_for(claw, wait)
        return converse(
            self._messages,
            transport,
            claw,
            text,
            channel=channel,
            sender=sender,
            timeout=timeout,
            command=self._agent_command,
            warm=self._warm_command,
            on_text=on_text,
        )


def _relay(send: Callable[[Reply], None]) -> Callable[[str], None]:
    """Pieces of a streaming reply to the client, as ``{"delta": text}``
    (untrusted model text, passed on as data: the CLI escapes it). A client
    that hung up stops getting them, and the delivery goes on, so the reply
    is still stored."""
    gone = False

    def relay(piece: str) -> None:
        nonlocal gone
        if gone:
            return
        try:
            send({"delta": piece})
        except OSError:
            gone = True

    return relay
