"""``clawden doctor``: can this host run claws? Each problem comes with its fix."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from appliance import app
from appliance.cli.output import Subparsers
from appliance.cli.panel import panel_url
from appliance.config import Settings
from appliance.controller import rpc
from appliance.core.errors import ClawdenError, Unavailable
from appliance.image import latest_image, verify_image
from appliance.llm.config import load_llm_config, safe_url

MIN_FREE_GIB = 5
SERVICE = "clawden.service"
# sd_booted(3): systemd runs this machine when this directory exists.
SYSTEMD_RUN = Path("/run/systemd/system")
TOOLS = {
    "qemu-img": "qemu-utils",
    "mkfs.ext4": "e2fsprogs",
    "mmdebstrap": "mmdebstrap",
    "debugfs": "e2fsprogs",
}


def register(sub: Subparsers) -> None:
    cmd = sub.add_parser(
        "doctor", help="check this host can run claws, with the fix for each problem"
    )
    cmd.set_defaults(handler=doctor)


def doctor(args: argparse.Namespace) -> int:
    return run_doctor(app.load_settings(), print)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    blocking: bool = True  # a failing non-blocking check is only a note


def _libvirt(settings: Settings) -> Check:
    try:
        app.hypervisor(settings).ping()
    except ClawdenError as exc:
        return Check("libvirt", False, exc.what, exc.fix)
    return Check("libvirt", True, f"{settings.libvirt_uri} reachable")


def _tools() -> list[Check]:
    checks = []
    for tool, package in TOOLS.items():
        path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
        checks.append(
            Check(
                f"tool {tool}",
                path is not None,
                path or "not installed",
                f"run `clawden host provision` (installs {package})",
            )
        )
    return checks


def _disk(settings: Settings) -> Check:
    probe = settings.home
    while not probe.exists():  # not created yet: where it will be created
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 2**30
    return Check(
        "disk space",
        free >= MIN_FREE_GIB,
        f"{free:.1f} GiB free under {probe}",
        f"free at least {MIN_FREE_GIB} GiB there, or point CLAWDEN_HOME at a bigger disk",
    )


def _image(settings: Settings) -> tuple[Check, Check | None]:

    image = latest_image(settings.images_dir)
    if image is None:
        return Check("golden image", False, "none built", "run `clawden image build`"), None
    try:
        verify_image(image)
    except ClawdenError as exc:
        return Check("golden image", False, exc.what, exc.fix), None
    image_ok = Check("golden image", True, f"{image.version}, sha256 verified")
    try:
        choice = app.accelerator_picker(settings)()
    except ClawdenError as exc:
        return image_ok, Check("accelerator", False, exc.what, exc.fix)
    return image_ok, Check("accelerator", True, f"{choice.accelerator.value}: {choice.note}")


def _controller(settings: Settings) -> Check:
    try:
        reply = rpc.call(settings.controller_socket, {"op": "ping"}, timeout=5)
    except Unavailable as exc:
        return Check("controller", False, exc.what, exc.fix, blocking=False)
    return Check("controller", True, f"running (pid {reply.get('pid')})")


def _llm_provider(settings: Settings) -> Check:
    """A warning, not a failure: claws run without one, they just cannot
    think (the gateway tells them why)."""
    fix = "the admin sets the model provider in the panel's Settings, or in llm.toml (docs/llm.md)"
    try:
        upstream = load_llm_config(settings.home).upstream
    except ClawdenError as exc:
        return Check("model provider", False, exc.what, exc.fix, blocking=False)
    if upstream is None:
        return Check("model provider", False, "none configured", fix, blocking=False)
    return Check("model provider", True, f"{upstream.name}: {safe_url(upstream.base_url)}")


def _panel(settings: Settings) -> Check:
    """The panel answers with our own CSP: not some other program on the port.
    Asked only when the controller runs (the panel lives in it)."""
    from web.security import CSP

    url = panel_url(settings.run_dir)
    fix = "check the controller's log (`journalctl -u clawden`, or CLAWDEN_HOME/logs)"
    if not (settings.run_dir / "panel.url").exists():
        fix = "it was started with --no-panel, or is older than the panel: restart it"
    try:
        # A local probe, nothing secret sent: a self-signed certificate is fine.
        reply = httpx.get(f"{url}/login", timeout=5, verify=False)  # noqa: S501
    except httpx.HTTPError as exc:
        return Check("panel", False, f"{url} does not answer ({type(exc).__name__})", fix, False)
    if reply.status_code != 200 or reply.headers.get("content-security-policy") != CSP:
        detail = f"{url}/login answered {reply.status_code} without clawden's CSP"
        return Check("panel", False, detail, "is another program on that port?", False)
    return Check("panel", True, f"{url}/ answers")


def _service(
    systemd_run: Path = SYSTEMD_RUN,
    systemctl: Callable[[str], str] | None = None,
) -> Check:
    """Under systemd, clawden.service starts the controller at boot; where
    systemd does not run, nothing does, and the operator must know."""
    if not systemd_run.is_dir():
        return Check(
            "service",
            True,
            "systemd is not running here, so nothing starts clawden at boot:"
            " after a reboot run `bash scripts/up.sh`",
        )
    state = (systemctl or _is_enabled)(SERVICE)
    if state == "enabled":
        return Check("service", True, f"{SERVICE} enabled (starts at boot)")
    return Check(
        "service",
        False,
        f"{SERVICE} is {state or 'unknown'}: claws will not come back after a reboot",
        "run `clawden host provision` (installs and enables it)",
        blocking=False,
    )


def _is_enabled(unit: str) -> str:
    try:
        done = subprocess.run(
            ["systemctl", "is-enabled", unit],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    # "not-found" when no such unit, "disabled", "masked", …
    return done.stdout.strip() or "not-found"


def run_doctor(settings: Settings, say: Callable[[str], None]) -> int:
    checks = [_libvirt(settings), *_tools(), _disk(settings)]
    image, accel = _image(settings)
    checks.append(image)
    if accel is not None:
        checks.append(accel)
    controller = _controller(settings)
    checks.append(controller)
    if controller.ok:
        checks.append(_panel(settings))
    checks.append(_service())
    checks.append(_llm_provider(settings))
    failed = 0
    for c in checks:
        mark = "ok  " if c.ok else ("FAIL" if c.blocking else "note")
        say(f"[{mark}] {c.name}: {c.detail}" + ("" if c.ok else f" — {c.fix}"))
        failed += (not c.ok) and c.blocking
    say("ready to run claws" if not failed else f"{failed} problem(s) to fix")
    return 1 if failed else 0
