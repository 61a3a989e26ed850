"""Installing a skill uploaded to the panel (``POST /claws/{name}/skills``).

A skill becomes part of what a claw reads and may run, so the panel's path
needs an admin and a fresh TOTP code, spent exactly as a decision spends one
(``second_factor.require_fresh_code``: once only, failures counted towards
the lockout and audited as ``skill.totp_failed``). Everything that can be
refused for free is refused before the code is looked at, so no code is
spent on it: a member, a claw that is not running, an archive that breaks a
rule of ``prepare_skill`` (traversal, links, sizes, no SKILL.md). The copy
and the record then take the one install path the CLI takes
(``workspace/skill_install.py``), audited ``skill.add`` with the admin as
actor, the skill's name and its sha256. Root at the CLI needs no code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.accounts.second_factor import refuse_if_code_locked, require_fresh_code
from appliance.core.accounts import Forbidden, unknown_claw_for
from appliance.core.approvals import Clock, utc_clock
from appliance.core.textsafe import printable
from appliance.store import Store
from appliance.store.skills import InstalledSkill
from appliance.workspace.skill_install import CopyTree, install_prepared, require_running
from appliance.workspace.skills import SkillLimits, prepare_skill

# Kept in the skills table (and the audit entry) as where the skill came
# from; the file name is the browser's, so it is hostile text, cut short.
MAX_SHOWN_FILENAME = 120


@dataclass(frozen=True)
class Uploaded:
    """What was installed, for the page that confirms it."""

    skill: InstalledSkill
    description: str  # from SKILL.md: hostile text
    files: int
    total_bytes: int


def install_uploaded_skill(
    store: Store,
    user_name: str,
    claw: str,
    archive: Path,
    filename: str,
    code: str,
    copy: CopyTree,
    stage: Path,
    limits: SkillLimits | None = None,
    clock: Clock = utc_clock,
) -> Uploaded:
    """Validate ``archive`` (an upload written under ``stage``, a folder from
    ``workspace/skill_install.staging``), spend ``user_name``'s ``code`` and
    install the skill on ``claw`` through ``copy``."""
    now = clock()
    user = store.users.require(user_name)
    if store.claws.get(claw) is None:
        raise unknown_claw_for(user, claw)
    if not user.is_admin:
        raise Forbidden(
            f"{user.name} is a member; only an admin installs skills",
            "ask an admin to install it",
        )
    require_running(store.claws, claw)
    with prepare_skill(None, archive, limits, tmp_dir=stage) as skill:
        refuse_if_code_locked(store, user, "installing a skill with a TOTP code", now)
        require_fresh_code(
            store,
            user,
            code,
            now,
            lambda why: store.audit.append(
                user.actor, "skill.totp_failed", claw, {"skill": skill.name, "reason": why}
            ),
        )
        base = filename.replace("\\", "/").rsplit("/", 1)[-1]
        shown = printable(base)[:MAX_SHOWN_FILENAME] or "(no name)"
        installed = install_prepared(
            store, copy, claw, skill, f"uploaded in the panel: {shown}", user.actor
        )
        return Uploaded(installed, skill.description, len(skill.files), skill.total_bytes)
