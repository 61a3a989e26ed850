"""``clawden skill add|list|rm`` and ``clawden claw import``: host files into a claw.

Everything is validated and staged on the host first (``appliance.workspace.skills``,
``appliance.workspace.importer``) in a fresh 0700 folder under
``$CLAWDEN_HOME/tmp``; the controller then copies the staged tree over the
claw's channel (``put_tree``, appliance/controller/guestcopy.py). A skill is
recorded as installed only after its copy succeeded: the record is what the
claw checks before it indexes a skill (docs/security.md, "Skills"). The
staging, the copy-then-record order and the ``skill.add`` audit entry live in
``appliance/workspace/skill_install.py``, shared with the panel's upload.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from appliance.app import build_context
from appliance.cli.output import Subparsers, progress
from appliance.config import Settings
from appliance.controller import rpc
from appliance.controller.context import Context
from appliance.core.errors import ClawdenError, InvalidInput, NotFound
from appliance.core.model import ClawState, validate_claw_name
from appliance.core.textsafe import printable
from appliance.guest.skills import NAME_RE
from appliance.workspace.importer import inspect_workspace, plan_lines, stage_import
from appliance.workspace.skill_install import install_prepared, require_running, staging
from appliance.workspace.skills import PreparedSkill, describe_lines, prepare_skill

GUEST_SKILLS = "/data/workspace/skills"


def register(sub: Subparsers) -> None:
    skill = sub.add_parser("skill", help="skills installed on claws").add_subparsers(
        dest="skill_command", metavar="ACTION", required=True
    )
    kadd = skill.add_parser("add", help="install a skill (folder, .tar.gz, .zip) on a running claw")
    kadd.add_argument("name", help="the claw")
    kadd.add_argument("source", metavar="PATH_OR_ARCHIVE", help="the skill's folder or archive")
    kadd.set_defaults(handler=skill_add)
    klist = skill.add_parser("list", help="list installed skills with their sha256")
    klist.add_argument("name", nargs="?", help="one claw (default: all)")
    klist.set_defaults(handler=skill_list)
    krm = skill.add_parser("rm", help="uninstall a skill from a claw")
    krm.add_argument("name", help="the claw")
    krm.add_argument("skill", help="the skill's name")
    krm.set_defaults(handler=skill_rm)


def register_import(claw: Subparsers) -> None:
    """``claw import``: listed under ``claw`` but one of the host-files commands."""
    imp = claw.add_parser("import", help="copy an OpenClaw workspace into a running claw")
    imp.add_argument("name")
    imp.add_argument("path", help="the workspace folder (e.g. ~/.openclaw/workspace)")
    imp.set_defaults(handler=claw_import)


def put_tree(settings: Settings, claw: str, source: Path, dest: str, mode: str) -> dict[str, Any]:
    """Ask the controller to copy ``source`` into the claw, showing its progress."""
    request = {
        "op": "put_tree",
        "claw": claw,
        "source": str(source),
        "dest": dest,
        "mode": mode,
        "wait": 60,
    }
    final: dict[str, Any] = {}
    for reply in rpc.stream(settings.controller_socket, request):
        if "progress" in reply:
            progress(printable(str(reply["progress"])))
        final = reply
    return final


def _install(ctx: Context, claw: str, skill: PreparedSkill, how: str) -> None:
    """The shared install path (``workspace/skill_install.py``), copying
    through the controller's ``put_tree``."""

    def copy(name: str, source: Path, dest: str, mode: str) -> None:
        put_tree(ctx.settings, name, source, dest, mode)

    install_prepared(ctx.store, copy, claw, skill, how, ctx.actor)


def skill_add(args: argparse.Namespace) -> int:
    claw = validate_claw_name(args.name)
    ctx = build_context()
    require_running(ctx.claws, claw)
    source = Path(args.source).absolute()
    with staging(ctx.settings.home) as stage, prepare_skill(None, source, tmp_dir=stage) as skill:
        for line in describe_lines(skill):
            print(line)
        _install(ctx, claw, skill, printable(str(source)))
    print(
        f"installed skill {skill.name} on {claw} (sha256 {skill.content_hash}); "
        "it is offered from the claw's next message"
    )
    return 0


def skill_list(args: argparse.Namespace) -> int:
    claw = None if args.name is None else validate_claw_name(args.name)
    rows = build_context().store.skills.list(claw)
    if not rows:
        print("no skills installed — add one with `clawden skill add NAME PATH_OR_ARCHIVE`")
        return 0
    print(f"{'CLAW':<20} {'SKILL':<28} {'INSTALLED':<26} SHA256")
    for s in rows:
        print(f"{s.claw:<20} {s.name:<28} {s.installed_at:<26} {s.content_hash}")
    return 0


def skill_rm(args: argparse.Namespace) -> int:
    claw = validate_claw_name(args.name)
    if not NAME_RE.match(args.skill):
        raise InvalidInput(
            f"{printable(repr(args.skill))} is not a skill name", f"see `clawden skill list {claw}`"
        )
    ctx = build_context()
    record = ctx.claws.require(claw)
    # Dropping the record first is what matters: the claw stops indexing the
    # skill at its next message, whether or not its files can be removed now.
    if not ctx.store.skills.remove(claw, args.skill):
        raise NotFound(
            f"claw {claw!r} has no skill {args.skill!r} installed",
            f"see `clawden skill list {claw}`",
        )
    ctx.audit.append(ctx.actor, "skill.rm", claw, {"skill": args.skill})
    if record.state is not ClawState.RUNNING:
        print(f"removed skill {args.skill} from {claw}; it is no longer offered")
        print(f"note: {claw} is not running, so its files stay in skills/ (unused)")
        return 0
    argv = ["rm", "-rf", "--", f"{GUEST_SKILLS}/{args.skill}"]
    code = 0
    request = {"op": "exec", "claw": claw, "argv": argv, "timeout": 60, "wait": 60}
    for reply in rpc.stream(ctx.settings.controller_socket, request):
        code = int(reply.get("exit", code))
    print(f"removed skill {args.skill} from {claw}; it is no longer offered")
    if code != 0:
        print(f"note: deleting its files failed (exit {code}); they stay unused", file=sys.stderr)
    return 0


def _prepare_imported(
    stage: Path, staged_skills: Path, names: list[str], skipped: list[tuple[str, str]]
) -> list[PreparedSkill]:
    """Validate each imported skill with the same checks as `skill add`."""
    prepared: list[PreparedSkill] = []
    for name in names:
        try:
            prepared.append(prepare_skill(name, staged_skills / name, tmp_dir=stage))
        except ClawdenError as exc:
            skipped.append((f"skills/{name}", f"not a valid skill: {exc.what}"))
    return prepared


def claw_import(args: argparse.Namespace) -> int:
    claw = validate_claw_name(args.name)
    ctx = build_context()
    require_running(ctx.claws, claw)
    plan = inspect_workspace(Path(args.path).absolute())
    for line in plan_lines(claw, plan):
        print(line)
    skipped: list[tuple[str, str]] = []
    with staging(ctx.settings.home) as stage:
        tree = stage / "workspace"
        stage_import(plan, tree)
        # Skills travel on their own: each replaces its folder whole and is
        # recorded, so the claw's hash check matches exactly these files.
        staged_skills = stage / "skills"
        if (tree / "skills").exists():
            shutil.move(tree / "skills", staged_skills)
        skills = _prepare_imported(stage, staged_skills, plan.skills, skipped)
        try:
            result = put_tree(ctx.settings, claw, tree, "", "merge")
            for skill in skills:
                _install(ctx, claw, skill, f"imported from {printable(str(plan.source))}")
        finally:
            for skill in skills:
                skill.cleanup()
    ctx.audit.append(
        ctx.actor,
        "claw.import",
        claw,
        {
            "source": printable(str(plan.source)),
            "files": len(plan.files),
            "skills": [s.name for s in skills],
        },
    )
    for path, reason in skipped:
        print(f"  skipped {printable(path)}: {reason}")
    print(
        f"imported into {claw}: {result.get('files', 0)} files written, "
        f"{result.get('unchanged', 0)} already identical, "
        f"{len(skills)} skills installed ({', '.join(s.name for s in skills) or 'none'})"
    )
    backed_up = result.get("backed_up") or []
    if backed_up:
        print(
            f"replaced {len(backed_up)} existing files; the old versions are in "
            f"{printable(str(result.get('backup_dir')))} on the claw"
        )
    return 0
