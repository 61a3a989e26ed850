"""Member isolation over the app's whole route table: for every route and
method, a member reaching for another member's claw (its name, its
approvals, its messages, its files) gets nothing — 403 or 404, or a page
that holds none of it. A new route with a path parameter this test does not
know fails it until a value (pointing at the other member's data) is added
below, so no route is left out by forgetting."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.support.panel import ORIGIN, Harness, csrf_of
from web.app import create_app

MARKER = "bobs-private-marker"


def _seed(panel: Harness) -> dict[str, str]:
    """alice is the member's own claw; bob (with MARKER everywhere) is not."""
    panel.add_claw("alice")
    panel.add_claw("bob", member=f"Bob {MARKER}")
    panel.add_user("kid", "member", ("alice",), with_totp=False)
    panel.add_user("bobby", "member", ("bob",), with_totp=False)
    store = panel.store
    approval = store.approvals.request("bob", "message.send", f"secret {MARKER}", 300)
    message = store.messages.add("bob", "out", "web", "bob", f"reply {MARKER}")
    return {
        "name": "bob",
        "claw": "bob",
        "approval_id": approval.id,
        "id": approval.id,
        "message_id": str(message.id),
        "token": "not-a-setup-token",
        "path": "MEMORY.md",
        "filename": "MEMORY.md",
        "capability": "message.send",
        "grant_id": "1",
        "job_id": "1",
        "skill": "weather",
    }


def _routes(app: FastAPI) -> list[tuple[str, str, list[str]]]:
    """Every (method, path) of the route table, as the OpenAPI schema lists
    it (FastAPI's public view of it; no route is left out of the schema)."""
    for source in (Path(__file__).parents[2] / "web").rglob("*.py"):
        assert "include_in_schema=False" not in source.read_text(), source
    return [
        (
            method.upper(),
            path,
            [
                p["name"]
                for p in op.get("parameters", [])
                if p["in"] == "query" and p.get("required")
            ],
        )
        for path, operations in app.openapi()["paths"].items()
        for method, op in operations.items()
    ]


def test_every_route_refuses_another_members_claw(panel: Harness) -> None:
    values = _seed(panel)
    app = create_app(panel.panel)
    checked = 0
    for method, template, query in _routes(app):
        params = re.findall(r"{(\w+)(?::\w+)?}", template) + query
        unknown = [p for p in params if p not in values]
        assert not unknown, f"{method} {template}: give the isolation test a value for {unknown}"
        path = re.sub(r"{(\w+)(?::\w+)?}", lambda m: values[m.group(1)], template)
        if query:
            path += "?" + urlencode({name: values[name] for name in query})
        client = TestClient(app, base_url=ORIGIN, follow_redirects=False)
        panel.login(client, "kid")
        csrf = csrf_of(client.get("/").text)
        headers = {"Origin": ORIGIN, "X-CSRF-Token": csrf}
        if method == "GET":
            response = client.get(path, headers=headers)
        else:
            # Every field a form might want, aimed at bob's things.
            form = {**values, "csrf": csrf, "text": "hi", "code": "000000", "action": "start"}
            form.update(password="x" * 12, password_again="x" * 12, sha256="0" * 64)
            response = client.request(method, path, data=form, headers=headers)
        where = f"{method} {path} as a member"
        assert response.status_code < 500, f"{where}: {response.status_code}"
        assert MARKER not in response.text, f"{where} showed another member's data"
        if params and template != "/setup/{token}":
            assert response.status_code in (403, 404), f"{where}: {response.status_code}"
        checked += 1
    assert checked >= 8  # the route table was really walked
    # Nothing of bob's changed on the way.
    assert panel.claws.powered == [] and all(c != "bob" for c, _, _ in panel.claws.said)
