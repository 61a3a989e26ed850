"""What every route is handed: the panel's dependencies, built once by
``web/app.py`` (from ``clawden serve``, or a test) and kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from appliance.accounts.service import Accounts
from appliance.core.approvals import Clock, utc_clock
from appliance.store import Store
from web.ports import ClawOps


@dataclass
class Panel:
    store: Store
    accounts: Accounts
    claws: ClawOps
    home: Path
    # The key CSRF tokens are derived with (``web/auth.py``); kept in the home
    # so tokens in open pages survive a restart.
    csrf_key: bytes
    # Served over TLS: cookies get ``Secure`` and Origin checks expect https.
    secure: bool = False
    clock: Clock = utc_clock


def panel_of(request: Request) -> Panel:
    panel: Panel = request.app.state.panel
    return panel
