"""``clawden claw say`` round trip, excluding model time, in a real VM.

One claw in a private ``CLAWDEN_HOME`` (image from the shared cache) under a
real ``clawden serve``; ``llm.toml`` points the gateway at a scripted
OpenAI-compatible upstream on this host that answers at once with a fixed
text. Each say's figure is the wall time of the CLI command (``clawden claw
say NAME TEXT``: CLI → controller → SSH exec of ``clawden-agent deliver`` in
the guest → the agent → the gateway over the channel → the upstream and
back), minus the upstream's own handling time of the calls made during it
(``ScriptedModelServer.timings``) — the "model time".

The breakdown, interleaved with the says (each round: say, then the rest):

``exec_true``          ``clawden claw exec NAME -- true``: CLI start, the
                       controller RPC and one SSH exec round trip.
``exec_python``        ``… -- python3 -c pass``: plus the guest's Python start.
``exec_agent_start``   ``… -- sh -c 'echo {} | clawden-agent deliver'``: the
                       agent's start and imports, refusing the empty event
                       before any model or workspace work (exit 2).
``exec_openai_import`` ``… -- python3 -P -s -c 'import openai'`` with the
                       wrapper's ``PYTHONPATH``: what the first model call
                       adds on top of the agent's start.

``oneshot_say``        ``… -- sh -c 'printf %s EVENT | clawden-agent deliver'``:
                       the same message delivered the way every say was
                       before the warm agent (a fresh agent process through
                       ``as-claw``), minus its model time: the same run's
                       baseline for the warm path.
``first_token_s``      a say read from the controller's socket as it streams:
                       from the upstream receiving the model call (it sends
                       the first word at once) to the first piece reaching
                       the client.
``web_first_token_s``  the same message sent by a member through the admin
                       panel's web chat (``POST /claws/NAME/chat``, its
                       server-sent events read as they arrive): from the
                       upstream receiving the call to the first piece at
                       the browser's side of the HTTP connection. Against
                       ``first_token_s`` of the same round, it is what the
                       panel adds to the first token.

The say goes to the warm agent (``clawden-agent serve``), which the bench
waits for after ``create``. The upstream streams its words 0.2 s apart
(model time, subtracted like the rest of it). The first say after ``create``
(the agent seeds the starter workspace and its history) is reported apart
from the steady-state ones.

    .venv/bin/python -m bench.say_roundtrip [--says 5]    # prints one JSON object
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from appliance.controller import rpc
from appliance.llm.scripted import ScriptedModelServer
from bench._common import (
    Home,
    bench_home,
    controller,
    ensure_image,
    machine,
    say,
    summary,
    unwind_on_sigterm,
    wait_for_quiet,
    with_retries,
)
from bench._rig import UPSTREAM_KEY, llm_toml

NAME = "bench-say-1"
MEMBER = "Bench"
# The family member who chats through the panel (an account, not a display name).
WEB_MEMBER, WEB_PASSWORD = "bench-member", "bench password 1234"
MODEL = "bench-model"
REPLY = "Hello from the bench."
TEXT = "hello, are you there?"
# The warm agent's pid(s), listed as the agent user (`claw exec NAME -- ...`):
# the pattern is split so the script's own command line does not match it.
WARM_AGENT_PIDS = (
    "sh",
    "-c",
    'pat="guest.serve"; for d in /proc/[0-9]*; do '
    "c=$(tr '\\0' ' ' < \"$d/cmdline\" 2>/dev/null) || continue; "
    'case "$c" in *"$pat serve"*) echo "${d#/proc/}";; esac; done',
)
PIECE_DELAY_S = 0.2
SCENARIO = {
    "models": [MODEL],
    "steps": [
        {
            "name": "answer at once, word by word",
            "repeat": True,
            "piece_delay_s": PIECE_DELAY_S,
            "reply": {"content": REPLY},
        }
    ],
}
EVENT = json.dumps({"type": "message", "text": TEXT, "channel": "cli", "sender": "operator"})
AGENT_PATH = "PYTHONPATH=/opt/clawden/site:/opt/clawden PYTHONDONTWRITEBYTECODE=1"
BREAKDOWN: dict[str, list[str]] = {
    "exec_true": ["true"],
    "exec_python": ["python3", "-c", "pass"],
    "exec_agent_start": ["sh", "-c", "echo {} | clawden-agent deliver; test $? -eq 2"],
    "exec_openai_import": [
        "sh",
        "-c",
        f"{AGENT_PATH} exec python3 -P -s -c 'import openai'",
    ],  # fmt: skip
}


def _timed(home: Home, *args: str) -> tuple[float, str]:
    started = time.monotonic()
    out = home.clawden(*args, timeout=600)
    return time.monotonic() - started, out.stdout


def one_say(home: Home, upstream: ScriptedModelServer) -> dict[str, float]:
    first = len(upstream.timings)
    wall, out = _timed(home, "claw", "say", NAME, TEXT, "--timeout", "600")
    if REPLY not in out:
        raise RuntimeError(f"say answered {out!r}, expected {REPLY!r}")
    model_s, _ = _model_s(upstream, first)
    return {
        "wall_s": wall,
        "model_s": model_s,
        "excl_model_s": wall - model_s,
        "upstream_calls": len(upstream.timings) - first,
    }


def _model_s(upstream: ScriptedModelServer, first: int) -> tuple[float, list[dict[str, Any]]]:
    calls = upstream.timings[first:]
    chats = [t for t in calls if t["path"].startswith("/v1/chat/completions")]
    if not chats:
        raise RuntimeError("the say reached no model")
    return sum(t["handled_s"] for t in calls), chats


def oneshot_say(home: Home, upstream: ScriptedModelServer) -> float:
    """A one-shot delivery of the same message, minus its model time."""
    first = len(upstream.timings)
    script = 'printf "%s" "$1" | clawden-agent deliver'
    wall, out = _timed(home, "claw", "exec", NAME, "--", "sh", "-c", script, "say", EVENT)
    if REPLY not in out:
        raise RuntimeError(f"the one-shot agent answered {out!r}, expected {REPLY!r}")
    return wall - _model_s(upstream, first)[0]


def first_token(home: Home, upstream: ScriptedModelServer) -> dict[str, float]:
    """Seconds from the upstream's first word to the first piece at the client."""
    first = len(upstream.timings)
    request = {"op": "say", "claw": NAME, "text": TEXT, "timeout": 600, "wait": 60}
    first_piece_at: float | None = None
    pieces = 0
    for line in rpc.stream(home.path / "run" / "controller.sock", request, timeout=700):
        if set(line) == {"delta"}:
            pieces += 1
            first_piece_at = first_piece_at or time.time()
    _, chats = _model_s(upstream, first)
    if first_piece_at is None or pieces < 2:
        raise RuntimeError(f"the say streamed {pieces} pieces; is the warm agent running?")
    return {"first_token_s": first_piece_at - chats[-1]["received_at"], "pieces": pieces}


class WebChat:
    """A member logged in to the panel over HTTP, as a browser would be."""

    def __init__(self, home: Home, url: str) -> None:
        password = home.path / "member.password"
        password.write_text(WEB_PASSWORD + "\n")
        home.clawden("user", "add", WEB_MEMBER, "--member-of", NAME,
                     "--password-file", str(password))  # fmt: skip
        self.origin = {"Origin": url}
        self.client = httpx.Client(base_url=url, timeout=700)
        login = {"name": WEB_MEMBER, "password": WEB_PASSWORD}
        response = self.client.post("/login", data=login, headers=self.origin)
        if response.status_code != 303:
            raise RuntimeError(f"the member could not log in: {response.status_code}")
        page = self.client.get("/").text
        self.csrf = page.split('"X-CSRF-Token": "', 1)[1].split('"', 1)[0]

    def first_token(self, upstream: ScriptedModelServer) -> dict[str, float]:
        first = len(upstream.timings)
        headers = {**self.origin, "X-CSRF-Token": self.csrf}
        first_piece_at: float | None = None
        pieces = 0
        with self.client.stream(
            "POST", f"/claws/{NAME}/chat", data={"text": TEXT}, headers=headers
        ) as response:
            if response.status_code != 200:
                raise RuntimeError(f"the web chat answered {response.status_code}")
            for line in response.iter_lines():
                if line == "event: piece":
                    pieces += 1
                    first_piece_at = first_piece_at or time.time()
                elif line == "event: error":
                    raise RuntimeError("the web chat streamed an error")
        _, chats = _model_s(upstream, first)
        if first_piece_at is None or pieces < 2:
            raise RuntimeError(f"the web chat streamed {pieces} pieces")
        return {"web_first_token_s": first_piece_at - chats[-1]["received_at"]}


def wait_for_warm_agent(home: Home) -> float:
    """Seconds until the warm agent's service is running after ``create``."""
    started = time.monotonic()
    while time.monotonic() - started < 300:
        if home.clawden("claw", "exec", NAME, "--", *WARM_AGENT_PIDS, timeout=120).stdout:
            return time.monotonic() - started
        time.sleep(1)
    raise RuntimeError("the warm agent did not start within 300 s")


def measure_in_vm(home: Home, says: int) -> dict[str, Any]:
    with ScriptedModelServer(SCENARIO, api_key=UPSTREAM_KEY) as upstream:
        config = home.path / "llm.toml"
        config.write_text(llm_toml(upstream.base_url, UPSTREAM_KEY, [MODEL]))
        config.chmod(0o600)
        with controller(home, panel=True) as ctl:
            say(f"say: creating {NAME}")
            create_s, _ = _timed(
                home, "claw", "create", NAME, "--member", MEMBER, "--timeout", "400"
            )
            warm_s = wait_for_warm_agent(home)
            say(f"say: {NAME} ready after {create_s:.1f} s, its warm agent {warm_s:.1f} s later")
            first = one_say(home, upstream)
            assert ctl.panel_url is not None
            web = WebChat(home, ctl.panel_url)
            rounds: list[dict[str, Any]] = []
            for i in range(1, says + 1):
                r: dict[str, Any] = {"say": one_say(home, upstream)}
                for part, argv in BREAKDOWN.items():
                    r[part], _ = _timed(home, "claw", "exec", NAME, "--", *argv)
                r["oneshot_say"] = oneshot_say(home, upstream)
                r.update(first_token(home, upstream))
                r.update(web.first_token(upstream))
                say(
                    f"say {i}/{says}: {r['say']['wall_s']:.2f} s "
                    f"(model {r['say']['model_s'] * 1000:.1f} ms), exec true {r['exec_true']:.2f} s"
                )
                rounds.append(r)
            destroy_s, _ = _timed(home, "claw", "destroy", NAME, "--yes")
    return {"create_s": round(create_s, 2), "warm_agent_after_s": round(warm_s, 2),
            "destroy_s": round(destroy_s, 2),
            "first_say": {k: round(v, 4) for k, v in first.items()}, "rounds": rounds}  # fmt: skip


def aggregate(raw: dict[str, Any]) -> dict[str, Any]:
    rounds = raw["rounds"]

    def of(pick: Callable[[dict[str, Any]], float]) -> dict[str, Any]:
        return summary([pick(r) for r in rounds])

    out: dict[str, Any] = {
        "says": len(rounds),
        "say_wall_s": of(lambda r: r["say"]["wall_s"]),
        "say_model_ms": summary([r["say"]["model_s"] * 1000 for r in rounds]),
        "say_excl_model_s": of(lambda r: r["say"]["excl_model_s"]),
        "upstream_calls_per_say": of(lambda r: r["say"]["upstream_calls"]),
    }
    for part in BREAKDOWN:
        out[part + "_s"] = summary([r[part] for r in rounds])
    out["oneshot_say_excl_model_s"] = summary([r["oneshot_say"] for r in rounds])
    out["first_token_s"] = summary([r["first_token_s"] for r in rounds])
    out["web_first_token_s"] = summary([r["web_first_token_s"] for r in rounds])
    out["web_adds_to_first_token_s"] = summary(
        [r["web_first_token_s"] - r["first_token_s"] for r in rounds]
    )
    warm = out["say_excl_model_s"]["median"]
    out["warm_over_oneshot"] = round(warm / out["oneshot_say_excl_model_s"]["median"], 3)
    return {**out, **{k: v for k, v in raw.items() if k != "rounds"}, "raw_rounds": rounds}


def measure(says: int = 5) -> dict[str, Any]:
    wait_for_quiet()
    with bench_home("bench-say") as home:
        prep = ensure_image(home)
        done = with_retries("say", lambda: measure_in_vm(home, says), attempts=4)
    notes = {k: v for k, v in done.items() if k != "result"}
    return {"machine": machine(), **prep, **notes, **aggregate(done["result"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--says", type=int, default=5, help="measured says (default 5)")
    args = p.parse_args(argv)
    unwind_on_sigterm()
    print(json.dumps(measure(args.says), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
