"""Latency of a chat completion through the LLM gateway, against calling the
same upstream directly, interleaved in one run.

The upstream is ``appliance.llm.scripted.ScriptedModelServer`` on loopback,
answering every call at once with the same short reply. The client is the
real ``openai`` client (what the guest agent uses), keep-alive on. Paths,
taken round-robin in a rotating order so drift hits all of them alike:

``direct``     openai client → upstream (the baseline)
``ssh``        openai client → a real OpenSSH sshd's remote-forwarded
               127.0.0.1 port (sshd bridged by socat to a unix socket,
               exactly like the guest's virtio-serial port) → SSH channel →
               the controller's ``ChannelManager``/``ServiceRegistry`` →
               the gateway service built by ``llm_gateway_service`` (store,
               ``llm.toml``, policy, usage recorded in SQLite) → upstream.
               This is the path a claw's request takes, minus the VM.
``loopback``   openai client → the same gateway service on a plain TCP
               socket (no SSH): splits the SSH hop from the gateway.
``inprocess``  the gateway service's ``dispatch`` called directly with a
               prepared request (no client, no HTTP front): the gateway's
               own work plus its upstream call.
``upstream``   a bare ``httpx`` POST to the upstream with the gateway's
               pooled-client settings: the upstream leg alone, so
               ``inprocess − upstream`` is the gateway's own logic.

Each in a non-streaming and a streaming (SSE) variant.

    .venv/bin/python -m bench.gateway_overhead [--rounds 200] [--warmup 20]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from typing import Any

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from appliance.channel.forwarding import ClawIdentity
from appliance.services.http import HttpRequest, HttpService
from bench._common import busy_reason, machine, say, unwind_on_sigterm, wait_for_quiet
from bench._rig import UPSTREAM_KEY, host_rig
from bench._stats import latency_ms, ratios

TARGET_P50 = 1.1
CLAW = "bench-gw"
MODEL = "bench-model"
KEY = UPSTREAM_KEY
DUMMY = "sk-dummy-the-guest-has-no-key"
REPLY = "HEARTBEAT_OK"
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "Is anything due? Reply HEARTBEAT_OK if not."},
]
SCENARIO = {
    "models": [MODEL],
    "steps": [
        {
            "name": "answer at once",
            "repeat": True,
            "reply": {"content": REPLY, "usage": {"prompt_tokens": 30, "completion_tokens": 4}},
        }
    ],
}
PATHS = ("direct", "ssh", "loopback", "inprocess", "upstream")


class LoopbackHttp(socketserver.ThreadingTCPServer):
    """Serves an ``HttpService`` on 127.0.0.1 as one fixed claw: what the SSH
    remote forward does for a guest, without sshd and SSH."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, service: HttpService, claw: str) -> None:
        self.service, self.claw = service, ClawIdentity(claw)
        super().__init__(("127.0.0.1", 0), _Serve)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def close(self) -> None:
        self.shutdown()
        self.thread.join()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client dropping its keep-alive connection is not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Serve(socketserver.BaseRequestHandler):
    server: LoopbackHttp

    def handle(self) -> None:
        # As any HTTP server does (sshd does it for forwarded connections too).
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.service.handle(self.server.claw, self.request)


def _openai_call(client: openai.OpenAI, stream: bool) -> Callable[[], None]:
    def call() -> None:
        if stream:
            chunks = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            reply = client.chat.completions.create(model=MODEL, messages=MESSAGES)
            text = reply.choices[0].message.content or ""
        if text.strip() != REPLY:
            raise RuntimeError(f"unexpected answer {text!r}")

    return call


def _inprocess_call(service: HttpService, stream: bool) -> Callable[[], None]:
    body = json.dumps({"model": MODEL, "messages": MESSAGES, "stream": stream}).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {DUMMY}"}

    def call() -> None:
        response = service.dispatch(
            ClawIdentity(CLAW), HttpRequest("POST", "/v1/chat/completions", headers, body)
        )
        if response.status != 200:
            raise RuntimeError(f"gateway answered {response.status}: {response.body[:200]!r}")
        if response.stream is not None:
            data = b"".join(response.stream)
            if b"[DONE]" not in data:
                raise RuntimeError("stream without [DONE]")

    return call


def _upstream_call(client: httpx.Client, base_url: str, stream: bool) -> Callable[[], None]:
    body = json.dumps({"model": MODEL, "messages": MESSAGES, "stream": stream}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}

    def call() -> None:
        with client.stream(
            "POST", base_url + "/chat/completions", content=body, headers=headers
        ) as resp:
            data = resp.read()
        if resp.status_code != 200 or REPLY.encode() not in data:
            raise RuntimeError(f"upstream answered {resp.status_code}: {data[:200]!r}")

    return call


def run_interleaved(
    calls: Mapping[str, Callable[[], object]], rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Each round calls every path once, in an order rotated per round, so no
    path is always first (or always right after another); warm-up rounds are
    run the same way and dropped."""
    names = list(calls)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            calls[name]()
            elapsed = time.perf_counter() - started
            if i >= warmup:
                samples[name].append(elapsed)
    return samples


def summarize(samples: dict[str, list[float]]) -> dict[str, Any]:
    stats = {name: latency_ms(values) for name, values in samples.items()}
    base = stats["direct"]
    out: dict[str, Any] = {"latency_ms": stats}
    out["ratio_vs_direct"] = {n: ratios(s, base) for n, s in stats.items() if n != "direct"}
    p50 = {n: s["p50"] for n, s in stats.items()}
    out["added_ms_p50"] = {
        "gateway_path_total (ssh - direct)": round(p50["ssh"] - p50["direct"], 3),
        "ssh hop (ssh - loopback)": round(p50["ssh"] - p50["loopback"], 3),
        "gateway logic in-process (inprocess - upstream)": round(
            p50["inprocess"] - p50["upstream"], 3
        ),
    }
    ratio = out["ratio_vs_direct"]["ssh"]["p50"]
    out["target_ratio_p50"] = TARGET_P50
    out["target_met"] = ratio <= TARGET_P50
    return out


def measure(rounds: int = 200, warmup: int = 20, quiet: bool = True) -> dict[str, Any]:
    # No VM here, but a concurrent test run's TCG guests take both cores:
    # latency figures want a quiet machine (the load is recorded either way).
    waited = wait_for_quiet() if quiet else 0.0
    started_busy = busy_reason()
    load_before = os.getloadavg()
    results: dict[str, Any] = {
        "rounds": rounds,
        "warmup_rounds": warmup,
        "order": "every round calls each path once, order rotated per round",
        "paths": list(PATHS),
        "waited_for_quiet_s": round(waited),
    }
    with ExitStack() as stack:
        rig = stack.enter_context(host_rig(SCENARIO, [CLAW]))
        upstream, service = rig.upstream, rig.gateway
        loop = LoopbackHttp(service, CLAW)
        stack.callback(loop.close)

        def client(base_url: str, key: str) -> openai.OpenAI:
            c = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)
            stack.callback(c.close)
            return c

        direct = client(upstream.base_url, KEY)
        via_ssh = client(rig.url("llm", "/v1"), DUMMY)
        via_loop = client(loop.base_url, DUMMY)
        raw = httpx.Client(trust_env=False, follow_redirects=False, timeout=60)
        stack.callback(raw.close)

        for stream in (False, True):
            label = "stream" if stream else "non_stream"
            calls = {
                "direct": _openai_call(direct, stream),
                "ssh": _openai_call(via_ssh, stream),
                "loopback": _openai_call(via_loop, stream),
                "inprocess": _inprocess_call(service, stream),
                "upstream": _upstream_call(raw, upstream.base_url, stream),
            }
            say(f"gateway: {label}: {warmup} warm-up + {rounds} rounds x {len(calls)} paths")
            samples = run_interleaved(calls, rounds, warmup)
            results[label] = summarize(samples)
            r = results[label]["ratio_vs_direct"]["ssh"]
            say(f"gateway: {label}: ssh/direct p50 {r['p50']}x p99 {r['p99']}x")

        rows = rig.llm_rows(CLAW)
        statuses: dict[str, int] = {}
        for row in rows:
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
        results["usage_rows_recorded"] = statuses
        results["upstream_requests"] = len(upstream.requests)
        results["upstream_auth_all_matched"] = all(
            r["authorization_matched"] for r in upstream.requests
        )
        handled = [t["handled_s"] for t in upstream.timings]
        results["upstream_handling_ms"] = latency_ms(handled)
    results["busy_at_start"] = started_busy
    results["busy_at_end"] = busy_reason()
    results["loadavg_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=200, help="measured rounds (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="discarded rounds (default 20)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    args = p.parse_args(argv)
    unwind_on_sigterm()
    result = measure(args.rounds, args.warmup, quiet=not args.no_wait)
    print(json.dumps({"machine": machine(), **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
