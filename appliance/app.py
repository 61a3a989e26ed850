"""The composition root: the one place adapters are constructed and wired
together, and the one place ``Settings`` is read from the environment.

Everything below it takes what it needs as arguments: a ``Store`` (one
SQLite connection with every repository), a ``Hypervisor``, an accelerator
picker, the host services a claw reaches through its channel, the
controller's log handlers.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from logging.handlers import RotatingFileHandler
from typing import TextIO

from appliance.channel.forwarding import ServiceRegistry
from appliance.channel.logbudget import ClawLogBudget
from appliance.channel.logring import WarningRing
from appliance.config import Settings
from appliance.controller.context import AcceleratorPicker, Context
from appliance.core.ports import AcceleratorChoice, Hypervisor
from appliance.core.quotas import Pacer, Refusals
from appliance.hypervisor.accel import choose_accelerator
from appliance.hypervisor.libvirt_hypervisor import LibvirtHypervisor
from appliance.services.approval_mail import ApprovalMailer
from appliance.services.egress_stub import egress_stub_service
from appliance.services.hostapi import host_api_service
from appliance.services.llm_gateway import llm_gateway_service
from appliance.store import Store


def load_settings() -> Settings:
    """The installation's settings, from the environment (``CLAWDEN_HOME``,
    ``CLAWDEN_LIBVIRT_URI``, …); see ``appliance.config``."""
    return Settings.from_env()


def hypervisor(settings: Settings) -> Hypervisor:
    return LibvirtHypervisor(settings.libvirt_uri)


def accelerator_picker(settings: Settings) -> AcceleratorPicker:
    def pick() -> AcceleratorChoice:
        return choose_accelerator(
            settings.libvirt_uri,
            settings.installation_tag,
            # Not under run/ (0700): QEMU opens the probe's boot image by path.
            workdir=settings.home / "accel-probe",
            cache_file=settings.home / "accelerator.json",
        )

    return pick


def open_store(settings: Settings) -> Store:
    settings.ensure_dirs()  # before the database file, so the home gets its mode
    return Store.open(settings.db_path, audit_head=settings.audit_head_path)


def build_context(settings: Settings | None = None, actor: str = "cli") -> Context:
    settings = settings or load_settings()
    return Context(
        settings=settings,
        store=open_store(settings),
        hypervisor=hypervisor(settings),
        pick_accelerator=accelerator_picker(settings),
        actor=actor,
    )


def service_registry(
    settings: Settings, store: Store, refusals: Refusals | None = None
) -> ServiceRegistry:
    """Every host service a claw can reach through its channel, all on the
    controller's ``store``: the host API (7701), which counts the requests
    its quotas refuse in ``refusals`` (shared with the controller, which
    reports them); the LLM gateway (7702), which
    reads ``llm.toml`` per call, so a missing upstream is an OpenAI-shaped 503
    to the claw, never a failed start; and the egress stub (7703), which
    refuses until the egress proxy exists. The HTTP services share one
    ``Pacer``: a claw's requests to all of them together are paced."""
    pacer = Pacer()
    return ServiceRegistry(
        [
            host_api_service(
                store, refusals=refusals, pacer=pacer, notify=ApprovalMailer(settings.home)
            ),
            llm_gateway_service(store, settings.home, pacer),
            egress_stub_service(),
        ]
    )


# `clawden serve` logs to CLAWDEN_HOME/logs/controller.log (and .1 … .5).
CONTROLLER_LOG_BYTES = 10 * 1024 * 1024
CONTROLLER_LOG_BACKUPS = 5
# INFO: a claw's channel coming up, each model call, each refusal — what an
# operator needs to tell what happened after the fact, at a few lines a minute.
CONTROLLER_LOG_LEVEL = logging.INFO
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The journal stamps every line itself; a "<N>" prefix sets its priority, so
# `journalctl -u clawden -p warning` works (sd-daemon(3), SyslogLevelPrefix).
JOURNAL_FORMAT = "%(name)s: %(message)s"
# What the controller tells its operator (stdout) goes into the file too.
SAID = logging.getLogger("appliance.controller.said")


def journal_stream(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is connected to the systemd journal: systemd sets
    ``JOURNAL_STREAM`` to the ``device:inode`` of the stream it connected,
    which a redirect in between (say, to a file) no longer matches."""
    wanted = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return bool(wanted) and wanted == f"{st.st_dev}:{st.st_ino}"


class JournalFormatter(logging.Formatter):
    """``<priority>name: message``: syslog priorities from logging levels."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.CRITICAL:
            priority = 2
        elif record.levelno >= logging.ERROR:
            priority = 3
        elif record.levelno >= logging.WARNING:
            priority = 4
        elif record.levelno >= logging.INFO:
            priority = 6
        else:
            priority = 7
        # Every line of a traceback gets the prefix: journald reads each
        # line as an entry of its own.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def controller_logging(
    settings: Settings,
    root: logging.Logger | None = None,
    stderr: TextIO | None = None,
    env: Mapping[str, str] | None = None,
    ring: WarningRing | None = None,
) -> ClawLogBudget:
    """The controller's log at INFO: stderr (as every command has; the
    journal where systemd runs it, with priorities) plus a rotating file
    under ``settings.logs_dir``, all behind one per-claw budget, so a claw
    that makes the host log can neither fill its disk nor bury other lines.
    ``SAID`` (what ``controller_say`` printed) goes to the file alone: stdout
    already carried it to the terminal or the journal. ``ring`` holds the
    recent warnings the panel's dashboard shows, behind the same budget."""
    root = root or logging.getLogger()
    stderr = stderr or sys.stderr
    root.setLevel(CONTROLLER_LOG_LEVEL)
    # httpx logs every request's full URL at INFO: a provider URL may carry
    # credentials, and the gateway logs each call (without them) already.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    settings.logs_dir.chmod(0o700)
    if not any(type(h) is logging.StreamHandler for h in root.handlers):
        root.addHandler(logging.StreamHandler(stderr))
    if journal_stream(stderr, env):
        for handler in root.handlers:
            if type(handler) is logging.StreamHandler:
                handler.setFormatter(JournalFormatter())
    to_file = RotatingFileHandler(
        settings.controller_log,
        maxBytes=CONTROLLER_LOG_BYTES,
        backupCount=CONTROLLER_LOG_BACKUPS,
        encoding="utf-8",
    )
    to_file.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(to_file)
    if ring is not None:
        root.addHandler(ring)
    budget = ClawLogBudget()
    for handler in root.handlers:
        handler.addFilter(budget)
    SAID.setLevel(logging.INFO)
    SAID.propagate = False
    SAID.handlers = [to_file]
    return budget


def controller_say(line: str) -> None:
    """What ``clawden serve`` tells its operator ("controller ready", what the
    first reconcile did, a claw's channel failing): stdout, and the log file.
    Never for secrets (the setup link): the file and the journal are logs."""
    print(line, flush=True)
    SAID.info(line)
