"""The starter workspace a brand-new claw finds: OpenClaw's files, short.

OpenClaw seeds a fresh workspace with AGENTS.md, SOUL.md, IDENTITY.md,
USER.md, HEARTBEAT.md and a one-time BOOTSTRAP.md; a claw does the same on
its first delivery so its prompt is not empty. Every file here goes into
every prompt, so the texts stay brief.

Seeding happens once per workspace, recorded by a marker file in the agent's
state directory: an owner (or the claw, after onboarding) deleting
BOOTSTRAP.md must not get it back on the next message. A file that exists is
never touched, and files are created with ``O_EXCL|O_NOFOLLOW`` through the
workspace's confined walk, so a link planted in the workspace is not followed.

The default HEARTBEAT.md holds only headings and HTML comments: the host reads
it before every heartbeat and calls no model unless it has real task text, so
an idle claw costs nothing.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

from .confined import WorkspaceError, confined_parts, open_parent

SEEDED_MARKER = "seeded"
DEFAULT_NAME = "claw"
DEFAULT_MEMBER = "your family member"
# Files whose presence means someone already shaped this workspace (an import).
_SHAPED = ("AGENTS.md", "SOUL.md", "IDENTITY.md", "USER.md", "MEMORY.md")

AGENTS = """\
# AGENTS.md - how you work

This folder is your home. Treat it that way.

## Every session
- SOUL.md is who you are; USER.md is who you help. They are already in your prompt.
- Today's and yesterday's notes in memory/ are in your prompt too.

## Memory
You wake up fresh each time; files are your continuity.
- memory/YYYY-MM-DD.md: daily notes, raw log (use memory_append).
- MEMORY.md: the curated long-term memory; keep it short and true.
- If you want to remember something, write it down. "Mental notes" are lost.

## Safety
- Never share your owner's private details with anyone else.
- Ask before doing anything you cannot undo; use request_approval for real-world actions.
- When in doubt, ask.

## Skills
Skills are installed by the owner. Load one with skill_load when a task needs it.
"""

SOUL = """\
# SOUL.md - who you are

- Be genuinely helpful, not performatively helpful. Skip the filler.
- Have opinions; say when something is a bad idea, kindly.
- Be resourceful before asking: read your files, check your memory.
- Earn trust through competence. Be careful with anything that leaves this machine.
- You are a guest in someone's life. Treat their privacy with respect.

This file is yours to evolve. If you change it, tell your owner.
"""

IDENTITY = """\
# IDENTITY.md - who am I?

- **Name:** {name}
- **Creature:** a family assistant living in its own small computer
- **Vibe:** warm, concise, practical
- **Started:** {date}

Update this as you figure out who you are.
"""

USER = """\
# USER.md - about your human

- **Name:** {member}
- **What to call them:** {member}
- **Timezone:**
- **Notes:**

Learn about the person you are helping and keep this up to date.
"""

HEARTBEAT = """\
# HEARTBEAT.md

<!--
This is your periodic checklist. While it holds only headings and comments,
heartbeats are skipped and cost nothing.

To give the heartbeat something to do, add a task line below, for example:
- Check whether anything on today's calendar needs a reminder.
Keep it short: it is read on every heartbeat.
-->
"""

BOOTSTRAP = """\
# BOOTSTRAP.md - hello, world

You just woke up for the first time. There is no memory yet; that is normal.

Start a conversation with {member}: introduce yourself as {name}, then figure
out together what they want to call you, how you should talk, and what they
need help with. Write what you learn into IDENTITY.md, USER.md and SOUL.md.

When you are done, delete this file (`rm BOOTSTRAP.md` with the shell tool).
You will not need it again.
"""


def _clean(value: str, fallback: str) -> str:
    """One short line without markup-breaking characters: it lands in every prompt."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", value).strip()[:64]
    return text or fallback


def _create(workspace: Path, rel: str, text: str) -> bool:
    """Create ``rel`` with ``text`` unless it exists; never through a link."""
    comps = confined_parts(workspace, rel)
    parent = open_parent(workspace, comps, create=True)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(comps[-1], flags, 0o644, dir_fd=parent)
    except FileExistsError:
        return False  # also a dangling link: left alone, not followed
    finally:
        os.close(parent)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return True


def _exists(workspace: Path, rel: str) -> bool:
    return os.path.lexists(os.path.join(os.path.realpath(workspace), rel))


def starter_files(name: str, member: str, now: datetime) -> dict[str, str]:
    """File name -> text of the starter workspace, in creation order."""
    values = {
        "name": _clean(name, DEFAULT_NAME),
        "member": _clean(member, DEFAULT_MEMBER),
        "date": now.strftime("%Y-%m-%d"),
    }
    return {
        "AGENTS.md": AGENTS,
        "SOUL.md": SOUL,
        "IDENTITY.md": IDENTITY.format(**values),
        "USER.md": USER.format(**values),
        "HEARTBEAT.md": HEARTBEAT,
        "BOOTSTRAP.md": BOOTSTRAP.format(**values),
    }


def seed_workspace(
    workspace: Path, name: str, member: str, now: datetime, *, state_dir: Path | None = None
) -> list[str]:
    """Create the missing starter files; returns the names created.

    With ``state_dir``, runs once: a ``seeded`` marker there makes later calls
    do nothing. BOOTSTRAP.md is only written into an empty workspace, so an
    imported one is not sent through onboarding again.
    """
    marker = state_dir / SEEDED_MARKER if state_dir is not None else None
    if marker is not None and os.path.lexists(marker):
        return []
    os.makedirs(workspace, mode=0o700, exist_ok=True)
    shaped = any(_exists(workspace, rel) for rel in _SHAPED)
    created: list[str] = []
    for rel, text in starter_files(name, member, now).items():
        if rel == "BOOTSTRAP.md" and shaped:
            continue
        try:
            if _create(workspace, rel, text):
                created.append(rel)
        except (OSError, WorkspaceError):
            continue  # a hostile entry where a file should be: skip it, seed the rest
    if marker is not None:
        os.makedirs(marker.parent, mode=0o700, exist_ok=True)
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(f"{now.isoformat()} {' '.join(created) or '-'}\n")
    return created
