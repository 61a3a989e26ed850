"""``clawden panel setup-link``: the admin panel's address, and the one-time
link that creates the first admin.

``clawden serve`` prints that link itself when it runs in a terminal. Run as
a service its stdout is the journal — a log, readable by more than root — so
there it makes none, and the operator asks for one here instead. Each call
makes a new link (the one before stops working); once an admin exists there
is nothing to set up, and it prints where to sign in (so scripts/up.sh can
call it on every run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.app import load_settings, open_store
from appliance.cli.output import Subparsers

DEFAULT_URL = "http://127.0.0.1:7780"


def register(sub: Subparsers) -> None:
    panel = sub.add_parser("panel", help="the admin panel").add_subparsers(
        dest="panel_command", metavar="ACTION", required=True
    )
    link = panel.add_parser(
        "setup-link", help="print the panel's address and a one-time link to create the admin"
    )
    link.set_defaults(handler=setup_link)


def panel_url(run_dir: Path) -> str:
    """Where the running controller's panel answers (``clawden serve`` writes
    ``run/panel.url``), else the default address."""
    try:
        url = (run_dir / "panel.url").read_text().strip()
    except OSError:
        return DEFAULT_URL
    return url or DEFAULT_URL


def setup_link(args: argparse.Namespace) -> int:
    from web import setup_link as links

    settings = load_settings()
    url = panel_url(settings.run_dir)
    print(f"panel: {url}/")
    if open_store(settings).users.admin_count() > 0:
        print(f"an admin exists: sign in at {url}/login (lost password: `clawden user passwd`)")
        return 0
    token = links.mint(settings.home)
    print(f"create the admin at {url}/setup/{token}")
    print("(it works once; running this again makes a new one and ends this one)")
    return 0
