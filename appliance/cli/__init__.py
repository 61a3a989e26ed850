"""``clawden`` — the operator's command line.

One module per command group (``claws``, ``images``, ``schedules``,
``skills`` — with ``claw import`` —, ``approvals``, ``policy``, ``users``, ``audit``,
``llm``, ``host``, ``doctor``, ``controller``, ``panel``): each registers its parsers and points
every leaf at its handler with ``set_defaults(handler=…)``.

Every failure a user can cause or meet prints exactly one line, ``error: what —
fix``, and exits non-zero; nothing stored is touched by a command that fails
validation. Long operations print progress as they go.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from appliance import __version__
from appliance.cli import (
    approvals,
    audit,
    claws,
    controller,
    doctor,
    host,
    images,
    llm,
    panel,
    policy,
    schedules,
    skills,
    users,
)
from appliance.core.errors import ClawdenError
from appliance.core.textsafe import printable

# The order `clawden --help` lists them in.
GROUPS = (
    doctor,
    controller,
    host,
    images,
    claws,
    schedules,
    skills,
    approvals,
    policy,
    users,
    panel,
    llm,
    audit,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clawden",
        description="Run one hardened VM per family member's claw.",
    )
    p.add_argument("--version", action="version", version=f"clawden {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # A closed pipe (`clawden ... | head`) is not an error worth a traceback.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ClawdenError as exc:
        # Messages may quote guest-controlled bytes (an SSH banner, a name).
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "error: interrupted — run `clawden reconcile` to finish or undo what was started",
            file=sys.stderr,
        )
        return 130
