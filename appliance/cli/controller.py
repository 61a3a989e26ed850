"""``clawden serve`` and ``clawden reconcile``: the controller."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from appliance.app import (
    build_context,
    controller_logging,
    controller_say,
    journal_stream,
    service_registry,
)
from appliance.channel.logring import WarningRing
from appliance.cli.output import Subparsers, progress
from appliance.controller.reconcile import reconcile
from appliance.core.errors import InvalidInput
from appliance.core.quotas import Refusals

if TYPE_CHECKING:
    from appliance.controller.context import Context
    from appliance.controller.daemon import Controller
    from web.server import PanelServer


def register(sub: Subparsers) -> None:
    serve_cmd = sub.add_parser(
        "serve", help="run the controller in the foreground (owns the claws' channels)"
    )
    serve_cmd.add_argument(
        "--listen",
        metavar="ADDR[:PORT]",
        default="127.0.0.1",
        help="where the admin panel listens (default 127.0.0.1:7780); any address but"
        " loopback is served over TLS",
    )
    serve_cmd.add_argument("--tls-cert", metavar="PEM", help="your certificate for --listen")
    serve_cmd.add_argument("--tls-key", metavar="PEM", help="its private key")
    serve_cmd.add_argument("--no-panel", action="store_true", help="run without the admin panel")
    serve_cmd.set_defaults(handler=serve)
    rec = sub.add_parser(
        "reconcile", help="finish or undo interrupted operations; fix drift and orphans"
    )
    rec.set_defaults(handler=do_reconcile)


def serve(args: argparse.Namespace) -> int:
    from appliance.controller.daemon import Controller

    # One context for the controller and its services: the host API serves
    # claws from the same store connection the controller uses.
    ctx = build_context(actor="controller")
    warnings = WarningRing()
    log_budget = controller_logging(ctx.settings, ring=warnings)
    # Quota refusals are counted in memory, never stored: the host API and
    # the scheduler count them, the controller reports them to `claw status`.
    refusals = Refusals()
    controller = Controller(
        lambda: ctx,
        service_registry(ctx.settings, ctx.store, refusals),
        say=controller_say,
        refusals=refusals,
    )

    panel = None if args.no_panel else _panel(args, ctx, controller, warnings)

    def _stop(signum: int, frame: FrameType | None) -> None:
        controller.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # main() restores SIGPIPE's default for the CLI (`clawden … | head`), but
    # the controller writes to sockets others may close at any time (a claw's
    # forwarded connection, a VM's channel, a CLI client): that is an error to
    # handle, never a reason for the process to die.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    panel_lines: list[str] = []
    if panel is not None:
        # Serving from the start; its address is printed once the controller
        # is ready, as the last lines (a first reconcile may print many).
        panel_lines = panel.start(show_setup_link=not _stdout_is_a_log())
        # Where the panel answers, for `clawden doctor` and `clawden panel
        # setup-link` (not a secret; gone when the controller stops).
        panel_url_file(ctx.settings.run_dir).write_text(panel.listen.url + "\n")

    def _show_panel() -> None:
        # Printed, never logged: the setup link is a secret. Under systemd
        # stdout is the journal, a log, so no link is made there at all.
        for line in panel_lines:
            print(line, flush=True)

    try:
        controller.run(when_ready=_show_panel)
    finally:
        if panel is not None:
            panel_url_file(ctx.settings.run_dir).unlink(missing_ok=True)
            panel.stop()
    log_budget.flush()
    return 0


def _stdout_is_a_log() -> bool:
    """Under a systemd service (``JOURNAL_STREAM`` set) stdout is the journal
    unless it is a terminal: systemd may name only stderr's stream, so the
    variable's presence is enough to keep a secret off stdout."""
    if journal_stream(sys.stdout):
        return True
    return "JOURNAL_STREAM" in os.environ and not sys.stdout.isatty()


def panel_url_file(run_dir: Path) -> Path:
    return run_dir / "panel.url"


def _panel(
    args: argparse.Namespace, ctx: Context, controller: Controller, warnings: WarningRing
) -> PanelServer:
    from web.controller_ops import ControllerClawOps
    from web.server import PanelServer, parse_listen

    listen = parse_listen(args.listen)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise InvalidInput("--tls-cert and --tls-key go together", "give both, or neither")
    if args.tls_cert is not None:
        listen = dataclasses.replace(listen, cert=Path(args.tls_cert), key=Path(args.tls_key))
    return PanelServer(
        ctx.store,
        ctx.settings.home,
        ControllerClawOps(controller, ctx),
        listen,
        recent_warnings=warnings.recent,
    )


def do_reconcile(args: argparse.Namespace) -> int:
    report = reconcile(build_context(), progress)
    for line in report.errors:
        print(f"could not fix: {line}", file=sys.stderr)
    if not report.changed and not report.errors:
        print("nothing to do: libvirt and the store agree")
    else:
        print(
            f"resumed {len(report.resumed)}, renamed {len(report.renamed)}, "
            f"restarted {len(report.restarted)}, "
            f"stopped {len(report.stopped)}, orphans removed {len(report.orphans_removed)}, "
            f"errors {len(report.errors)}"
        )
    return 1 if report.errors else 0
