"""Tokens sent to the model per idle claw per day with the default heartbeat,
against the naive design (a full-context call every 30 minutes), measured in
the same run.

Every part is the real one except the VM and the model:

* the scheduler is the controller's (``SchedulerRunner`` on a
  ``ScheduleRepository`` in a real SQLite store, the heartbeat made by
  ``ensure_heartbeat``: every 30 min, on), driven through a simulated 24 h
  with an injected clock, one tick per simulated minute;
* before each heartbeat it reads HEARTBEAT.md with the controller's own
  ``ChannelHeartbeatSource`` (an SSH exec of ``cat``), and delivers with the
  controller's own ``ChannelDelivery`` (an SSH exec of the agent's
  ``deliver``, one JSON event in, one reply out) — over a real OpenSSH sshd
  bridged by socat like the guest's (``bench/_rig.py``);
* the agent is the real guest agent (``python -m appliance.guest.serve
  deliver``) on a workspace seeded by ``appliance.guest.templates
  .seed_workspace`` — the starter workspace a new claw gets;
* its model calls go to the LLM gateway through the sshd's forwarded port
  (the gateway records usage in the store, as it does for a claw), and on to
  a scripted OpenAI-compatible upstream that answers ``HEARTBEAT_OK``.

Three simulated days, one claw each:

``idle``   the starter workspace as seeded: HEARTBEAT.md has only headings
           and comments.
``light``  the same, with one short open task in HEARTBEAT.md, so every
           heartbeat calls the model with the light heartbeat context. One
           beat of the day (the ``ACTING_BEAT``-th) acts: it asks for its
           tools, notes the reminder in memory and reports to the owner;
           the others answer ``HEARTBEAT_OK``.
``naive``  every 30 min the agent gets the heartbeat instruction as a chat
           message: the full system prompt (workspace files, skills index),
           the tools, and the ``main`` conversation so far — what a design
           without the pre-check and the light context would send. Its
           workspace has finished onboarding (BOOTSTRAP.md gone), the
           smaller, steady-state prompt.

Token counts: the scripted upstream estimates ``usage.prompt_tokens`` as
(characters of the JSON ``messages``) / 4 and does not count the tool
schemas, which are sent too. So this reports both that figure (what the
gateway recorded) and the request's characters, messages plus tools, with
chars/4 as the token estimate the ratio is taken on.

    .venv/bin/python -m bench.idle_tokens     # prints one JSON object
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from appliance.controller.delivery import ChannelDelivery, deliver_event, fit_message
from appliance.controller.heartbeat_source import ChannelHeartbeatSource
from appliance.core.schedule import Job
from appliance.guest.templates import seed_workspace
from appliance.schedule.jobs import DEFAULT_HEARTBEAT_TEXT, ensure_heartbeat
from appliance.schedule.runner import DeliveryResult, SchedulerRunner
from appliance.store import Store, open_db
from appliance.store.messages import MessageRepository
from appliance.store.schedules import ScheduleRepository
from bench._common import busy_reason, machine, say, unwind_on_sigterm
from bench._rig import Rig, host_rig

REPO = Path(__file__).resolve().parents[1]
TARGET_SHARE = 0.05  # idle day vs the naive floor
LIGHT_DAY_TARGET_SHARE = 0.10  # light day vs the naive day (issue 9)
LIGHT_CALL_TARGET_TOKENS = 2_000  # every light call (issue 9)
ACTING_BEAT = 20  # the light day's beat that acts (about 10:00)
MODEL = "bench-model"
MEMBER = "Bench"
DAY = timedelta(hours=24)
TICK = timedelta(minutes=1)
NAIVE_EVERY = timedelta(minutes=30)
LIGHT_TASK = "- Remind Bench to water the balcony plants on Friday evenings.\n"
OK_REPLY = {"content": "HEARTBEAT_OK"}
OK_FOREVER: list[dict[str, Any]] = [
    {"name": "nothing to report", "repeat": True, "reply": OK_REPLY}
]
SCENARIO = {"models": [MODEL], "steps": OK_FOREVER}
ACTING = [
    {"name": "wants its tools", "reply": {"tool_calls": [{"name": "heartbeat_tools"}]}},
    {
        "name": "notes it",
        "match": {"last_role": "tool"},
        "reply": {
            "tool_calls": [
                {"name": "memory_append", "arguments": {"text": "Reminded Bench: plants."}}
            ]
        },
    },
    {
        "name": "reports",
        "match": {"last_role": "tool"},
        "reply": {"content": "Bench, it is Friday: time to water the balcony plants."},
    },
]
CASES = ("idle", "light", "naive")


def chars_per_call(body: dict[str, Any]) -> dict[str, int]:
    """Characters of one chat request as sent: its messages and its tool schemas."""
    return {
        "messages": len(json.dumps(body.get("messages") or [], ensure_ascii=False)),
        "tools": len(json.dumps(body.get("tools") or [], ensure_ascii=False)),
    }


def call_parts(body: dict[str, Any]) -> dict[str, int]:
    """Where one call's characters go: system prompt, conversation, tool schemas."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    system = sum(
        len(json.dumps(m, ensure_ascii=False)) for m in messages if m.get("role") == "system"
    )
    return {
        "system": system,
        "conversation": chars_per_call(body)["messages"] - system,
        "tools": chars_per_call(body)["tools"],
        "tool_count": len(body.get("tools") or []),
        "messages": len(messages),
    }


def scenario_for(case: str) -> dict[str, Any]:
    """The upstream's answers: always HEARTBEAT_OK, except the light day's acting beat."""
    if case != "light":
        return SCENARIO
    quiet = [{"name": f"quiet beat {n}", "reply": OK_REPLY} for n in range(1, ACTING_BEAT)]
    return {"models": [MODEL], "steps": [*quiet, *ACTING, *OK_FOREVER]}


def tokens_from_chars(chars: int) -> int:
    """The usual rough estimate for English text and JSON: 4 characters a token."""
    return round(chars / 4)


class NaiveDelivery:
    """Every heartbeat as a chat message with the full context (no light path),
    sent the way ``ChannelDelivery`` sends events."""

    def __init__(self, transport_for: Callable[[str], Any], command: list[str]) -> None:
        self.transport_for, self.command = transport_for, command

    def deliver(self, job: Job, reason: str) -> DeliveryResult:
        event = {"type": "message", "text": DEFAULT_HEARTBEAT_TEXT, "channel": "schedule"}
        reply = deliver_event(
            self.transport_for(job.claw), event, 600, command=self.command, claw=job.claw
        )
        return DeliveryResult(True, fit_message(reply["text"]), reply["status"])


class AlwaysDue:
    """The naive design's heartbeat source: it never looks before calling."""

    def read(self, claw: str) -> str | None:
        return "(naive design: every heartbeat is delivered)"


@dataclass
class Day:
    fired: list[str]
    chat_bodies: list[dict[str, Any]]
    gateway_rows: list[dict[str, Any]]
    wall_s: float


def agent_command(rig: Rig, workspace: Path, state: Path) -> list[str]:
    """The guest's ``clawden-agent deliver``, with this machine's paths and the
    services' forwarded ports instead of the guest's fixed ones. The agent is
    this checkout's: sshd starts it in another directory, where the venv's
    own (editable) install of the package would be found instead."""
    return [
        "env", f"PYTHONPATH={REPO}", sys.executable, "-m", "appliance.guest.serve", "deliver",
        "--workspace", str(workspace), "--state-dir", str(state),
        "--gateway", rig.url("llm", "/v1"), "--host-api", rig.url("hostapi"),
        "--proxy", rig.url("egress"),
    ]  # fmt: skip


def prepare(rig: Rig, case: str) -> tuple[str, Path, Path]:
    claw = f"bench-{case}"
    base = rig.settings.home / "agents" / claw
    workspace, state = base / "workspace", base / "state"
    created = seed_workspace(workspace, claw, MEMBER, datetime.now().astimezone(), state_dir=state)
    if "HEARTBEAT.md" not in created:
        raise RuntimeError(f"the starter workspace has no HEARTBEAT.md (created {created})")
    if case == "light":
        with (workspace / "HEARTBEAT.md").open("a", encoding="utf-8") as f:
            f.write("\n" + LIGHT_TASK)
    if case == "naive":
        (workspace / "BOOTSTRAP.md").unlink(missing_ok=True)  # onboarded: the smaller prompt
    return claw, workspace, state


def simulate_day(rig: Rig, case: str) -> Day:
    claw, workspace, state = prepare(rig, case)
    db = open_db(rig.settings.db_path)
    try:
        job = ensure_heartbeat(Store(db), claw, "UTC")
        assert job.next_run_at is not None
        start = datetime.now(UTC)
        command = agent_command(rig, workspace, state)
        delivery: ChannelDelivery | NaiveDelivery
        source: ChannelHeartbeatSource | AlwaysDue
        if case == "naive":
            delivery, source = NaiveDelivery(rig.transport_for, command), AlwaysDue()
        else:
            delivery = ChannelDelivery(rig.transport_for, 600, command)
            source = ChannelHeartbeatSource(rig.transport_for, path=str(workspace / "HEARTBEAT.md"))
        now = [start]
        clock: Callable[[], datetime] = lambda: now[0]  # noqa: E731
        runner = SchedulerRunner(
            ScheduleRepository(db), delivery, clock, source, MessageRepository(db)
        )
        first = len(rig.upstream.requests)
        fired: list[str] = []
        wall = time.monotonic()
        while now[0] < start + DAY:
            now[0] += TICK
            fired += [f.status for f in runner.tick() if f.claw == claw]
        wall_s = time.monotonic() - wall
    finally:
        db.close()
    bodies = [
        r["body"]
        for r in rig.upstream.requests[first:]
        if r["path"] == "/v1/chat/completions" and isinstance(r["body"], dict)
    ]
    return Day(fired, bodies, rig.llm_rows(claw), wall_s)


def day_figures(day: Day) -> dict[str, Any]:
    per_call = [chars_per_call(b) for b in day.chat_bodies]
    messages = sum(c["messages"] for c in per_call)
    tools = sum(c["tools"] for c in per_call)
    return {
        "heartbeats_fired": len(day.fired),
        "heartbeat_statuses": dict(Counter(day.fired)),
        "model_calls": len(day.chat_bodies),
        "gateway_rows": len(day.gateway_rows),
        "prompt_tokens_reported": sum(int(r["prompt_tokens"]) for r in day.gateway_rows),
        "completion_tokens_reported": sum(int(r["completion_tokens"]) for r in day.gateway_rows),
        "request_chars_messages": messages,
        "request_chars_tools": tools,
        "request_chars": messages + tools,
        "est_tokens_incl_tools": tokens_from_chars(messages + tools),
        "per_call_chars": [c["messages"] + c["tools"] for c in per_call],
        "max_call_tokens": max(
            (tokens_from_chars(c["messages"] + c["tools"]) for c in per_call), default=0
        ),
        "messages_per_call": dict(Counter(len(b.get("messages") or []) for b in day.chat_bodies)),
        "tools_per_call": dict(Counter(len(b.get("tools") or []) for b in day.chat_bodies)),
        "first_call": call_parts(day.chat_bodies[0]) if day.chat_bodies else None,
        "last_call": call_parts(day.chat_bodies[-1]) if day.chat_bodies else None,
        "simulated_day_wall_s": round(day.wall_s, 1),
    }


def share(ours: float, naive: float) -> float:
    return round(ours / naive, 4) if naive else 0.0


def measure() -> dict[str, Any]:
    busy = busy_reason()
    results: dict[str, Any] = {
        "simulated": "24 h per case, one scheduler tick per simulated minute",
        "heartbeat": "ensure_heartbeat defaults (every 30 min, on)",
        "token_estimate": "chars/4 of messages + tool schemas; reported = scripted "
        "upstream's usage (chars of messages / 4, tools not counted)",
    }
    for case in CASES:
        # A rig per case: one sshd stands for one guest, whose loopback ports
        # only one claw's forwards can hold.
        with host_rig(scenario_for(case), [f"bench-{case}"]) as rig:
            say(f"tokens: simulating a day of {case}")
            results[case] = day_figures(simulate_day(rig, case))
        r = results[case]
        say(f"tokens: {case}: {r['model_calls']} calls, ~{r['est_tokens_incl_tools']} tokens")
    naive = results["naive"]
    per_call = naive["per_call_chars"]
    if not per_call:
        raise RuntimeError("the naive day made no model call")
    # The naive day's history grows call by call; its first call x 48 is the
    # smallest a naive day can be, and the baseline the ratio is taken on.
    calls_per_day = int(DAY / NAIVE_EVERY)
    floor = tokens_from_chars(per_call[0]) * calls_per_day
    results["naive_floor_tokens_per_day"] = floor
    results["naive_floor"] = f"first naive call x {calls_per_day} (history growth left out)"
    for case in ("idle", "light"):
        ours = results[case]["est_tokens_incl_tools"]
        results[f"{case}_share_of_naive_floor"] = share(ours, floor)
        results[f"{case}_share_of_naive_day"] = share(ours, naive["est_tokens_incl_tools"])
        results[f"{case}_share_reported_tokens"] = share(
            results[case]["prompt_tokens_reported"], naive["prompt_tokens_reported"]
        )
        results[f"{case}_target_met"] = ours / floor <= TARGET_SHARE
    results["target_share"] = TARGET_SHARE
    light = results["light"]
    results["light_call_target_tokens"] = LIGHT_CALL_TARGET_TOKENS
    results["light_call_target_met"] = light["max_call_tokens"] <= LIGHT_CALL_TARGET_TOKENS
    results["light_day_target_share"] = LIGHT_DAY_TARGET_SHARE
    results["light_day_target_met"] = results["light_share_of_naive_day"] <= LIGHT_DAY_TARGET_SHARE
    results["busy_at_start_end"] = [busy, busy_reason()]
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.parse_args(argv)
    unwind_on_sigterm()
    print(json.dumps({"machine": machine(), **measure()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
