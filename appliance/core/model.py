"""Claws and their lifecycle, as plain values."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from appliance.core.errors import InvalidInput

# Names end up in domain names, file paths and socket paths (108-byte limit),
# so they are short, lowercase and shell-safe.
_NAME_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,22}[a-z0-9])?$")
_MEMBER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._'-]{0,63}$")

MIN_MEMORY_MIB = 256
MAX_MEMORY_MIB = 16384
MAX_VCPUS = 8
DEFAULT_VCPUS = 1
DEFAULT_MEMORY_MIB = 512


class ClawState(StrEnum):
    CREATING = "creating"
    STOPPED = "stopped"
    RUNNING = "running"
    DESTROYING = "destroying"
    FAILED = "failed"


def validate_claw_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidInput(
            f"invalid claw name {name!r}",
            "use 1-24 characters: lowercase letters, digits and '-', starting with a letter "
            "and not ending with '-' (e.g. 'alice' or 'kid-2')",
        )
    return name


def validate_member(member: str) -> str:
    if not _MEMBER_RE.match(member):
        raise InvalidInput(
            f"invalid member name {member!r}",
            "use 1-64 characters: letters, digits, spaces and . _ ' - (e.g. 'Alice')",
        )
    return member


def validate_resources(vcpus: int, memory_mib: int) -> None:
    if not 1 <= vcpus <= MAX_VCPUS:
        raise InvalidInput(f"invalid --cpus {vcpus}", f"choose between 1 and {MAX_VCPUS}")
    if not MIN_MEMORY_MIB <= memory_mib <= MAX_MEMORY_MIB:
        raise InvalidInput(
            f"invalid --memory {memory_mib} MiB",
            f"choose between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB",
        )


@dataclass(frozen=True)
class ClawSpec:
    """What an operator asks for when creating a claw."""

    name: str
    member: str
    vcpus: int = DEFAULT_VCPUS
    memory_mib: int = DEFAULT_MEMORY_MIB

    def __post_init__(self) -> None:
        validate_claw_name(self.name)
        validate_member(self.member)
        validate_resources(self.vcpus, self.memory_mib)


@dataclass(frozen=True)
class Claw:
    """A claw as recorded in the store (desired state)."""

    name: str
    member: str
    state: ClawState
    image_version: str
    vcpus: int
    memory_mib: int
    created_at: str


# Every claw domain of every installation starts with this. The accelerator
# probe names its throw-away domains ``clawdenprobe-*`` so they never match.
DOMAIN_PREFIX = "clawden-"
PROBE_DOMAIN_PREFIX = "clawdenprobe-"
_TAG_RE = re.compile(r"^[0-9a-f]{8}$")


def _tag(installation: str) -> str:
    if not _TAG_RE.match(installation):
        raise ValueError(f"invalid installation tag {installation!r}")  # a bug, not input
    return installation


def domain_prefix(installation: str) -> str:
    """The prefix of one installation's claw domains: ``clawden-<installation>-``."""
    return f"{DOMAIN_PREFIX}{_tag(installation)}-"


def probe_prefix(installation: str) -> str:
    """The prefix of one installation's accelerator probe domains:
    ``clawdenprobe-<installation>-``, so it cleans up only its own."""
    return f"{PROBE_DOMAIN_PREFIX}{_tag(installation)}-"


def domain_name(installation: str, claw_name: str) -> str:
    """The libvirt domain that runs a claw: ``clawden-<installation>-<claw>``.

    ``installation`` is the installation's tag (``Settings.installation_tag``,
    eight hex digits), so two installations on one libvirt can each have a
    claw called ``alice``; the prefix lets reconcile find its orphans. At most
    8 + 9 + 24 = 41 characters, well within libvirt's limits.
    """
    return f"{domain_prefix(installation)}{claw_name}"


def legacy_domain_name(claw_name: str) -> str:
    """The name a claw's domain had before installation tags: ``clawden-<claw>``.
    Reconcile renames such a domain (when it is ours and not running)."""
    return f"{DOMAIN_PREFIX}{claw_name}"


def is_claw_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))
