"""The panel's doors: the setup link, logins with TOTP, sessions, cookies,
CSRF, Origin and Host checks, and the security headers (web/auth.py,
web/security.py), on a real SQLite store through the real app."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from appliance.accounts import totp
from tests.support.panel import ORIGIN, PASSWORD, Harness, csrf_of
from web import setup_link
from web.app import create_app
from web.security import CSP

POST = {"Origin": ORIGIN}


def test_pages_need_a_login(panel: Harness) -> None:
    client = panel.client()
    response = client.get("/")
    assert response.status_code == 303 and response.headers["location"] == "/login"
    htmx = client.get("/dashboard/cards", headers={"HX-Request": "true"})
    assert htmx.headers["HX-Redirect"] == "/login"


def test_setup_link_creates_the_admin_once_then_is_dead(panel: Harness) -> None:
    token = setup_link.mint(panel.home)
    client = panel.client()
    assert client.get(f"/setup/{token}").status_code == 200
    assert client.get("/setup/not-the-token").status_code == 404
    form = {"name": "mum", "password": PASSWORD, "password_again": PASSWORD}
    done = client.post(f"/setup/{token}", data=form, headers=POST)
    assert done.status_code == 303 and done.headers["location"] == "/account/totp"
    assert panel.store.users.require("mum").is_admin
    # An admin without TOTP may only enrol.
    assert client.get("/").headers["location"] == "/account/totp"
    # The link is spent: nobody else can claim the home.
    again = panel.client().post(f"/setup/{token}", data={**form, "name": "eve"}, headers=POST)
    assert again.status_code == 404 and panel.store.users.get("eve") is None


def test_setup_refuses_differing_passwords_and_keeps_the_link(panel: Harness) -> None:
    token = setup_link.mint(panel.home)
    form = {"name": "mum", "password": PASSWORD, "password_again": PASSWORD + "x"}
    response = panel.client().post(f"/setup/{token}", data=form, headers=POST)
    assert response.status_code == 400 and "the two passwords differ" in response.text
    assert setup_link.matches(panel.home, token) and panel.store.users.get("mum") is None


def test_totp_enrolment_in_the_panel_shows_a_qr_and_recovery_codes(panel: Harness) -> None:
    panel.add_user("mum", "admin", with_totp=False)
    client = panel.client()
    client.post("/login", data={"name": "mum", "password": PASSWORD}, headers=POST)
    page = client.get("/account/totp").text
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert token
    started = client.post("/account/totp/start", data={"csrf": token.group(1)}, headers=POST)
    assert started.status_code == 200 and "<svg" in started.text
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', started.text)
    assert secret
    code = totp.code_at(secret.group(1), panel.clock.now)
    confirmed = client.post(
        "/account/totp/confirm", data={"csrf": token.group(1), "code": code}, headers=POST
    )
    codes = re.findall(r"<li><code>([^<]+)</code></li>", confirmed.text)
    assert len(codes) == 10
    assert panel.store.users.require("mum").totp_active
    assert client.get("/").status_code == 200


def test_login_needs_the_totp_code_once_it_is_active(panel: Harness) -> None:
    panel.add_user("mum", "admin")
    client = panel.client()
    no_code = client.post("/login", data={"name": "mum", "password": PASSWORD}, headers=POST)
    assert no_code.status_code == 400 and "wrong user name, password or code" in no_code.text
    assert "clawden_session" not in no_code.headers.get("set-cookie", "")
    panel.login(client, "mum")
    assert client.get("/").status_code == 200


def test_session_cookie_flags_and_logout_revokes_on_the_server(panel: Harness) -> None:
    panel.add_user("mum", "admin")
    client = panel.client()
    form = {"name": "mum", "password": PASSWORD, "code": panel.code("mum")}
    response = client.post("/login", data=form, headers=POST)
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=43200" in cookie
    assert "Secure" not in cookie  # plain http on loopback; see the TLS test
    token = cookie.split(";")[0].split("=", 1)[1]
    csrf = csrf_of(client.get("/").text)
    out = client.post("/logout", headers={**POST, "X-CSRF-Token": csrf})
    assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
    # The old token is dead on the server, not only forgotten by the browser.
    replay = panel.client()
    replay.cookies.set("clawden_session", token)
    assert replay.get("/").status_code == 303
    assert panel.accounts.session_user(token) is None


def test_sessions_expire(panel: Harness) -> None:
    panel.add_user("mum", "admin")
    client = panel.client()
    panel.login(client, "mum")
    panel.clock.tick(12 * 3600 + 1)
    assert client.get("/").headers["location"] == "/login"


def test_tls_cookie_is_secure_and_host_prefixed(panel: Harness) -> None:
    panel.add_user("mum", "admin")
    panel.panel.secure = True
    client = TestClient(
        create_app(panel.panel), base_url="https://127.0.0.1", follow_redirects=False
    )
    form = {"name": "mum", "password": PASSWORD, "code": panel.code("mum")}
    cookie = client.post("/login", data=form, headers={"Origin": "https://127.0.0.1"}).headers[
        "set-cookie"
    ]
    assert cookie.startswith("__Host-clawden=") and "Secure" in cookie


def test_state_changes_need_the_csrf_token(panel: Harness) -> None:
    panel.add_user("mum", "admin")
    client = panel.client()
    csrf = panel.login(client, "mum")
    assert client.post("/logout", headers=POST).status_code == 403
    assert client.post("/logout", headers={**POST, "X-CSRF-Token": "0" * 64}).status_code == 403
    assert client.get("/").status_code == 200  # still logged in
    assert client.post("/logout", headers={**POST, "X-CSRF-Token": csrf}).status_code == 303


def test_another_origin_is_refused_before_any_route(panel: Harness) -> None:
    panel.add_user("mum", "admin")
    client = panel.client()
    csrf = panel.login(client, "mum")
    evil = {"Origin": "http://evil.example", "X-CSRF-Token": csrf}
    assert client.post("/logout", headers=evil).status_code == 403
    cross = {"Sec-Fetch-Site": "cross-site", "X-CSRF-Token": csrf}
    assert client.post("/logout", headers=cross).status_code == 403
    form = {"name": "mum", "password": PASSWORD, "code": panel.code("mum")}
    assert (
        client.post("/login", data=form, headers={"Origin": "http://evil.example"}).status_code
        == 403
    )


def test_unknown_host_is_refused(panel: Harness) -> None:
    """DNS rebinding: a page on rebind.example pointing its name at 127.0.0.1."""
    client = panel.client()
    assert client.get("/login", headers={"Host": "rebind.example:7780"}).status_code == 400
    assert client.get("/login", headers={"Host": "127.0.0.1:7780"}).status_code == 200


def test_security_headers_on_every_response(panel: Harness) -> None:
    client = panel.client()
    for response in (client.get("/login"), client.get("/"), client.get("/static/htmx.min.js")):
        assert response.headers["content-security-policy"] == CSP
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    assert client.get("/login").headers["cache-control"] == "no-store"


def test_pages_have_no_inline_script_or_style(panel: Harness) -> None:
    panel.add_user("mum", "admin")
    client = panel.client()
    panel.login(client, "mum")
    for path in ("/login", "/", "/account/totp"):
        html = client.get(path).text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
        assert "<style" not in html and " style=" not in html and " on" + "click=" not in html


def test_dashboard_shows_a_member_their_own_claws_only(panel: Harness) -> None:
    panel.add_claw("alice")
    panel.add_claw("bob", member="Bob <script>alert(1)</script>")
    panel.add_user("alice-m", "member", ("alice",), with_totp=False)
    panel.add_user("mum", "admin")
    member = panel.client()
    panel.login(member, "alice-m")
    html = member.get("/dashboard/cards").text
    assert 'id="claw-alice"' in html and "bob" not in html.lower()
    admin = panel.client()
    panel.login(admin, "mum")
    html = admin.get("/").text
    assert 'id="claw-bob"' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
