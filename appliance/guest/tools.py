"""The claw's tools: each an OpenAI function schema plus a handler returning text.

``ToolBox.run`` never raises. A bad argument, a refused path, a host refusal
or a bug in a handler all come back to the model as ``error: ...`` text, so
the model can correct itself and the loop goes on. Every result is capped,
because it goes into the context of the next model call.

File tools reuse the workspace's confined access (``confined.read_confined``
and its writer): the path is resolved, must stay in the workspace, and is then
opened component by component without following links.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from . import confined
from . import workspace as ws
from .hostapi import HostApi, HostApiError
from .shell import DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S, run_shell
from .skills import SkillError, SkillIndex, index_text, load_skill, scan_skills, unverified_index

log = logging.getLogger(__name__)

MAX_RESULT = 24_000  # characters of any tool result handed back to the model
MAX_READ = 256 * 1024
MAX_WRITE = 1024 * 1024
APPROVAL_TIMEOUT_S = 300.0
MAX_APPROVAL_TIMEOUT_S = 900.0

Handler = Callable[[dict[str, Any]], str]


class ToolError(Exception):
    """The tool cannot do what was asked; the message goes to the model."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    properties: dict[str, Any]
    required: tuple[str, ...]
    handler: Handler

    def schema(self) -> dict[str, Any]:
        params = {"type": "object", "properties": self.properties, "required": list(self.required)}
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": params},
        }


def _s(desc: str) -> dict[str, str]:
    return {"type": "string", "description": desc}


def _n(desc: str) -> dict[str, str]:
    return {"type": "number", "description": desc}


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
}


class ToolBox:
    def __init__(self, tools: list[Tool], max_result: int = MAX_RESULT) -> None:
        self.tools = {t.name: t for t in tools}
        self.max_result = max_result

    def schemas(self) -> list[dict[str, Any]]:
        return [t.schema() for t in self.tools.values()]

    def subset(self, names: tuple[str, ...]) -> ToolBox:
        """These tools only, in this order (names this box lacks are left out)."""
        return ToolBox([self.tools[n] for n in names if n in self.tools], self.max_result)

    def run(self, name: str, arguments: str) -> str:
        tool = self.tools.get(name)
        if tool is None:
            return f"error: there is no tool {name!r}; use one of {', '.join(self.tools)}"
        try:
            args = json.loads(arguments or "{}")
            if not isinstance(args, dict):
                raise ToolError("the arguments must be a JSON object")
            _check(tool, args)
            result = tool.handler(args)
        except ValueError as exc:  # includes JSONDecodeError
            result = f"error: {exc}"
        except (ToolError, confined.WorkspaceError, SkillError, HostApiError) as exc:
            result = f"error: {exc}"
        except FileNotFoundError as exc:
            result = f"error: {exc.filename or 'the file'} does not exist"
        except OSError as exc:
            result = f"error: {exc.strerror or exc}"
        except Exception as exc:  # noqa: BLE001 - a tool bug must not end the conversation
            log.exception("tool %s failed", name)
            result = f"error: the tool failed unexpectedly ({type(exc).__name__})"
        if len(result) > self.max_result:
            cut = len(result) - self.max_result
            result = result[: self.max_result] + f"\n[result cut: {cut} more characters]"
        return result


def _check(tool: Tool, args: dict[str, Any]) -> None:
    missing = [r for r in tool.required if r not in args]
    if missing:
        raise ToolError(f"{tool.name} needs {', '.join(missing)}")
    for key, value in args.items():
        spec = tool.properties.get(key)
        if spec is None:
            raise ToolError(f"{tool.name} has no argument {key!r}")
        want = _TYPES.get(str(spec.get("type")), (object,))
        if not isinstance(value, want) or (isinstance(value, bool) and bool not in want):
            raise ToolError(f"{key} must be a {spec.get('type')}")


def _rel(workspace: Path, path: str) -> str:
    """Accept ``notes.md``, ``./notes.md`` or the absolute path inside the workspace."""
    root = os.path.realpath(workspace)
    if path.startswith("/"):
        if not path.startswith(root + "/"):
            raise ToolError(f"{path} is outside the workspace ({root})")
        path = path[len(root) + 1 :]
    return path.removeprefix("./")


def _refuse_skills(workspace: Path, rel: str) -> None:
    """Skills come from the owner only: the file tools do not write under skills/."""
    comps = confined.confined_parts(workspace, rel)
    if rel.split("/", 1)[0] == "skills" or comps[0] == "skills":
        raise ToolError(
            "skills are installed by the owner with `clawden skill add`; "
            "ask your owner instead of writing under skills/"
        )


@dataclass
class ToolContext:
    workspace: Path
    host: HostApi
    clock: Callable[[], datetime]
    shell_timeout_s: float = DEFAULT_TIMEOUT_S
    shell_max_output: int = 16_384


def _file_tools(c: ToolContext) -> list[Tool]:
    def read(a: dict[str, Any]) -> str:
        rel = _rel(c.workspace, a["path"])
        text, size = confined.read_confined(c.workspace, rel, MAX_READ)
        note = (
            f"\n[file is {size} bytes; only its head and tail are shown]" if size > MAX_READ else ""
        )
        return text + note

    def write(a: dict[str, Any]) -> str:
        rel, content = _rel(c.workspace, a["path"]), a["content"]
        if len(content.encode()) > MAX_WRITE:
            raise ToolError(f"a file written at once is limited to {MAX_WRITE} bytes")
        _refuse_skills(c.workspace, rel)
        ws._write_confined(c.workspace, rel, content, append=bool(a.get("append")))
        return f"wrote {len(content)} characters to {rel}"

    def edit(a: dict[str, Any]) -> str:
        rel, old, new = _rel(c.workspace, a["path"]), a["old"], a["new"]
        _refuse_skills(c.workspace, rel)
        text, size = confined.read_confined(c.workspace, rel, MAX_WRITE)
        if size > MAX_WRITE:
            raise ToolError(f"{rel} is larger than {MAX_WRITE} bytes; edit it with the shell")
        count = text.count(old) if old else 0
        if count == 0:
            raise ToolError(f"the text to replace was not found in {rel}")
        if count > 1 and not a.get("all"):
            raise ToolError(
                f"the text occurs {count} times in {rel}; give more context or all=true"
            )
        ws._write_confined(c.workspace, rel, text.replace(old, new), append=False)
        return f"replaced {count if a.get('all') else 1} occurrence(s) in {rel}"

    def shell(a: dict[str, Any]) -> str:
        timeout = min(max(float(a.get("timeout_s", c.shell_timeout_s)), 1.0), MAX_TIMEOUT_S)
        result = run_shell(
            a["command"], c.workspace, timeout_s=timeout, max_output=c.shell_max_output
        )
        return result.as_text()

    path = _s("path relative to the workspace")
    return [
        Tool("file_read", "Read a text file in your workspace.", {"path": path}, ("path",), read),
        Tool(
            "file_write",
            "Create or overwrite (or append to) a file in your workspace.",
            {"path": path, "content": _s("the full text"), "append": {"type": "boolean"}},
            ("path", "content"),
            write,
        ),
        Tool(
            "file_edit",
            "Replace exact text in a workspace file (must match once unless all=true).",
            {
                "path": path,
                "old": _s("exact text"),
                "new": _s("replacement"),
                "all": {"type": "boolean"},
            },
            ("path", "old", "new"),
            edit,
        ),
        Tool(
            "shell",
            "Run a /bin/sh command in your workspace (no network; output and time are capped).",
            {
                "command": _s("the command"),
                "timeout_s": _n(f"seconds, at most {MAX_TIMEOUT_S:.0f}"),
            },
            ("command",),
            shell,
        ),
    ]


def verified_skills(c: ToolContext) -> SkillIndex:
    """The skills the host installed and whose files are unchanged; none
    (each listed as skipped, with why) when the host cannot be asked."""
    try:
        allowed = c.host.installed_skills()
    except HostApiError as exc:
        return unverified_index(c.workspace, str(exc))
    return scan_skills(c.workspace, allowed)


def _memory_tools(c: ToolContext) -> list[Tool]:
    def read(a: dict[str, Any]) -> str:
        return ws.memory_read(c.workspace, a.get("name") or "MEMORY.md")

    def search(a: dict[str, Any]) -> str:
        hits = ws.memory_search(c.workspace, a["query"], int(a.get("limit", 20)))
        return "\n".join(str(h) for h in hits) or "no memory matches"

    def append(a: dict[str, Any]) -> str:
        return f"remembered in {ws.memory_append(c.workspace, a['text'], c.clock())}"

    def skills_list(a: dict[str, Any]) -> str:
        index = verified_skills(c)
        lines = [index_text(index) or "no skills are installed"]
        lines += [f"not available: {name}: {why}" for name, why in index.skipped]
        return "\n".join(lines)

    def skill_load(a: dict[str, Any]) -> str:
        return load_skill(c.workspace, a["name"], c.host.installed_skills())

    return [
        Tool(
            "memory_read",
            "Read MEMORY.md or a note under memory/.",
            {"name": _s("MEMORY.md or memory/<file>.md")},
            (),
            read,
        ),
        Tool(
            "memory_search",
            "Search your memory files for words.",
            {"query": _s("words"), "limit": {"type": "integer"}},
            ("query",),
            search,
        ),
        Tool(
            "memory_append",
            "Write a durable note into today's daily memory file.",
            {"text": _s("what to remember")},
            ("text",),
            append,
        ),
        Tool("skills_list", "List the installed skills.", {}, (), skills_list),
        Tool(
            "skill_load",
            "Read a skill's full instructions.",
            {"name": _s("skill name")},
            ("name",),
            skill_load,
        ),
    ]


def _host_tools(c: ToolContext) -> list[Tool]:
    def send(a: dict[str, Any]) -> str:
        sent = c.host.send_message(a["text"])
        return f"message sent to your owner (id {sent.get('id', '?')})"

    def listing(a: dict[str, Any]) -> str:
        jobs = c.host.list_schedules()
        return json.dumps(jobs, ensure_ascii=False) if jobs else "no schedules"

    def create(a: dict[str, Any]) -> str:
        job = c.host.create_schedule(a["kind"], a["spec"], a.get("tz"), a["text"])
        return f"schedule created: {json.dumps(job, ensure_ascii=False)}"

    def delete(a: dict[str, Any]) -> str:
        c.host.delete_schedule(int(a["id"]))
        return f"schedule {a['id']} deleted"

    def approve(a: dict[str, Any]) -> str:
        wait = min(max(float(a.get("timeout_s", APPROVAL_TIMEOUT_S)), 10.0), MAX_APPROVAL_TIMEOUT_S)
        got = c.host.request_approval(a["action"], a["details"], wait)
        why = f": {got.reason}" if got.reason else ""
        verdict = "APPROVED" if got.status == "approved" else f"NOT approved ({got.status})"
        return f"approval {got.id} for {a['action']!r}: {verdict}{why}"

    def fetch(a: dict[str, Any]) -> str:
        page = c.host.web_fetch(a["url"])
        cut = "\n[page cut]" if page.truncated else ""
        return f"HTTP {page.status} {page.content_type}\n\n{page.text}{cut}"

    kinds = {"type": "string", "enum": ["cron", "every", "at"]}
    return [
        Tool(
            "send_message",
            "Send a message to your owner now.",
            {"text": _s("the message")},
            ("text",),
            send,
        ),
        Tool("schedules_list", "List your schedules (and your heartbeat).", {}, (), listing),
        Tool(
            "schedule_create",
            "Schedule a prompt to yourself: cron '0 9 * * 1', every '2h', at ISO date-time.",
            {
                "kind": kinds,
                "spec": _s("cron fields, duration or date-time"),
                "tz": _s("IANA zone"),
                "text": _s("prompt"),
            },
            ("kind", "spec", "text"),
            create,
        ),
        Tool(
            "schedule_delete",
            "Delete a schedule you created.",
            {"id": {"type": "integer"}},
            ("id",),
            delete,
        ),
        Tool(
            "request_approval",
            "Ask your admin to approve a named action; waits for the decision.",
            {
                "action": _s("short action name"),
                "details": _s("exactly what will be done"),
                "timeout_s": _n("seconds to wait"),
            },
            ("action", "details"),
            approve,
        ),
        Tool(
            "web_fetch",
            "Fetch a web page through the host's proxy.",
            {"url": _s("http(s) URL")},
            ("url",),
            fetch,
        ),
    ]


def default_toolbox(context: ToolContext) -> ToolBox:
    return ToolBox(_file_tools(context) + _memory_tools(context) + _host_tools(context))
