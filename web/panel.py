"""What every route is handed: the panel's dependencies, built once by
``web/app.py`` (from ``clawden serve``, or a test) and kept on ``app.state``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from appliance.accounts.service import Accounts
from appliance.core.approvals import Clock, utc_clock
from appliance.llm.config import ConfigLoader
from appliance.store import Store
from appliance.workspace.skills import SkillLimits
from web.audit_check import AuditCheck
from web.ports import ClawOps

# The controller's recent WARNING+ log lines, newest first (in ``clawden
# serve``: ``WarningRing.recent``); hostile text, shown escaped.
RecentWarnings = Callable[[], list[str]]


def no_warnings() -> list[str]:
    return []


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
    recent_warnings: RecentWarnings = no_warnings
    # The audit chain's last verification (a full check of 100k rows takes
    # seconds, so the page shows this and re-checks on request).
    audit_check: AuditCheck = field(default_factory=AuditCheck)
    # What a skill uploaded on the claw page may be (the CLI's limits).
    skill_limits: SkillLimits = field(default_factory=SkillLimits)
    # llm.toml, parsed again only when it changes (the dashboard polls every
    # 5 s per open page; the gateway reads it the same way).
    llm_config: ConfigLoader = field(init=False)

    def __post_init__(self) -> None:
        self.llm_config = ConfigLoader(self.home)


def panel_of(request: Request) -> Panel:
    panel: Panel = request.app.state.panel
    return panel
