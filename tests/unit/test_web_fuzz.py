"""The panel's whole HTTP API, fuzzed by schemathesis from its own OpenAPI
schema: no generated request gets a server error (5xx) — as the admin, as a
member, and with no session at all. The one 5xx the panel means to give, a
503 saying to start a claw that cannot be reached (docs/panel.md), is told
apart by its text.

The app is the real one (``create_app``) over a real SQLite store and a
``FakeClawOps``, seeded with claws, an admin with TOTP, a member, messages,
pending and decided approvals, a grant, workspace files and console lines.
Every request carries the session cookie, its CSRF header and the panel's
Origin, so the fuzzer gets past the guards into the routes' own code; half
of them say ``HX-Request`` (the routes answer htmx differently). A share of
the generated path, query and form values is swapped for ones that exist
(a real claw, approval id, workspace file, power action…), or the fuzzer
would almost only ever meet "no such claw". State changes as it goes (power,
edits, chat, settings in the fixture's llm.toml, logout): a session that a
request ended is replaced by a fresh login, so the rest of the run still gets
in. Hypothesis is derandomized and bounded, so a run is reproducible and
takes seconds.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.schemas import APIOperation, BaseSchema

from appliance.accounts.decisions import decide
from appliance.channel.forwarding import ClawIdentity
from appliance.core.errors import Unavailable
from appliance.llm import probe
from appliance.llm.config import Upstream, safe_url
from appliance.services.hostapi import host_api_service
from appliance.services.http import HttpRequest
from tests.support.panel import ORIGIN, PASSWORD, Harness
from web.app import create_app
from web.auth import cookie_name, csrf_token
from web.ports import ChannelInfo

ADMIN, MEMBER = "mum", "kid"
CLAWS = ("alice", "bob", "carol")  # alice: admin's view; bob: the member's; carol: unreachable
FILES = ("SOUL.md", "USER.md", "HEARTBEAT.md", "MEMORY.md", "memory/2026-03-01.md", "../x")
# What the panel says of a stopped claw (FakeClawOps, like the controller):
# its one deliberate 5xx, a 503 with this fix in the error page.
CAROL_DOWN = "start it: `clawden claw start carol`"
FUZZ = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Seeded:
    """What exists in the fuzzed home, to steer a share of generated values."""

    known: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class Session:
    """A logged-in account's cookie and CSRF token, renewed when a fuzzed
    request (logout) ended it."""

    harness: Harness
    name: str
    token: str = ""
    sent: int = 0

    def renew(self) -> None:
        if self.token and self.harness.accounts.session_user(self.token) is not None:
            return
        # Not through /login: the fuzzer's failed logins from the test
        # client's address may have locked that address out by now.
        code = self.harness.code(self.name)
        self.token = self.harness.accounts.login(self.name, PASSWORD, code, "fuzz-harness").token

    def headers(self) -> dict[str, str]:
        return {"X-CSRF-Token": csrf_token(self.harness.panel, self.token)}

    def cookies(self) -> dict[str, str]:
        return {cookie_name(self.harness.panel): self.token}


def _seed(panel: Harness) -> Seeded:
    panel.store.clock = panel.clock
    panel.store.approvals.clock = panel.clock
    for claw in CLAWS:
        panel.add_claw(claw)
    panel.add_user(ADMIN, "admin")
    panel.add_user(MEMBER, "member", ("bob",))
    ops = panel.claws
    ops.messages = panel.store.messages
    ops.replies = {"alice": ["Hello ", "**there**"], "bob": ["hi"]}
    ops.channels = {"alice": ChannelInfo("ready", 0.0), "bob": ChannelInfo("backoff", 0.0, "boom")}
    ops.errors = {"carol": Unavailable("claw 'carol' has no channel", CAROL_DOWN)}
    ops.consoles = {"alice": ["[    0.0] Linux", "login: \u202eok"], "bob": []}
    for claw in ("alice", "bob"):
        ops.files[claw] = {
            "SOUL.md": "Be kind.",
            "USER.md": f"{claw.title()}, 9.",
            "HEARTBEAT.md": "- water the plants",
            "memory/2026-03-01.md": "# <script>x</script>",
        }
    messages = [
        panel.store.messages.add(claw, direction, "web", who, text).id
        for claw in ("alice", "bob")
        for direction, who, text in (("in", MEMBER, "hi"), ("out", claw, "**hello**"))
    ]
    host = host_api_service(panel.store)
    approvals = []
    for claw, action in (("alice", "email.send"), ("bob", "web.fetch"), ("alice", "calendar.add")):
        body = {"action": action, "details": f"to \u202e{claw}", "timeout_s": 900}
        request = HttpRequest("POST", "/v1/approvals", {}, json.dumps(body).encode())
        response = host.dispatch(ClawIdentity(claw), request)
        assert response.status == 201, response.body
        approvals.append(panel.store.approvals.require(json.loads(response.body)["id"]))
    granted = approvals[2]
    decide(panel.store, ADMIN, granted.id, granted.sha256, panel.code(ADMIN), True,
           clock=panel.clock, grant_minutes=60)  # fmt: skip
    grants = [g.id for g in panel.store.grants.active(panel.clock())]
    assert grants, "the seeded grant is missing"
    return Seeded(
        {
            "name": [*CLAWS, "nobody"],
            "claw": [*CLAWS, "nobody"],
            "approval_id": [a.id for a in approvals],
            "grant_id": grants,
            "message_id": messages,
            "path": list(FILES),
            "action": ["start", "stop", "restart"],
            "decision": ["approve", "deny"],
            "sha256": [a.sha256 for a in approvals],
            "rule": ["allow", "deny", "ask"],
            "capability": ["email.send", "web.fetch"],
            "before_seq": ["1", "5"],
            "since": ["2026-03-01"],
            "until": ["2026-03-02"],
            "base_url": ["http://127.0.0.1:9/v1"],
            "default_model": ["gpt-4o-mini"],
            "text": ["hello", "**hi** <img src=x onerror=alert(1)> \u202e", "x" * 70_000],
        }
    )


def _steered(
    known: dict[str, list[Any]], always: frozenset[str] = frozenset()
) -> Callable[[Any, Any], st.SearchStrategy[Any]]:
    """A ``flatmap_*`` hook: most generated dicts get the keys ``known``
    names (and those in ``always``, when absent: an optional form field the
    generator tends to leave out) set to values that exist in the home; the
    rest stay as they are."""

    def hook(context: Any, values: Any) -> st.SearchStrategy[Any]:
        if not isinstance(values, dict):
            return st.just(values)
        keys = (values.keys() | always) & known.keys()
        if not keys:
            return st.just(values)
        chosen = {k: st.sampled_from(known[k]) for k in keys}
        real = st.fixed_dictionaries(chosen).map(lambda picked: {**values, **picked})
        return st.sampled_from((False, True, True, True)).flatmap(
            lambda steer: real if steer else st.just(values)
        )

    return hook


@schemathesis.check
def no_server_error(ctx: Any, response: Any, case: schemathesis.Case[Any]) -> bool | None:
    """``not_a_server_error``, but for the panel's designed answer for a
    claw that cannot be reached (docs/panel.md: a 503 saying to start it)."""
    if response.status_code == 503 and CAROL_DOWN in response.text:
        return None
    return not_a_server_error(ctx, response, case)


def _models(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"data": [{"id": "gpt-4o-mini"}]})


@pytest.fixture
def home(panel: Harness, monkeypatch: pytest.MonkeyPatch) -> tuple[Harness, Seeded]:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    # "Test connection" talks to whatever base URL was fuzzed in: a scripted
    # transport stands in for the network (the probe's own code still runs).
    monkeypatch.setattr(
        "web.routes.settings.probe_upstream",
        partial(probe.probe_upstream, transport=httpx.MockTransport(_models)),
    )
    return panel, _seed(panel)


@pytest.fixture
def app(home: tuple[Harness, Seeded]) -> FastAPI:
    return create_app(home[0].panel)


@pytest.fixture
def api(app: FastAPI, home: tuple[Harness, Seeded]) -> BaseSchema:
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Host": "127.0.0.1"})
    known = home[1].known
    loaded.hook("flatmap_path_parameters")(_steered(known))
    loaded.hook("flatmap_query")(_steered(known))
    loaded.hook("flatmap_body")(_steered(known, always=frozenset({"text"})))
    return loaded


@pytest.fixture
def admin(home: tuple[Harness, Seeded]) -> Session:
    session = Session(home[0], ADMIN)
    session.renew()
    return session


@pytest.fixture
def member(home: tuple[Harness, Seeded]) -> Session:
    session = Session(home[0], MEMBER)
    session.renew()
    return session


@dataclass
class Fuzzer:
    """Sends every generated case as ``session`` (or anonymously) and keeps
    what it saw: the statuses per operation, and the server errors."""

    session: Session | None
    app: FastAPI
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    sent: int = 0

    def send(self, case: schemathesis.Case[Any]) -> None:
        headers = {"Origin": ORIGIN}
        cookies: dict[str, str] = {}
        if self.session is not None:
            self.session.renew()
            headers |= self.session.headers()
            cookies = self.session.cookies()
        self.sent += 1
        if self.sent % 2:
            headers["HX-Request"] = "true"
        response = case.call(
            base_url=ORIGIN, headers=headers, cookies=cookies, allow_redirects=False
        )
        self.statuses.setdefault(case.operation.label, Counter())[response.status_code] += 1
        self.settle()
        case.validate_response(response, checks=[no_server_error])

    def settle(self) -> None:
        """Wait until a chat reply's thread is done, so that every request
        meets its claw idle and a run does not depend on thread timing."""
        router = getattr(self.app.state, "chat_router", None)
        deadline = time.monotonic() + 10
        while router is not None and router.busy():
            assert time.monotonic() < deadline, "a chat delivery never finished"
            time.sleep(0.002)

    def run(self, api: BaseSchema) -> None:
        """Every operation, positive and negative data; all failures told."""
        failures: list[str] = []
        for result in api.get_all_operations():
            assert isinstance(result, Ok), result  # the schema is FastAPI's own
            operation = result.ok()
            for mode in _modes(operation):

                @FUZZ
                @given(case=operation.as_strategy(mode))
                def fuzz(case: schemathesis.Case[Any]) -> None:
                    self.send(case)

                try:
                    fuzz()
                except Exception as exc:  # noqa: BLE001 - every operation's failure is reported
                    failures.append(f"{operation.label} ({mode.value}): {exc}")
        assert not failures, "\n\n".join(failures)

    def reached(self, label: str, status: int) -> bool:
        seen = self.statuses.get(label, Counter())
        return seen[status] > 0


def _modes(operation: APIOperation[Any, Any, Any, Any]) -> list[GenerationMode]:
    """Positive data, and invalid data where there can be any: a string
    path parameter takes any text, so an operation with nothing else has
    no invalid request to generate."""
    raw = operation.definition.raw
    negatable = "requestBody" in raw or any(
        p["in"] != "path" or p.get("schema", {}).get("type") != "string"
        for p in raw.get("parameters", [])
    )
    return [GenerationMode.POSITIVE, *([GenerationMode.NEGATIVE] if negatable else [])]


def _answered(fuzzer: Fuzzer) -> set[str]:
    return {label for label, seen in fuzzer.statuses.items() if seen[200]}


def test_fuzzing_as_the_admin_finds_no_server_error(
    api: BaseSchema, app: FastAPI, admin: Session, home: tuple[Harness, Seeded]
) -> None:
    fuzzer = Fuzzer(admin, app)
    fuzzer.run(api)
    # It got in, to the routes' real work, not only their refusals.
    assert len(_answered(fuzzer)) >= 20, _answered(fuzzer)
    assert home[0].claws.powered


def test_fuzzing_as_a_member_finds_no_server_error(
    api: BaseSchema, app: FastAPI, member: Session, home: tuple[Harness, Seeded]
) -> None:
    fuzzer = Fuzzer(member, app)
    fuzzer.run(api)
    assert {"GET /", "GET /claws/{name}"} <= _answered(fuzzer)
    assert fuzzer.reached("GET /settings", 403)
    assert home[0].claws.powered == []  # a member may not power a claw


def test_the_fuzzers_requests_get_in(api: BaseSchema, app: FastAPI, member: Session) -> None:
    """What every fuzzed request carries (cookie, CSRF header, Origin) is
    enough for the routes' real work: a member's message to their claw,
    sent exactly as the fuzzer sends its cases, gets the streamed reply."""
    fuzzer = Fuzzer(member, app)
    case = api["/claws/{name}/chat"]["POST"].Case(
        path_parameters={"name": "bob"},
        body={"text": "hello"},
        media_type="application/x-www-form-urlencoded",
    )
    fuzzer.send(case)
    assert fuzzer.reached("POST /claws/{name}/chat", 200)
    assert member.harness.claws.said == [("bob", "hello", "web")]


def test_fuzzing_without_a_session_finds_no_server_error(api: BaseSchema, app: FastAPI) -> None:
    fuzzer = Fuzzer(None, app)
    fuzzer.run(api)
    # And nothing but the doors answered a page: the rest is a redirect to
    # the login form, a 401 or a refusal.
    public = {"GET /login", "POST /login", "GET /setup/{token}", "POST /setup/{token}"}
    answered = {label for label, seen in fuzzer.statuses.items() if seen[200]}
    assert answered <= public, answered - public
    assert fuzzer.reached("GET /audit", 303)
    assert fuzzer.reached("POST /login", 400)


# What the fuzzer found: a provider the HTTP client cannot use, or a key
# that cannot go in a header, was a 500 on saving or on "test connection".
@pytest.mark.parametrize(
    "form",
    [
        {"base_url": "http://[::1/v1"},  # urlsplit: invalid IPv6 literal
        {"base_url": "http://127.0.0.1:99999/v1"},  # port out of range
        {"base_url": "http://a..b/v1"},  # empty DNS label
        {"base_url": "http://" + "a" * 64 + ".example/v1"},  # label too long
        {"base_url": "http://xn--/v1"},  # no punycode after the prefix
        {"base_url": "http://ex\u00e9.example/v1"},  # not punycode
        {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-\u00e9\u00e9"},
        {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-\x7f"},
    ],
)
def test_a_provider_the_client_cannot_use_is_refused_clearly(
    home: tuple[Harness, Seeded], admin: Session, form: dict[str, str]
) -> None:
    harness, _ = home
    client = harness.client()
    client.cookies.update(admin.cookies())
    headers = {"Origin": ORIGIN, **admin.headers()}
    response = client.post("/settings/provider", data=form, headers=headers)
    assert response.status_code == 400, response.text
    assert "is not an http(s) URL" in response.text or "API key has" in response.text
    assert not (harness.home / "llm.toml").exists()
    # Nothing set, so nothing to test: a clear 400 as well.
    assert client.post("/settings/test", headers=headers).status_code == 400


def test_a_hand_written_key_that_cannot_be_sent_is_a_config_error(
    home: tuple[Harness, Seeded], admin: Session
) -> None:
    harness, _ = home
    llm_toml = harness.home / "llm.toml"
    llm_toml.write_text(
        '[providers.main]\nbase_url = "http://127.0.0.1:9/v1"\napi_key = "k\u00e9y"\n'
    )
    llm_toml.chmod(0o600)
    client = harness.client()
    client.cookies.update(admin.cookies())
    response = client.post("/settings/test", headers={"Origin": ORIGIN, **admin.headers()})
    assert response.status_code == 400
    assert "non-ASCII" in response.text and "k\u00e9y" not in response.text
    assert client.get("/settings").status_code == 200  # the page still shows what to mend


def test_the_probe_reports_a_url_the_client_cannot_encode() -> None:
    upstream = Upstream("main", "http://xn--/v1")  # past the config checks somehow
    result = probe.probe_upstream(upstream, transport=httpx.MockTransport(_models))
    assert not result.ok and "check the base URL" in result.summary
    assert safe_url("http://[::1/v1?key=x") == "(an unparsable URL)"
