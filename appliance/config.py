"""Where clawden keeps its state, and which libvirt it talks to.

Everything derives from two environment variables so tests and operators can
point a whole installation somewhere else without touching code:

* ``CLAWDEN_HOME`` — data directory (default ``/var/lib/clawden`` for root,
  ``~/.local/share/clawden`` otherwise);
* ``CLAWDEN_LIBVIRT_URI`` — ``qemu:///system`` (default for root) or
  ``qemu:///session`` (default otherwise).

and one tunable:

* ``CLAWDEN_CPU_PERCENT`` — the hard CPU cap of every claw, in percent of one
  host core per vCPU (1–100, 0 = no cap). Default 50, except on a non-root
  ``qemu:///session``, where libvirt has no cgroups to enforce a cap with and
  would refuse to start the domain: there the default is 0. Read when a
  claw's domain is defined, i.e. at every ``claw start``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.core.domain import DEFAULT_CPU_PERCENT, MAX_CPU_PERCENT
from appliance.core.errors import InvalidInput

SYSTEM_HOME = Path("/var/lib/clawden")


def _default_home(env: Mapping[str, str]) -> Path:
    if os.geteuid() == 0:
        return SYSTEM_HOME
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local/share")
    return Path(base) / "clawden"


def _cpu_percent(env: Mapping[str, str], uri: str) -> int:
    raw = env.get("CLAWDEN_CPU_PERCENT", "").strip()
    if not raw:
        # An unprivileged session daemon has no cgroups: libvirt would refuse
        # to start a domain with <cputune> ("cgroup cpu is required").
        session = uri.startswith("qemu:///session") and os.geteuid() != 0
        return 0 if session else DEFAULT_CPU_PERCENT
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_CPU_PERCENT:
        raise InvalidInput(
            f"invalid CLAWDEN_CPU_PERCENT {raw!r}",
            f"give a whole number of percent of one core per vCPU, 1-{MAX_CPU_PERCENT} "
            "(0 for no cap), or unset it for the default",
        )
    return int(raw)


@dataclass(frozen=True)
class Settings:
    home: Path
    libvirt_uri: str
    # Hard CPU cap per vCPU, percent of one host core; 0 = none.
    cpu_percent: int = DEFAULT_CPU_PERCENT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env["CLAWDEN_HOME"]) if env.get("CLAWDEN_HOME") else _default_home(env)
        default_uri = "qemu:///system" if os.geteuid() == 0 else "qemu:///session"
        uri = env.get("CLAWDEN_LIBVIRT_URI") or default_uri
        return cls(home=home.absolute(), libvirt_uri=uri, cpu_percent=_cpu_percent(env, uri))

    @property
    def installation_key(self) -> str:
        """What identifies this installation on a shared libvirt: its home.
        The claws' domain UUIDs (``controller/guestfiles.py: domain_uuid``) and
        the installation tag in their domain names both derive from it."""
        return f"clawden:{self.home}"

    @property
    def installation_tag(self) -> str:
        """Eight hex digits naming this installation's domains
        (``clawden-<tag>-<claw>``, ``core/model.py: domain_name``).

        Derived from the home path, like the UUIDs, rather than minted and
        stored: a domain's name and UUID then always agree about whose it is;
        a copied home (say, a restored backup beside the original) gets a tag
        of its own instead of sharing — and fighting over — the original's
        domains; and a moved home, whose domain XML points at the old paths
        anyway, simply defines fresh domains under its new tag.
        """
        return hashlib.sha256(self.installation_key.encode()).hexdigest()[:8]

    @property
    def db_path(self) -> Path:
        return self.home / "clawden.db"

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def claws_dir(self) -> Path:
        return self.home / "claws"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def audit_head_path(self) -> Path:
        """Count and hash of the newest audit row, kept outside the database so
        deleting the log's tail is detectable. CLI and controller share it."""
        return self.home / "audit.head"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def controller_log(self) -> Path:
        """``clawden serve``'s log file (rotated: ``controller.log.1`` … ``.5``)."""
        return self.logs_dir / "controller.log"

    @property
    def controller_socket(self) -> Path:
        return self.run_dir / "controller.sock"

    def claw_dir(self, name: str) -> Path:
        return self.claws_dir / name

    def ensure_dirs(self) -> None:
        """Create the layout. Directories are traversable (0711) so QEMU, which
        runs as an unprivileged user under qemu:///system, can reach the disk
        files libvirt hands it, but cannot list what else is there."""
        if not self.home.exists():
            # Only a home we create gets our mode: CLAWDEN_HOME may point at
            # an existing directory whose permissions are not ours to change.
            self.home.mkdir(parents=True)
            self.home.chmod(0o711)
        for path, mode in (
            (self.images_dir, 0o711),
            (self.claws_dir, 0o711),
            (self.run_dir, 0o700),
            (self.logs_dir, 0o700),
        ):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(mode)
