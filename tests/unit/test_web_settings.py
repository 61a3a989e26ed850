"""The settings page (web/routes/settings.py, appliance/llm/settings.py):
the provider with a write-only key, "test connection" against the scripted
model server, budgets and allowlists in llm.toml, all audited; and the
first-run banner and recent warnings on the dashboard."""

from __future__ import annotations

import re
import socket
import tomllib

import pytest
from fastapi.testclient import TestClient

from appliance.llm.config import load_llm_config
from appliance.llm.scripted import ScriptedModelServer
from appliance.store import AuditQuery
from tests.support.panel import ORIGIN, Harness

POST = {"Origin": ORIGIN}
KEY = "sk-test-0123456789abcdef-very-secret"
OTHER_TABLES = """\
[prices."gpt-4o-mini"]
prompt_per_million = 0.15
completion_per_million = 0.6

[claws.alice]
daily_cost_usd = 3.0
"""


@pytest.fixture(autouse=True)
def _no_llm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment is the other source of a provider; these tests use the file.
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def _admin(panel: Harness) -> tuple[TestClient, str]:
    panel.add_user("mum", "admin")
    client = panel.client()
    return client, panel.login(client, "mum")


def _provider(client: TestClient, csrf: str, **form: str) -> object:
    data = {"csrf": csrf, "base_url": "http://127.0.0.1:9/v1", "default_model": "gpt-4o-mini"}
    return client.post("/settings/provider", data={**data, **form}, headers=POST)


def test_members_cannot_reach_settings(panel: Harness) -> None:
    panel.add_claw("alice")
    panel.add_user("alice", "member", ("alice",))
    client = panel.client()
    csrf = panel.login(client, "alice")
    assert client.get("/settings").status_code == 403
    for path in ("/settings/provider", "/settings/test", "/settings/policy",
                 "/settings/policy/alice/remove"):  # fmt: skip
        response = client.post(path, data={"csrf": csrf, "base_url": "http://x/v1"}, headers=POST)
        assert response.status_code == 403, path
    assert not (panel.home / "llm.toml").exists()


def test_the_key_is_write_only(panel: Harness) -> None:
    client, csrf = _admin(panel)
    done = _provider(client, csrf, api_key=KEY)
    assert done.status_code == 303  # type: ignore[attr-defined]
    path = panel.home / "llm.toml"
    assert path.stat().st_mode & 0o777 == 0o600
    assert tomllib.loads(path.read_text())["providers"]["main"]["api_key"] == KEY
    page = client.get("/settings").text
    assert KEY not in page and "a key is set (set 2026-" in page
    # Saving other fields without a key keeps it.
    _provider(client, csrf, default_model="gpt-4o")
    assert load_llm_config(panel.home).upstream.api_key == KEY  # type: ignore[union-attr]
    for entry in panel.store.audit.search(AuditQuery(action_prefix="settings.")):
        assert KEY not in str(entry.details)
    assert [e.details["key"] for e in panel.store.audit.search(AuditQuery(
        action_prefix="settings.llm_provider"))] == ["kept", "set"]  # fmt: skip
    # Removing it.
    _provider(client, csrf, forget_key="yes")
    assert load_llm_config(panel.home).upstream.api_key == ""  # type: ignore[union-attr]
    assert "no key" in client.get("/settings").text


def test_saving_keeps_the_other_tables(panel: Harness) -> None:
    path = panel.home / "llm.toml"
    path.write_text('[providers.ollama]\nbase_url = "http://127.0.0.1:11434/v1"\n\n' + OTHER_TABLES)
    client, csrf = _admin(panel)
    _provider(client, csrf, base_url="http://127.0.0.1:11435/v1", timeout_s="30")
    data = tomllib.loads(path.read_text())
    assert data["providers"]["ollama"] == {
        "base_url": "http://127.0.0.1:11435/v1", "timeout_s": 30.0, "default_model": "gpt-4o-mini"
    }  # fmt: skip
    assert data["prices"]["gpt-4o-mini"]["completion_per_million"] == 0.6
    assert data["claws"]["alice"] == {"daily_cost_usd": 3.0}
    entry = panel.store.audit.search(AuditQuery(action_prefix="settings."))[0]
    assert entry.action == "settings.llm_provider" and entry.target == "ollama"
    assert entry.details["changed"] == ["base_url", "default_model", "timeout_s"]


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"base_url": "ftp://example.org"}, "is not an http(s) URL"),
        ({"base_url": ""}, "the base URL is empty"),
        ({"timeout_s": "soon"}, "the timeout must be a number"),
        ({"timeout_s": "0"}, "the timeout must be 1 to"),
        ({"default_model": "gpt 4o*"}, "the default model must be exact names"),
        ({"default_model": "gpt<4o>"}, "has the character"),
        ({"api_key": "sk two parts"}, "spaces or control characters"),
    ],
)
def test_bad_provider_input_is_400_and_the_file_unchanged(
    panel: Harness, form: dict[str, str], message: str
) -> None:
    path = panel.home / "llm.toml"
    before = '[providers.main]\nbase_url = "http://127.0.0.1:9/v1"\n\n' + OTHER_TABLES
    path.write_text(before)
    client, csrf = _admin(panel)
    response = _provider(client, csrf, **form)
    assert response.status_code == 400, response.text  # type: ignore[attr-defined]
    assert message in response.text  # type: ignore[attr-defined]
    assert path.read_text() == before
    assert not panel.store.audit.search(AuditQuery(action_prefix="settings."))


def test_budgets_and_allowlists(panel: Harness) -> None:
    panel.add_claw("alice")
    client, csrf = _admin(panel)
    _provider(client, csrf)
    form = {"csrf": csrf, "claw": "", "models": "gpt-4o-mini, gpt-4o*", "daily_tokens": "200000",
            "monthly_cost_usd": "20.5", "requests_per_minute": "30"}  # fmt: skip
    assert client.post("/settings/policy", data=form, headers=POST).status_code == 303
    over = {"csrf": csrf, "claw": "alice", "daily_tokens": "1000"}
    assert client.post("/settings/policy", data=over, headers=POST).status_code == 303
    config = load_llm_config(panel.home)
    assert config.default_policy.models == ("gpt-4o-mini", "gpt-4o*")
    assert config.default_policy.monthly_cost_usd == 20.5
    alice = config.policy_for("alice")
    assert alice.daily_tokens == 1000 and alice.requests_per_minute == 30
    budget = panel.store.audit.search(AuditQuery(action_prefix="settings.budget"))
    assert [(e.target, e.details["new"]) for e in budget] == [
        ("alice", {"daily_tokens": 1000}),
        ("default", {"models": ["gpt-4o-mini", "gpt-4o*"], "daily_tokens": 200000,
                     "monthly_cost_usd": 20.5, "requests_per_minute": 30}),
    ]  # fmt: skip
    removed = client.post("/settings/policy/alice/remove", data={"csrf": csrf}, headers=POST)
    assert removed.status_code == 303
    assert load_llm_config(panel.home).policy_for("alice").daily_tokens == 200000


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        ({"daily_tokens": "lots"}, 400, "daily_tokens must be a whole number"),
        ({"daily_cost_usd": "-1"}, 400, "daily_cost_usd must be a number ≥ 0"),
        ({"daily_cost_usd": "nan"}, 400, "daily_cost_usd must be a number ≥ 0"),
        ({"max_tokens": "0"}, 400, "max_tokens must be ≥ 1"),
        ({"models": "gpt;rm"}, 400, "has the character"),
        ({"claw": "nobody", "daily_tokens": "5"}, 404, "nobody"),
        ({"claw": "Bad Name!", "daily_tokens": "5"}, 400, "invalid claw name"),
    ],
)
def test_bad_budget_input_changes_nothing(
    panel: Harness, form: dict[str, str], status: int, message: str
) -> None:
    path = panel.home / "llm.toml"
    before = '[providers.main]\nbase_url = "http://127.0.0.1:9/v1"\n\n' + OTHER_TABLES
    path.write_text(before)
    client, csrf = _admin(panel)
    data = {"csrf": csrf, "claw": "", **form}
    response = client.post("/settings/policy", data=data, headers=POST)
    assert response.status_code == status and message in response.text
    assert path.read_text() == before


def test_test_connection_against_the_scripted_server(panel: Harness) -> None:
    client, csrf = _admin(panel)
    # The default model answers the probe's forced call of its ping tool.
    scenario = {
        "steps": [
            {
                "match": {"tools_include": "ping"},
                "reply": {"tool_calls": [{"name": "ping", "arguments": {}}]},
                "repeat": True,
            }
        ],
        "models": ["gpt-4o-mini", "\u202egpt-evil"],
    }
    with ScriptedModelServer(scenario, api_key=KEY) as upstream:
        _provider(client, csrf, base_url=upstream.base_url, api_key=KEY)
        page = client.post("/settings/test", data={"csrf": csrf}, headers=POST).text
        assert 'id="probe" class="ok"' in page and "2 models (gpt-4o-mini" in page
        assert "the default model &#39;gpt-4o-mini&#39; answered a tool call" in page
        assert "\u202e" not in page and "\\u202egpt-evil" in page  # shown, not obeyed
        _provider(client, csrf, base_url=upstream.base_url, api_key="sk-wrong")
        wrong = client.post("/settings/test", data={"csrf": csrf}, headers=POST).text
        assert "refused the API key (HTTP 401)" in wrong and "sk-wrong" not in wrong


def test_test_connection_says_when_the_default_model_cannot_call_tools(panel: Harness) -> None:
    client, csrf = _admin(panel)
    scenario = {
        "steps": [{"reply": {"content": "pong"}, "repeat": True}],
        "models": ["gpt-4o-mini"],
    }
    with ScriptedModelServer(scenario, api_key=KEY) as upstream:
        _provider(client, csrf, base_url=upstream.base_url, api_key=KEY)
        page = client.post("/settings/test", data={"csrf": csrf}, headers=POST).text
        assert 'id="probe" class="alert"' in page
        assert "did not answer with a tool call" in page and "supports them" in page
        _provider(client, csrf, base_url=upstream.base_url, api_key=KEY, default_model="llama-9")
        page = client.post("/settings/test", data={"csrf": csrf}, headers=POST).text
        assert "the default model &#39;llama-9&#39; is not among them" in page


def test_test_connection_to_a_closed_port_is_a_clear_error(panel: Harness) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    client, csrf = _admin(panel)
    _provider(client, csrf, base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
    page = client.post("/settings/test", data={"csrf": csrf}, headers=POST).text
    assert f"could not connect to http://127.0.0.1:{port}/v1/models" in page
    assert KEY not in page


def test_first_run_banner_and_recent_warnings(panel: Harness) -> None:
    panel.panel.recent_warnings = lambda: ["2026-03-01 WARNING x: claw said \x1b[2J<b>hi</b>"]
    client, csrf = _admin(panel)
    page = client.get("/").text
    assert 'id="needs-provider"' in page and 'href="/settings"' in page
    assert "Recent warnings" in page and "\\x1b[2J&lt;b&gt;hi&lt;/b&gt;" in page
    _provider(client, csrf)
    assert 'id="needs-provider"' not in client.get("/dashboard/cards").text
    # A member sees neither the host's warnings nor the settings link.
    panel.add_user("bob", "member")
    member = panel.client()
    panel.login(member, "bob")
    assert "Recent warnings" not in member.get("/").text


def test_no_provider_banner_for_a_member_names_the_admin(panel: Harness) -> None:
    panel.add_user("bob", "member")
    client = panel.client()
    panel.login(client, "bob")
    page = client.get("/").text
    assert "Ask the admin to set one" in page and not re.search(r'href="/settings"', page)
