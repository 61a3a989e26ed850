"""Skills in the SKILL.md format: parse, index for the prompt, load on demand.

A skill is a folder ``skills/<name>/`` holding ``SKILL.md``: YAML front matter
(``name``, ``description``, optional requirements) and a Markdown body. Only
name and description go into every prompt; the body is read when the agent
asks for it, so many skills cost a few lines each. Skills are installed by the
host (``clawden skill add``), never by the claw, but the folder lives on the
claw's data disk, which the claw can write: so a skill is only indexed or
loaded when the host recorded it and its files still hash to that record
(``allowed``), and everything here treats the files as untrusted data.

The golden image may lack python3-yaml, so a small YAML subset (mappings,
block and flow lists, quoted, plain and block scalars) is parsed here; PyYAML
is used when importable. Both are tested to agree on real front matter.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .confined import WorkspaceError, confined_parts, read_confined
from .skillhash import skill_hash

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")  # Agent Skills naming
MAX_SKILL_MD = 256 * 1024
MAX_DESCRIPTION = 1024
MAX_INDEXED = 200
NOT_INSTALLED = "not installed by the host (skills are added by the owner with `clawden skill add`)"
CHANGED = "changed since it was installed — ask the owner to reinstall it"
_REQUIRE_KEYS = ("openclaw", "clawdbot", "clawdis")  # metadata.<key>.requires aliases


class SkillError(Exception):
    """A skill is missing or malformed; the message says which and why."""


@dataclass(frozen=True)
class SkillInfo:
    name: str
    description: str
    requires: dict[str, list[str]] = field(default_factory=dict, hash=False)


@dataclass
class SkillIndex:
    skills: list[SkillInfo] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (folder, reason)


def _yaml_module() -> ModuleType | None:
    try:
        return importlib.import_module("yaml")
    except ImportError:
        return None


# ---- the YAML subset ------------------------------------------------------------
def _scalar(raw: str) -> Any:
    text = raw.strip()
    if text.startswith('"'):
        try:
            return json.loads(text)  # YAML double quotes are JSON's for our purposes
        except ValueError as exc:
            raise SkillError(f"bad double-quoted string {text[:40]!r}") from exc
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'"):
            raise SkillError(f"unterminated single-quoted string {text[:40]!r}")
        return text[1:-1].replace("''", "'")
    if text.startswith(("{", "[")):
        try:
            return json.loads(text)
        except ValueError:
            if text.startswith("[") and text.endswith("]"):
                inner = text[1:-1].strip()
                return [_scalar(item) for item in inner.split(",")] if inner else []
            raise SkillError(f"unsupported flow value {text[:40]!r}") from None
    text = re.split(r"\s+#", text, maxsplit=1)[0].strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "~", ""):
        return None
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    return text


class _Subset:
    """Indentation-driven parser for the front matter YAML that skills use."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.i = 0

    def peek(self) -> tuple[int, str] | None:
        while self.i < len(self.lines):
            raw = self.lines[self.i]
            body = raw.lstrip(" ")
            if body.startswith("\t"):
                raise SkillError(f"line {self.i + 1}: tabs are not allowed for indentation")
            if body.strip() and not body.startswith("#"):
                return len(raw) - len(body), body.rstrip()
            self.i += 1
        return None

    @staticmethod
    def is_item(body: str) -> bool:
        return body == "-" or body.startswith("- ")

    def block(self, indent: int) -> Any:
        nxt = self.peek()
        if nxt is not None and self.is_item(nxt[1]):
            return self.sequence(nxt[0])
        return self.mapping(indent)

    def mapping(self, indent: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while (nxt := self.peek()) is not None and nxt[0] == indent and not self.is_item(nxt[1]):
            match = re.match(r"^(\"[^\"]*\"|'[^']*'|[^:#]+?)\s*:(?:\s+(.*))?$", nxt[1])
            if match is None:
                raise SkillError(f"line {self.i + 1}: expected 'key: value'")
            key, rest = str(_scalar(match.group(1))), (match.group(2) or "").strip()
            self.i += 1
            if key in out:
                raise SkillError(f"line {self.i}: duplicate key {key!r}")
            if rest[:1] in ("|", ">") and re.fullmatch(r"[|>][-+]?", rest):
                out[key] = self.block_scalar(indent, rest)
            elif rest and not rest.startswith("#"):
                out[key] = _scalar(rest)
            else:
                child = self.peek()
                deeper = child is not None and (
                    child[0] > indent or (child[0] == indent and self.is_item(child[1]))
                )
                out[key] = self.block(child[0]) if child is not None and deeper else None
        if nxt is not None and nxt[0] > indent:
            raise SkillError(f"line {self.i + 1}: unexpected indentation")
        return out

    def sequence(self, indent: int) -> list[Any]:
        out: list[Any] = []
        while (nxt := self.peek()) is not None and nxt[0] == indent and self.is_item(nxt[1]):
            rest = nxt[1][1:].strip()
            if not rest:
                self.i += 1
                child = self.peek()
                out.append(self.block(child[0]) if child and child[0] > indent else None)
            elif re.match(r"^[^\"'\[{][^:]*:(\s|$)", rest):
                # "- key: value" starts a mapping item: re-read it two columns in.
                self.lines[self.i] = " " * (indent + 2) + rest
                out.append(self.mapping(indent + 2))
            else:
                self.i += 1
                out.append(_scalar(rest))
        return out

    def block_scalar(self, indent: int, style: str) -> str:
        raw: list[str] = []
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip() and len(line) - len(line.lstrip(" ")) <= indent:
                break
            raw.append(line)
            self.i += 1
        content = [ln for ln in raw if ln.strip()]
        cut = min((len(ln) - len(ln.lstrip(" ")) for ln in content), default=0)
        lines = [ln[cut:] for ln in raw]
        while lines and not lines[-1].strip():
            lines.pop()
        if style.startswith(">"):
            text = re.sub(r"(?<!\n)\n(?!\n)", " ", "\n".join(lines))
            text = re.sub(r"\n\n", "\n", text)
        else:
            text = "\n".join(lines)
        return text if style.endswith("-") else text + "\n"


def parse_front_matter(text: str, *, use_yaml: bool | None = None) -> tuple[dict[str, Any], str]:
    """(front matter, body) of a SKILL.md; PyYAML when available unless told."""
    text = text.removeprefix("\ufeff")
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise SkillError("SKILL.md does not start with '---' YAML front matter")
    end = next((n for n in range(1, len(lines)) if lines[n].strip() in ("---", "...")), None)
    if end is None:
        raise SkillError("the front matter is never closed with '---'")
    matter, body = "".join(lines[1:end]), "".join(lines[end + 1 :])
    module = _yaml_module() if use_yaml is not False else None
    if use_yaml and module is None:
        raise SkillError("PyYAML was requested but is not installed")
    if module is not None:
        try:
            data = module.safe_load(matter)
        except module.YAMLError as exc:
            raise SkillError(f"front matter is not valid YAML ({exc.__class__.__name__})") from exc
    else:
        data = _Subset(matter).block(0) if matter.strip() else {}
    if not isinstance(data, dict):
        raise SkillError("the front matter is not a 'key: value' mapping")
    return data, body


def _requirements(matter: dict[str, Any]) -> dict[str, list[str]]:
    """``requirements:`` at the top, or OpenClaw's ``metadata.openclaw.requires``."""
    found: Any = matter.get("requirements")
    metadata = matter.get("metadata")
    if found is None and isinstance(metadata, dict):
        for key in _REQUIRE_KEYS:
            if isinstance(metadata.get(key), dict) and "requires" in metadata[key]:
                found = metadata[key]["requires"]
                break
    if found is None:
        return {}
    if isinstance(found, list):
        found = {"any": found}
    if not isinstance(found, dict):
        raise SkillError("requirements must be a mapping (bins, env, ...) or a list")
    out: dict[str, list[str]] = {}
    for kind, values in found.items():
        items = values if isinstance(values, list) else [values]
        out[str(kind)] = [str(v) for v in items if v is not None]
    return out


def parse_skill_md(text: str, *, use_yaml: bool | None = None) -> tuple[SkillInfo, str]:
    """The skill's index entry and body; SkillError says what is wrong."""
    matter, body = parse_front_matter(text, use_yaml=use_yaml)
    name, description = matter.get("name"), matter.get("description")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SkillError("'name' must be 1-64 lowercase letters, digits or '-'")
    if not isinstance(description, str) or not description.strip():
        raise SkillError("'description' is missing or empty")
    if len(description) > MAX_DESCRIPTION:
        raise SkillError(f"'description' is longer than {MAX_DESCRIPTION} characters")
    one_line = " ".join(description.split())
    return SkillInfo(name, one_line, _requirements(matter)), body


def _read_skill(workspace: Path, folder: str, use_yaml: bool | None) -> tuple[SkillInfo, str]:
    try:
        text, size = read_confined(workspace, f"skills/{folder}/SKILL.md", MAX_SKILL_MD)
    except FileNotFoundError as exc:
        raise SkillError("no SKILL.md") from exc
    except (OSError, WorkspaceError) as exc:
        raise SkillError(str(exc)) from exc
    if size > MAX_SKILL_MD:
        raise SkillError(f"SKILL.md is larger than {MAX_SKILL_MD} bytes")
    info, body = parse_skill_md(text, use_yaml=use_yaml)
    if info.name != folder:
        raise SkillError(f"front matter name {info.name!r} differs from its folder")
    return info, body


def check_installed(workspace: Path, folder: str, allowed: Mapping[str, str] | None) -> None:
    """Raise SkillError unless the host installed this skill with these exact files.

    ``allowed`` is the host's record (name -> content hash); None skips the
    check, which only the host's own validation and parsing tests do.
    """
    if allowed is None:
        return
    want = allowed.get(folder)
    if want is None:
        raise SkillError(NOT_INSTALLED)
    try:
        found = skill_hash(workspace, folder)
    except WorkspaceError as exc:
        raise SkillError(str(exc)) from exc
    if found != want:
        raise SkillError(CHANGED)


def scan_skills(
    workspace: Path,
    allowed: Mapping[str, str] | None = None,
    *,
    use_yaml: bool | None = None,
) -> SkillIndex:
    """Every well-formed skill under skills/ (that the host installed, when
    ``allowed`` is given), and every other folder with a reason."""
    index = SkillIndex()
    try:
        real = os.path.join(os.path.realpath(workspace), *confined_parts(workspace, "skills"))
        folders = sorted(os.listdir(real))
    except (OSError, WorkspaceError):
        return index  # no skills folder (or one that points away): no skills
    for folder in folders:
        if folder.startswith("."):
            continue
        if not NAME_RE.match(folder):
            index.skipped.append((folder, "folder name is not a valid skill name"))
            continue
        try:
            info = _read_skill(workspace, folder, use_yaml)[0]
            check_installed(workspace, folder, allowed)
            index.skills.append(info)
        except (SkillError, WorkspaceError) as exc:
            index.skipped.append((folder, str(exc)))
    if len(index.skills) > MAX_INDEXED:
        index.skipped += [(s.name, "too many skills") for s in index.skills[MAX_INDEXED:]]
        del index.skills[MAX_INDEXED:]
    return index


def unverified_index(workspace: Path, why: str) -> SkillIndex:
    """No skills, because the host could not say which are installed."""
    index = scan_skills(workspace)
    reason = f"the host could not be asked which skills are installed ({why})"
    return SkillIndex([], [(s.name, reason) for s in index.skills] + index.skipped)


def index_text(index: SkillIndex) -> str:
    """One line per skill for the system prompt: name, description, needs."""
    lines = []
    for skill in index.skills:
        needs = "; ".join(f"{k} {', '.join(v)}" for k, v in skill.requires.items() if v)
        lines.append(
            f"- {skill.name}: {skill.description}" + (f" (needs {needs})" if needs else "")
        )
    return "\n".join(lines)


def load_skill(
    workspace: Path,
    name: str,
    allowed: Mapping[str, str] | None = None,
    *,
    use_yaml: bool | None = None,
) -> str:
    """The full instructions of one skill, read when the agent asks for it
    (only one the host installed, unchanged, when ``allowed`` is given)."""
    if not NAME_RE.match(name):
        raise SkillError(f"{name!r} is not a skill name")
    try:
        check_installed(workspace, name, allowed)
    except WorkspaceError as exc:
        raise SkillError(str(exc)) from exc
    _info, body = _read_skill(workspace, name, use_yaml)
    return body.strip() + "\n"
