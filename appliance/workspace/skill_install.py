"""Installing a validated skill into a claw: the one path ``clawden skill
add``, ``clawden claw import`` and the panel's upload share.

A skill is staged on the host first (``prepare_skill``) in a fresh 0700
folder under ``$CLAWDEN_HOME/tmp`` — the only place the controller's
``put_tree`` copies from — then copied whole into ``skills/<name>`` over the
claw's channel, and only after that copy succeeded recorded in the
``skills`` table and audited as ``skill.add``: the record is what the claw
checks before it indexes a skill (docs/security.md, "Skills"). How the copy
travels is the caller's (the CLI asks the controller over its socket, the
panel runs inside the controller), so it is handed in as ``CopyTree``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.core.errors import Conflict
from appliance.core.model import ClawState
from appliance.store import ClawRepository, Store
from appliance.store.skills import InstalledSkill
from appliance.workspace.skills import PreparedSkill

# (claw, staged source folder, destination under the workspace, "replace" or
# "merge"): copies the folder into the running claw or raises a ClawdenError.
CopyTree = Callable[[str, Path, str, str], object]


def require_running(claws: ClawRepository, name: str) -> None:
    """Refuse before staging anything when the claw cannot take files now."""
    claw = claws.require(name)
    if claw.state is not ClawState.RUNNING:
        raise Conflict(
            f"claw {name!r} is {claw.state.value}; files are copied into a running claw",
            f"start it (`clawden claw start {name}`, or Start on its panel page), then try again",
        )


@contextmanager
def staging(home: Path) -> Iterator[Path]:
    """A fresh 0700 folder under ``home/tmp``, removed afterwards (whatever
    happens: a refused skill leaves nothing behind)."""
    parent = home / "tmp"
    parent.mkdir(mode=0o700, exist_ok=True)
    parent.chmod(0o700)
    path = Path(tempfile.mkdtemp(prefix="stage-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def install_prepared(
    store: Store, copy: CopyTree, claw: str, skill: PreparedSkill, source: str, actor: str
) -> InstalledSkill:
    """Copy one prepared skill into ``skills/<name>`` (replacing any older
    version whole) and record and audit it, in that order."""
    copy(claw, skill.root, f"skills/{skill.name}", "replace")
    with store.transaction():
        installed = store.skills.record(claw, skill.name, skill.content_hash, source)
        store.audit.append(
            actor,
            "skill.add",
            claw,
            {"skill": skill.name, "sha256": skill.content_hash, "source": installed.source},
        )
    return installed
