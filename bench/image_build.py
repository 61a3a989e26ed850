"""Golden-image build time: cold (``clawden image build --force``) and cached
(``clawden image build`` again with nothing changed).

Builds into a scratch CLAWDEN_HOME with its own ``images/`` (never the shared
cache other runs boot from: a forced rebuild there would swap the image under
them). Cold builds download every package from the Debian mirror, so they
include the network; cached builds only re-hash the artefacts.

    .venv/bin/python -m bench.image_build [--cold 2] [--cached 3]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

from bench._common import (
    Disturbed,
    Home,
    bench_home,
    busy_reason,
    machine,
    say,
    summary,
    unwind_on_sigterm,
    with_retries,
)


def _timed_alone(home: Home, *args: str, seen: list[str], cached: bool = False) -> float:
    """Time one build; append the version built or found to ``seen``.

    Void if another run showed up meanwhile (both cores are shared, and a
    build is CPU- and disk-bound), or, for a cached build, if the recipe
    changed since the previous build (someone editing ``images/`` or
    ``appliance/guest/``): that "cached" build was really a cold one."""
    started = time.monotonic()
    out = home.clawden(*args, timeout=1800).stdout
    seconds = time.monotonic() - started
    found = re.search(r"golden image (\S+) ready", out)
    version = found.group(1) if found else "?"
    expect = seen[-1] if cached and seen else None
    seen.append(version)  # even if void: the next cached build compares with it
    reason = busy_reason()
    if reason is None and expect is not None and version != expect:
        reason = f"recipe changed during the run ({expect} → {version}): not a cached build"
    if reason is not None:
        raise Disturbed(reason)
    return seconds


def measure(cold_runs: int = 2, cached_runs: int = 3) -> dict[str, Any]:
    from appliance.config import Settings
    from appliance.image.manifest import latest_image

    waits: list[dict[str, Any]] = []
    seen: list[str] = []  # versions built or found, in order

    def alone(home: Home, label: str, *args: str, cached: bool = False) -> float:
        # Each build on its own: a disturbed one is redone, the others kept.
        def once() -> dict[str, Any]:
            return {"s": _timed_alone(home, *args, seen=seen, cached=cached)}

        done = with_retries(label, once, attempts=4)
        waits.append({"build": label, **{k: v for k, v in done.items() if k != "result"}})
        seconds = float(done["result"]["s"])
        say(f"{label}: {seconds:.2f} s")
        return seconds

    with bench_home("bench-build", shared_images=False) as home:
        force = ("image", "build", "--force")
        cold = [alone(home, f"cold build {i + 1}", *force) for i in range(cold_runs)]
        cached = [
            alone(home, f"cached build {i + 1}", "image", "build", cached=True)
            for i in range(cached_runs)
        ]
        image = latest_image(Settings.from_env(home.env).images_dir)
        assert image is not None
        artefacts = image.manifest.get("artefacts", {})
        sizes = {name: round(int(a["bytes"]) / 2**20, 1) for name, a in artefacts.items()}
        return {
            "machine": machine(),
            "image": image.version,
            "cold_s": summary(cold),
            "cached_s": summary(cached),
            # The builder's own split of the last cold build (mmdebstrap is most of it).
            "last_cold_builder_s": {
                k: image.manifest.get(k) for k in ("bootstrap_seconds", "build_seconds")
            },
            "artefact_mib": sizes,
            "packages": len(image.manifest.get("packages", [])),
            "waits": waits,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cold", type=int, default=2, help="forced (cold) builds (default 2)")
    p.add_argument("--cached", type=int, default=3, help="cached builds (default 3)")
    args = p.parse_args(argv)
    unwind_on_sigterm()
    print(json.dumps(measure(args.cold, args.cached), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
