"""The host API a claw reaches on its own ``127.0.0.1:7701``.

``GET /v1/whoami`` answers with the claw's name *as the host knows it* — taken
from the SSH transport the request travelled on, not from the request.
"""

from __future__ import annotations

from appliance.channel.http import HttpRequest, HttpResponse, HttpService
from appliance.channel.services import ClawIdentity

HOST_API_PORT = 7701


def _whoami(claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
    return HttpResponse.json(200, {"claw": claw.name})


def _health(claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
    return HttpResponse.json(200, {"ok": True})


def host_api_service() -> HttpService:
    return HttpService(
        "hostapi",
        HOST_API_PORT,
        {("GET", "/v1/whoami"): _whoami, ("GET", "/v1/health"): _health},
    )
