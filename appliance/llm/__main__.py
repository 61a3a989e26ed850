"""``python -m appliance.llm --scenario FILE [--port N]``: run the scripted
model server on 127.0.0.1 until interrupted (demos, benchmarks, manual tests).

The key it checks is read from an environment variable, not the command line,
because a process's arguments are visible to every user of the machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from appliance.core.errors import ClawdenError
from appliance.llm.scripted import ScriptedModelServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.llm", description=__doc__)
    parser.add_argument("--scenario", required=True, type=Path, help="JSON or YAML scenario")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="require 'Authorization: Bearer $VAR' (default: accept any key)",
    )
    parser.add_argument("--log", type=Path, help="append every request as a JSON line here")
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(f"error: ${args.api_key_env} is not set", file=sys.stderr)
            return 2
    try:
        server = ScriptedModelServer(
            args.scenario, api_key=api_key, port=args.port, log_path=args.log
        )
    except ClawdenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        print(f"scripted model server on {server.base_url}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
