"""What the claw asks of the host: the ``HostApi`` port, a fake, and the HTTP client.

Every host service is an SSH remote forward on the guest's 127.0.0.1, so the
host knows which claw is calling from the channel itself; nothing here sends
an identity or a secret. The HTTP client uses only the standard library (the
image has python3 and nothing else) and never honours proxy variables from
the environment: the host API is reached directly, the web only through the
host's egress proxy. Endpoints and JSON shapes are in docs/agent.md.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Protocol

HOST_API_URL = "http://127.0.0.1:7701"
PROXY_URL = "http://127.0.0.1:7703"
MAX_REPLY = 1024 * 1024  # a host answer larger than this is a bug, not data
MAX_PAGE = 512 * 1024  # bytes of a fetched page read before it is cut
_WAIT_SLICE_S = 25.0  # one long poll for an approval; short enough for any HTTP timeout


class HostApiError(Exception):
    """The host refused or could not do what was asked; the text says why."""


@dataclass(frozen=True)
class Approval:
    id: str
    status: str  # approved | denied | expired | timeout
    reason: str = ""


@dataclass(frozen=True)
class Page:
    url: str
    status: int
    content_type: str
    text: str
    truncated: bool


class HostApi(Protocol):
    def send_message(self, text: str) -> dict[str, Any]: ...
    def list_schedules(self) -> list[dict[str, Any]]: ...
    def create_schedule(
        self, kind: str, spec: str, tz: str | None, text: str
    ) -> dict[str, Any]: ...
    def delete_schedule(self, schedule_id: int) -> None: ...
    def request_approval(self, action: str, details: str, timeout_s: float) -> Approval: ...
    def web_fetch(self, url: str) -> Page: ...
    def installed_skills(self) -> dict[str, str]: ...


@dataclass
class FakeHostApi:
    """The host in memory: records messages, keeps schedules, answers approvals."""

    approval: str = "approved"  # what every approval request is decided as
    pages: dict[str, str] = field(default_factory=dict)
    refusal: str = "web access is not enabled for this claw yet (egress_not_available)"
    sent: list[str] = field(default_factory=list)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    approvals: list[tuple[str, str, float]] = field(default_factory=list)
    skills: dict[str, str] = field(default_factory=dict)  # name -> content hash installed
    skills_error: str | None = None  # set: the host cannot be asked

    def send_message(self, text: str) -> dict[str, Any]:
        self.sent.append(text)
        return {"id": len(self.sent), "delivered": False}

    def list_schedules(self) -> list[dict[str, Any]]:
        return [dict(s) for s in self.schedules]

    def create_schedule(self, kind: str, spec: str, tz: str | None, text: str) -> dict[str, Any]:
        if kind not in ("cron", "every", "at"):
            raise HostApiError(f"a claw may add cron, every and at jobs, not {kind!r}")
        new_id = max((int(s["id"]) for s in self.schedules), default=0) + 1
        job = {"id": new_id, "kind": kind, "spec": spec, "tz": tz or "UTC", "text": text}
        self.schedules.append({**job, "created_by": "claw", "enabled": True})
        return dict(self.schedules[-1])

    def delete_schedule(self, schedule_id: int) -> None:
        kept = [s for s in self.schedules if s["id"] != schedule_id]
        if len(kept) == len(self.schedules):
            raise HostApiError(f"no schedule {schedule_id} of this claw")
        self.schedules = kept

    def request_approval(self, action: str, details: str, timeout_s: float) -> Approval:
        self.approvals.append((action, details, timeout_s))
        return Approval(str(len(self.approvals)), self.approval)

    def web_fetch(self, url: str) -> Page:
        if url in self.pages:
            return Page(url, 200, "text/plain", self.pages[url], False)
        raise HostApiError(f"the host refused to fetch {url}: {self.refusal}")

    def installed_skills(self) -> dict[str, str]:
        if self.skills_error is not None:
            raise HostApiError(self.skills_error)
        return dict(self.skills)


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    # An empty ProxyHandler: HTTP(S)_PROXY in the environment is never used.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


class HttpHostApi:
    """JSON over HTTP to the host API on the forwarded port 7701."""

    def __init__(
        self, base_url: str = HOST_API_URL, proxy_url: str = PROXY_URL, timeout_s: float = 30.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.proxy_url = proxy_url
        self.timeout_s = timeout_s
        self._opener = _no_proxy_opener()

    def _call(
        self, method: str, path: str, payload: Any = None, timeout_s: float | None = None
    ) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        # S310: base_url is the fixed http:// host API address, never model input.
        request = urllib.request.Request(self.base_url + path, data=data, method=method)  # noqa: S310
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=timeout_s or self.timeout_s) as response:
                raw = response.read(MAX_REPLY + 1)
        except urllib.error.HTTPError as exc:
            with exc:
                raise HostApiError(_host_error(exc.code, exc.read(MAX_REPLY))) from None
        except (urllib.error.URLError, OSError) as exc:
            raise HostApiError(f"the host API cannot be reached ({exc})") from None
        if len(raw) > MAX_REPLY:
            raise HostApiError("the host API answer is too large")
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            raise HostApiError("the host API answered something that is not JSON") from None

    def whoami(self) -> str:
        return str(self._call("GET", "/v1/whoami").get("claw", ""))

    def send_message(self, text: str) -> dict[str, Any]:
        return dict(self._call("POST", "/v1/messages", {"text": text}))

    def list_schedules(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/schedules").get("schedules") or [])

    def create_schedule(self, kind: str, spec: str, tz: str | None, text: str) -> dict[str, Any]:
        body = {"kind": kind, "spec": spec, "tz": tz, "text": text}
        return dict(self._call("POST", "/v1/schedules", body).get("schedule") or {})

    def delete_schedule(self, schedule_id: int) -> None:
        self._call("POST", "/v1/schedules/delete", {"id": schedule_id})

    def installed_skills(self) -> dict[str, str]:
        """Name -> content hash of each skill the owner installed on this claw."""
        listed = self._call("GET", "/v1/skills").get("skills")
        if not isinstance(listed, list):
            raise HostApiError("the host API answered without a skills list")
        out: dict[str, str] = {}
        for item in listed:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                out[item["name"]] = str(item.get("sha256", ""))
        return out

    def request_approval(self, action: str, details: str, timeout_s: float) -> Approval:
        """Ask, then long-poll until decided or ``timeout_s`` passes (status ``timeout``)."""
        body = {"action": action, "details": details, "timeout_s": int(timeout_s)}
        created = self._call("POST", "/v1/approvals", body)
        approval_id = str(created.get("id", ""))
        status, reason = str(created.get("status", "pending")), str(created.get("reason", ""))
        deadline = time.monotonic() + timeout_s
        while status == "pending":
            left = deadline - time.monotonic()
            if left <= 0:
                return Approval(approval_id, "timeout", "no decision in time")
            wait = min(left, _WAIT_SLICE_S)
            answer = self._call(
                "POST", "/v1/approvals/wait", {"id": approval_id, "wait_s": wait}, wait + 10
            )
            status, reason = str(answer.get("status", "pending")), str(answer.get("reason", ""))
        return Approval(approval_id, status, reason)

    def web_fetch(self, url: str) -> Page:
        """GET ``url`` through the host's egress proxy; a refusal says the host's reason."""
        if not re.match(r"^https?://", url, re.I):
            raise HostApiError("only http:// and https:// URLs can be fetched")
        proxies = {"http": self.proxy_url, "https": self.proxy_url}
        opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies))
        # S310: the scheme was checked above; only http(s) reaches the proxy.
        request = urllib.request.Request(url, headers={"User-Agent": "clawden-claw/0.1"})  # noqa: S310
        try:
            with opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read(MAX_PAGE + 1)
                status, ctype = int(response.status), str(response.headers.get_content_type())
                charset = response.headers.get_content_charset() or "utf-8"
        except urllib.error.HTTPError as exc:
            with exc:
                body = exc.read(MAX_REPLY)
                if exc.headers.get("X-Clawden-Refusal") or exc.code in (403, 407, 502, 503):
                    raise HostApiError(
                        f"the host refused to fetch {url}: {_host_error(exc.code, body)}"
                    ) from None
                text = body.decode("utf-8", "replace")[:2000]
                return Page(url, exc.code, str(exc.headers.get_content_type()), text, False)
        except ConnectionRefusedError:
            raise HostApiError(
                "web access is not available: the host's proxy is not running"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            # CONNECT refusals (https) only carry the proxy's status line, e.g. "403 Forbidden".
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ConnectionRefusedError):
                raise HostApiError(
                    "web access is not available: the host's proxy is not running"
                ) from None
            raise HostApiError(f"the host refused or failed to fetch {url} ({reason})") from None
        text = raw[:MAX_PAGE].decode(charset if _known(charset) else "utf-8", "replace")
        return Page(url, status, ctype, text, len(raw) > MAX_PAGE)


def _known(charset: str) -> bool:
    try:
        "".encode(charset)
    except LookupError:
        return False
    return True


def _host_error(status: int, body: bytes) -> str:
    """The host's ``{"error": {"message", "code"}}`` in words, else the raw text."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        code = f" ({err['code']})" if err.get("code") else ""
        return f"{err.get('message', 'refused')}{code}"
    text = body.decode("utf-8", "replace").strip()[:500]
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"
