"""The claw's tools: shell bounds, workspace confinement, memory, skills, host calls."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from appliance.guest.hostapi import FakeHostApi, HostApiError, HttpHostApi
from appliance.guest.shell import run_shell
from appliance.guest.skillhash import skill_hash
from appliance.guest.tools import ToolBox, ToolContext, default_toolbox

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "openclaw-new"
NOW = datetime(2025, 3, 16, 9, 30, tzinfo=UTC)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    dest = tmp_path / "workspace"
    shutil.copytree(FIXTURE, dest, symlinks=True)
    return dest


@pytest.fixture
def host() -> FakeHostApi:
    return FakeHostApi(pages={"http://example.org/": "Example Domain"})


@pytest.fixture
def box(workspace: Path, host: FakeHostApi) -> ToolBox:
    return default_toolbox(ToolContext(workspace, host, lambda: NOW, shell_max_output=1000))


def run(box: ToolBox, tool: str, /, **args: Any) -> str:
    return box.run(tool, json.dumps(args))


# ---- shell ------------------------------------------------------------------
def test_shell_runs_in_the_workspace_with_a_scrubbed_environment(
    box: ToolBox, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    monkeypatch.setenv("HTTPS_PROXY", "http://evil:1")
    out = run(box, "shell", command="pwd; env | sort; echo oops >&2; exit 3")
    lines = out.splitlines()
    assert lines[0] == os.path.realpath(workspace)
    names = {ln.split("=", 1)[0] for ln in lines if "=" in ln}
    assert names <= {"PATH", "HOME", "LANG", "TERM", "PWD", "SHLVL", "_", "OLDPWD"}
    assert "sk-must-not-leak" not in out and "evil" not in out
    assert "oops" in lines and lines[-1] == "[exit code 3]"


def test_shell_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_shell("sleep 30 & echo started; sleep 30", tmp_path, timeout_s=1.0)
    assert time.monotonic() - started < 5
    assert result.timed_out and result.exit_code is None
    assert result.output == "started\n"
    assert result.as_text().endswith("[killed: still running after 1 s]")


def test_shell_output_is_capped_and_the_rest_counted(tmp_path: Path) -> None:
    result = run_shell("head -c 100000 /dev/zero | tr '\\0' a", tmp_path, max_output=1000)
    assert result.output == "a" * 1000 and result.dropped_bytes == 99_000
    assert result.exit_code == 0 and not result.timed_out
    assert "[output cut: 99000 more bytes not shown]" in result.as_text()


def test_shell_background_child_does_not_hold_the_tool_open(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_shell("sleep 30 >/dev/null 2>&1 & echo done", tmp_path, timeout_s=20)
    assert time.monotonic() - started < 5 and result.exit_code == 0


# ---- files ------------------------------------------------------------------
def test_file_write_read_edit_round_trip(box: ToolBox, workspace: Path) -> None:
    assert run(box, "file_write", path="todo/list.md", content="- a\n- b\n") == (
        "wrote 8 characters to todo/list.md"
    )
    assert run(box, "file_write", path="todo/list.md", content="- b\n", append=True).startswith(
        "wrote"
    )
    assert run(box, "file_edit", path="todo/list.md", old="- b", new="- c").startswith(
        "error: the text occurs 2 times"
    )
    assert run(box, "file_edit", path="todo/list.md", old="- b", new="- c", all=True) == (
        "replaced 2 occurrence(s) in todo/list.md"
    )
    absolute = os.path.realpath(workspace / "todo" / "list.md")
    assert run(box, "file_read", path=absolute) == "- a\n- c\n- c\n"


@pytest.mark.parametrize(
    "path", ["../outside.txt", "/etc/passwd", "escape/passwd", "link-out", "a//b"]
)
def test_paths_out_of_the_workspace_are_refused(
    box: ToolBox, workspace: Path, tmp_path: Path, path: str
) -> None:
    secret = tmp_path / "outside.txt"
    secret.write_text("secret")
    (workspace / "escape").symlink_to("/etc")
    (workspace / "link-out").symlink_to(secret)
    read = run(box, "file_read", path=path)
    write = run(box, "file_write", path=path, content="pwned")
    assert read.startswith("error: ") and write.startswith("error: ")
    assert "secret" not in read and secret.read_text() == "secret"


def test_a_link_inside_the_workspace_is_followed(box: ToolBox, workspace: Path) -> None:
    (workspace / "soul").symlink_to("SOUL.md")
    assert run(box, "file_read", path="soul") == (workspace / "SOUL.md").read_text()


def test_bad_arguments_are_errors_for_the_model(box: ToolBox) -> None:
    assert run(box, "file_read") == "error: file_read needs path"
    assert box.run("file_read", "{not json").startswith("error: ")
    assert box.run("file_read", "[1]") == "error: the arguments must be a JSON object"
    assert (
        run(box, "shell", command="true", timeout_s="soon") == "error: timeout_s must be a number"
    )
    assert run(box, "file_read", path="missing.md") == "error: missing.md does not exist"


# ---- memory and skills --------------------------------------------------------
def test_memory_append_search_and_read(box: ToolBox, workspace: Path) -> None:
    assert run(box, "memory_append", text="Alice's cat is Miso") == (
        "remembered in memory/2025-03-16.md"
    )
    assert "memory/2025-03-16.md:5: Alice's cat is Miso" in run(box, "memory_search", query="miso")
    assert "Alice's cat is Miso" in run(box, "memory_read", name="memory/2025-03-16.md")
    assert run(box, "memory_read", name="SOUL.md").startswith("error: 'SOUL.md' is not a memory")


def test_skills_list_and_load(box: ToolBox, workspace: Path, host: FakeHostApi) -> None:
    host.skills = {"weather-report": skill_hash(workspace, "weather-report")}  # host-installed
    assert run(box, "skills_list").startswith("- weather-report: ")
    assert run(box, "skill_load", name="weather-report").strip()
    assert run(box, "skill_load", name="../x").startswith("error: ")


# ---- host-backed tools (fake host) -------------------------------------------
def test_host_tools_through_the_fake(box: ToolBox, host: FakeHostApi) -> None:
    assert run(box, "send_message", text="hi") == "message sent to your owner (id 1)"
    created = run(box, "schedule_create", kind="cron", spec="0 9 * * 1", text="plan the week")
    assert created.startswith("schedule created: ") and '"id": 1' in created
    assert run(box, "schedule_create", kind="heartbeat", spec="", text="x").startswith("error: ")
    assert '"plan the week"' in run(box, "schedules_list")
    assert run(box, "schedule_delete", id=1) == "schedule 1 deleted"
    assert run(box, "schedule_delete", id=1) == "error: no schedule 1 of this claw"
    host.approval = "denied"
    got = run(box, "request_approval", action="email.send", details="to bob", timeout_s=5)
    assert got == "approval 1 for 'email.send': NOT approved (denied)"
    assert host.approvals == [("email.send", "to bob", 10.0)]  # clamped to the minimum
    assert run(box, "web_fetch", url="http://example.org/").endswith("Example Domain")
    refused = run(box, "web_fetch", url="http://other.org/")
    assert refused.startswith("error: the host refused to fetch http://other.org/")


# ---- the real HTTP client against a stand-in host ------------------------------
class _HostHandler(BaseHTTPRequestHandler):
    polls = 0

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("http://"):  # a proxy request (absolute URI)
            return self._json(
                403,
                {
                    "error": {
                        "message": "web access is not enabled for this claw yet",
                        "code": "egress_not_available",
                    }
                },
            )
        self._json(200, {"schedules": [{"id": 4, "kind": "every", "spec": "2h"}]})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/approvals":
            assert body == {"action": "shell.sudo", "details": "apt upgrade", "timeout_s": 60}
            return self._json(201, {"id": "ap-1", "status": "pending"})
        if self.path == "/v1/approvals/wait":
            type(self).polls += 1
            status = "approved" if type(self).polls >= 2 else "pending"
            return self._json(200, {"id": body["id"], "status": status, "reason": "ok by mum"})
        self._json(404, {"error": {"message": f"no route {self.path}", "code": "not_found"}})

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def stand_in_host() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _HostHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_host_api_paths_long_poll_and_refusals(stand_in_host: str) -> None:
    api = HttpHostApi(stand_in_host, proxy_url=stand_in_host, timeout_s=5)
    assert api.list_schedules() == [{"id": 4, "kind": "every", "spec": "2h"}]
    decision = api.request_approval("shell.sudo", "apt upgrade", 60)
    assert (decision.id, decision.status, decision.reason) == ("ap-1", "approved", "ok by mum")
    with pytest.raises(HostApiError, match=r"no route /v1/messages \(not_found\)"):
        api.send_message("hello")
    with pytest.raises(HostApiError, match="not enabled for this claw yet"):
        api.web_fetch("http://example.org/")
    with pytest.raises(HostApiError, match="only http"):
        api.web_fetch("file:///etc/passwd")
    nobody = HttpHostApi(stand_in_host, proxy_url=f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(HostApiError, match="proxy is not running"):
        nobody.web_fetch("http://example.org/")
