"""The claw's OpenClaw-compatible workspace: prompt assembly and memory files.

Runs in the guest as the `claw` user on ``/data/workspace``. Everything in the
workspace was written by the claw (or imported from an OpenClaw install), so
it is data, never code, and it may be hostile: a planted symlink must not turn
"read MEMORY.md" into "read some other file". Every path is therefore resolved,
checked to stay inside the workspace, and then opened component by component
with ``O_NOFOLLOW`` so a link swapped in afterwards fails instead of escaping.

Prompt order, priority and caps are documented in docs/workspace.md.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from .confined import WorkspaceError, confined_parts, open_parent, read_confined
from .skills import SkillIndex, index_text, scan_skills

DEFAULT_PER_FILE_CAP = 20_000  # characters; OpenClaw's bootstrapMaxChars default
DEFAULT_TOTAL_CAP = 60_000
STATE_FILE = ".openclaw/workspace-state.json"  # where OpenClaw records onboarding
_MIN_SECTION = 200  # a part squeezed below this by the total cap is dropped, not shown
_MAX_APPEND = 16_384
_DAILY = re.compile(r"^\d{4}-\d{2}-\d{2}\.md$")

# Reading order in the prompt (who I am, who I serve, how I work, what I know).
_ORDER = ("BOOTSTRAP.md", "IDENTITY.md", "SOUL.md", "USER.md", "AGENTS.md", "TOOLS.md")
_ORDER_TAIL = ("MEMORY.md", "@yesterday", "@today", "HEARTBEAT.md", "@skills")
# What survives the total cap first; the end of this list is dropped first.
_PRIORITY = (
    "SOUL.md", "IDENTITY.md", "USER.md", "AGENTS.md", "BOOTSTRAP.md",
    "MEMORY.md", "@today", "@yesterday", "TOOLS.md", "HEARTBEAT.md", "@skills",
)  # fmt: skip


@dataclass(frozen=True)
class PartReport:
    name: str
    status: str  # included | truncated | dropped | missing | refused | skipped
    reason: str = ""
    chars: int = 0


@dataclass
class AssembledPrompt:
    text: str
    parts: list[PartReport] = field(default_factory=list)

    def status_of(self, name: str) -> str:
        return next((p.status for p in self.parts if p.name == name), "absent")


@dataclass(frozen=True)
class MemoryHit:
    path: str
    line: int
    snippet: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.snippet}"


def _truncate(name: str, text: str, cap: int, why: str) -> str:
    """Keep the head (70 %) and tail (20 %) with a visible marker between them."""
    if len(text) <= cap:
        return text
    marker = f"\n\n[... {name} truncated by clawden: {why}; middle part omitted ...]\n\n"
    room = max(cap - len(marker), 0)
    head, tail = room * 7 // 9, room * 2 // 9
    return (text[:head] + marker + (text[-tail:] if tail else ""))[:cap]


# ---- bootstrap state ------------------------------------------------------------
def bootstrap_done(workspace: Path) -> bool:
    try:
        raw, _ = read_confined(workspace, STATE_FILE, 65_536)
        state = json.loads(raw)
    except (OSError, WorkspaceError, ValueError):
        return False
    return isinstance(state, dict) and bool(state.get("onboardingCompletedAt"))


def bootstrap_pending(workspace: Path) -> bool:
    """First run: BOOTSTRAP.md exists and onboarding was never marked complete."""
    try:
        read_confined(workspace, "BOOTSTRAP.md", 1)
    except (OSError, WorkspaceError):
        return False
    return not bootstrap_done(workspace)


def mark_bootstrap_done(workspace: Path, now: datetime) -> None:
    """Record onboarding the way OpenClaw does, so an exported workspace agrees."""
    body = json.dumps({"version": 1, "onboardingCompletedAt": now.isoformat()}) + "\n"
    _write_confined(workspace, STATE_FILE, body, append=False)


# ---- prompt assembly ------------------------------------------------------------
def _daily_name(day: datetime) -> str:
    return f"memory/{day.strftime('%Y-%m-%d')}.md"


def _load_parts(
    workspace: Path,
    now: datetime,
    cap: int,
    names: tuple[str, ...],
    reports: list[PartReport],
    skills: SkillIndex | None = None,
) -> dict[str, tuple[str, str, bool]]:
    """Name -> (label, body capped to ``cap``, was it cut) for every part read."""
    aliases = {"@today": _daily_name(now), "@yesterday": _daily_name(now - timedelta(days=1))}
    loaded: dict[str, tuple[str, str, bool]] = {}
    for key in names:
        if key == "@skills":
            index = scan_skills(workspace) if skills is None else skills
            reports += [PartReport(f"skills/{n}", "skipped", why) for n, why in index.skipped]
            body = index_text(index)
            if body:
                loaded[key] = ("Skills (load one by name when a task needs it)", body, False)
            continue
        label = aliases.get(key, key)
        try:
            text, _size = read_confined(workspace, label, cap * 4 + 4)
        except FileNotFoundError:
            reports.append(PartReport(label, "missing"))
            continue
        except (OSError, WorkspaceError) as exc:
            reports.append(PartReport(label, "refused", str(exc)))
            continue
        if not text.strip():
            reports.append(PartReport(label, "skipped", "empty"))
            continue
        cut = _truncate(label, text, cap, f"longer than {cap} characters")
        loaded[key] = (label, cut, len(text) > cap)
    return loaded


def _render(
    loaded: dict[str, tuple[str, str, bool]],
    total_cap: int,
    header: str,
    order: tuple[str, ...],
    priority: tuple[str, ...],
    reports: list[PartReport],
) -> str:
    """Fit parts into ``total_cap`` by priority, then write them in reading order."""
    budget = total_cap - len(header)
    kept: dict[str, str] = {}
    for key in priority:
        if key not in loaded:
            continue
        label, body, was_cut = loaded[key]
        why = "per-file cap" if was_cut else ""
        section = f"\n## {label}\n\n{body.rstrip()}\n"
        if len(section) > budget:
            overhead = len(section) - len(body.rstrip())
            if budget - overhead < _MIN_SECTION:
                reports.append(PartReport(label, "dropped", "total cap reached"))
                budget = 0
                continue
            body = _truncate(label, body.rstrip(), budget - overhead, "total prompt cap")
            section = f"\n## {label}\n\n{body}\n"
            was_cut, why = True, "total cap"
        budget -= len(section)
        kept[key] = section
        status = "truncated" if was_cut else "included"
        reports.append(PartReport(label, status, why, len(section)))
    return header + "".join(kept[k] for k in order if k in kept)


def assemble_system_prompt(
    workspace: Path,
    now: datetime,
    *,
    per_file_cap: int,
    total_cap: int,
    first_run: bool,
    skills: SkillIndex | None = None,
) -> AssembledPrompt:
    """The workspace part of the system prompt, never longer than ``total_cap``.

    ``skills`` is the host-verified index the agent passes; None scans the
    folder unchecked (parsing tests, the host's own import preview).
    """
    reports: list[PartReport] = []
    order: tuple[str, ...] = _ORDER + _ORDER_TAIL
    if not first_run:
        order = tuple(k for k in order if k != "BOOTSTRAP.md")
        reports.append(PartReport("BOOTSTRAP.md", "skipped", "not the first run"))
    loaded = _load_parts(workspace, now, per_file_cap, order, reports, skills)
    header = f"# Workspace context ({now.strftime('%Y-%m-%d %H:%M')})\n"
    priority = tuple(k for k in _PRIORITY if k in order)
    text = _render(loaded, total_cap, header, order, priority, reports)
    return AssembledPrompt(text[:total_cap], reports)


def light_heartbeat_context(
    workspace: Path, now: datetime, *, per_file_cap: int = 4_000, total_cap: int = 8_000
) -> AssembledPrompt:
    """IDENTITY.md and HEARTBEAT.md only: heartbeats run often and must stay cheap.

    HEARTBEAT.md's HTML comments are left out: they are notes for whoever edits
    the checklist (the starter file's explain how it works), never tasks — the
    host's pre-check and ``heartbeat_checklist_empty`` ignore them too.
    """
    reports: list[PartReport] = []
    keys = ("IDENTITY.md", "HEARTBEAT.md")
    loaded = _load_parts(workspace, now, per_file_cap, keys, reports)
    if "HEARTBEAT.md" in loaded:
        label, body, was_cut = loaded["HEARTBEAT.md"]
        loaded["HEARTBEAT.md"] = (label, _without_comments(body), was_cut)
    header = f"# Heartbeat ({now.strftime('%Y-%m-%d %H:%M')})\n"
    text = _render(loaded, total_cap, header, keys, ("HEARTBEAT.md", "IDENTITY.md"), reports)
    return AssembledPrompt(text[:total_cap], reports)


def _without_comments(text: str) -> str:
    """``text`` without HTML comments (an unterminated one hides the rest, as in
    the host's check) and without the blank runs they leave."""
    text = re.sub(r"<!--.*?(?:-->|\Z)", "", text, flags=re.S)
    return re.sub(r"\n{3,}", "\n\n", text)


def heartbeat_checklist_empty(workspace: Path) -> bool:
    """True when HEARTBEAT.md holds nothing but headings, comments and blanks."""
    try:
        text, _ = read_confined(workspace, "HEARTBEAT.md", 65_536)
    except (OSError, WorkspaceError):
        return True
    text = _without_comments(text)
    return all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines())


# ---- memory tools ---------------------------------------------------------------
def _write_confined(workspace: Path, rel: str, text: str, *, append: bool) -> None:
    comps = confined_parts(workspace, rel)
    parent = open_parent(workspace, comps, create=True)
    mode = os.O_APPEND if append else os.O_TRUNC
    try:
        flags = os.O_WRONLY | os.O_CREAT | mode | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(comps[-1], flags, 0o644, dir_fd=parent)
    except OSError as exc:
        raise WorkspaceError(f"{rel} cannot be written safely ({exc.strerror})") from exc
    finally:
        os.close(parent)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WorkspaceError(f"{rel} is not a regular file")
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def memory_append(workspace: Path, text: str, now: datetime) -> str:
    """Append a timestamped entry to today's daily note; returns its path."""
    entry = text.strip()
    if not entry:
        raise WorkspaceError("nothing to remember: the text is empty")
    if len(entry) > _MAX_APPEND:
        raise WorkspaceError(f"a memory entry is limited to {_MAX_APPEND} characters")
    rel = _daily_name(now)
    try:
        read_confined(workspace, rel, 1)
        prefix = ""
    except FileNotFoundError:
        prefix = f"# {now.strftime('%Y-%m-%d')}\n"
    _write_confined(
        workspace, rel, f"{prefix}\n## {now.strftime('%H:%M')}\n\n{entry}\n", append=True
    )
    return rel


def _memory_files(workspace: Path) -> list[str]:
    """MEMORY.md then memory/*.md, newest daily note first."""
    names = ["MEMORY.md"]
    try:
        listed = os.listdir(os.path.join(os.path.realpath(workspace), "memory"))
    except OSError:
        listed = []
    daily = sorted((n for n in listed if _DAILY.match(n)), reverse=True)
    other = sorted(n for n in listed if n.endswith(".md") and not _DAILY.match(n))
    return names + [f"memory/{n}" for n in daily + other]


def memory_search(workspace: Path, query: str, limit: int = 20) -> list[MemoryHit]:
    """Lines containing the query's words (case-insensitive), best matches first."""
    words = {w for w in re.findall(r"\w+", query.lower()) if w}
    if not words:
        return []
    scored: list[tuple[int, int, MemoryHit]] = []
    for rank, rel in enumerate(_memory_files(workspace)):
        try:
            text, _ = read_confined(workspace, rel, 4 * 1024 * 1024)
        except (OSError, WorkspaceError):
            continue  # a link out of the workspace is simply not searched
        for number, line in enumerate(text.splitlines(), start=1):
            found = set(re.findall(r"\w+", line.lower())) & words
            if found:
                hit = MemoryHit(rel, number, line.strip()[:240])
                scored.append((-len(found), rank, hit))
    scored.sort(key=lambda s: (s[0], s[1], s[2].line))
    return [hit for _, _, hit in scored[:limit]]


def memory_read(workspace: Path, name: str, max_chars: int = DEFAULT_PER_FILE_CAP) -> str:
    """MEMORY.md or a file under memory/, confined to the workspace."""
    if name != "MEMORY.md" and not (name.startswith("memory/") and name.endswith(".md")):
        raise WorkspaceError(f"{name!r} is not a memory file (MEMORY.md or memory/*.md)")
    try:
        text, _ = read_confined(workspace, name, max_chars * 4 + 4)
    except FileNotFoundError as exc:
        raise WorkspaceError(f"{name} does not exist yet") from exc
    return _truncate(name, text, max_chars, f"longer than {max_chars} characters")
