#!/usr/bin/env bash
# Prepare a Debian/Ubuntu machine to run clawden's own tooling: the few
# Debian packages needed to build the Python dependencies, and the project
# venv (.venv) with clawden installed in it (editable).
#
#   bash scripts/bootstrap.sh                    # an appliance: runtime packages
#   bash scripts/bootstrap.sh --with-test-tools  # also what the tests use
#
# The venv's packages come only from the lock files in requirements/ (exact
# versions, sha256-checked; `bash scripts/lock.sh` regenerates them): every
# install of one commit is the same set of files.
#
# Idempotent and quiet: on a ready machine it does no apt or pip work at all
# and prints two short lines. Output of apt/pip is kept in a log and shown
# only when a step fails. Everything else (libvirt, QEMU, daemons) is host
# provisioning: `.venv/bin/clawden host provision` (ansible/site.yml).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
VENV="$REPO/.venv"
# Debian's own Python 3.11: the one the python3-apt bindings and python3-dev
# headers belong to.
PYTHON=/usr/bin/python3
# sha256 of pyproject.toml, the lock files installed and where the repo is
# (the editable install points here), at the last successful pip install.
STAMP="$VENV/.clawden-bootstrap.sha256"
# The lock files, in install order: pip, setuptools and wheel first (the
# installer and the build tools the later steps use), then the runtime, then
# with --with-test-tools the test tools.
BUILD_LOCK=requirements/build.lock
RUNTIME_LOCKS=("$BUILD_LOCK" requirements/host.lock)
TEST_LOCKS=("${RUNTIME_LOCKS[@]}" requirements/test.lock)

# python3-venv: create .venv; python3-dev, gcc, pkg-config, libvirt-dev: build
# libvirt-python from PyPI; python3-apt: Ansible's apt module runs under
# /usr/bin/python3 and needs it.
PACKAGES=(python3 python3-venv python3-dev gcc pkg-config libvirt-dev python3-apt)
# --with-test-tools: what only the tests need — a real sshd (the channel's unit
# tests bridge it to a unix socket, as the guest does) and ssh-keygen (key
# format cross-checks). Not for appliances: they must not run an sshd.
# chromium: the headless browser the panel's browser tests drive through
# Playwright (tests/support/browser.py). Debian's build, from the mirror like
# every other package: `playwright install` downloads a browser build from a
# CDN instead — never run, and not reachable from a machine that only has the
# Debian mirror and PyPI. Not for appliances: a browser on the box that holds
# the keys is attack surface nothing there uses.
LOCKS=("${RUNTIME_LOCKS[@]}")
if [[ ${1:-} == --with-test-tools ]]; then
    PACKAGES+=(openssh-server openssh-client socat chromium)
    LOCKS=("${TEST_LOCKS[@]}")
fi

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

LOG=$(mktemp -t clawden-bootstrap.XXXXXX)
trap 'rm -f "$LOG"' EXIT

say() { printf 'bootstrap: %s\n' "$*"; }

# Run a noisy command with its output in $LOG; on failure show the tail.
quietly() {
    if ! "$@" >>"$LOG" 2>&1; then
        say "FAILED: $*" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        # "install ok installed" is the only state in which a package is usable.
        if [[ $(dpkg-query --show --showformat='${Status}' "$pkg" 2>/dev/null) \
              != "install ok installed" ]]; then
            printf '%s\n' "$pkg"
        fi
    done
}

# --- Debian packages --------------------------------------------------------
mapfile -t missing < <(missing_packages)
if ((${#missing[@]})); then
    if ((EUID != 0)); then
        say "missing Debian packages: ${missing[*]}" >&2
        say "run this script as root (sudo bash scripts/bootstrap.sh) to install them" >&2
        exit 1
    fi
    say "installing Debian packages: ${missing[*]}"
    # Refresh the index only now: a ready machine must not need the network.
    quietly apt-get update
    quietly apt-get install -y --no-install-recommends "${missing[@]}"
else
    say "Debian packages ok"
fi

# --- venv -------------------------------------------------------------------
# A venv whose interpreter no longer runs (Python upgraded underneath it) is
# repaired in place; an existing working venv is never recreated.
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "creating $VENV"
    quietly "$PYTHON" -m venv "$VENV"
    rm -f "$STAMP"
fi

# --- Python packages ----------------------------------------------------------
stamp_of() { { sha256sum pyproject.toml "$@"; printf '%s\n' "$REPO"; } | sha256sum | cut -d' ' -f1; }
want=$(stamp_of "${LOCKS[@]}")
have=$(cat "$STAMP" 2>/dev/null || true)
# A venv installed with the test tools has the runtime too: `up.sh` after
# `test.sh` does no pip work.
if [[ "$have" == "$(stamp_of "${TEST_LOCKS[@]}")" ]]; then
    want=$have
fi

# Names of installed distributions that no lock file lists (clawden aside):
# what an older lock had and this one dropped, or what was installed by hand.
unlisted() {
    "$VENV/bin/python" -I - requirements/*.lock <<'PY'
import importlib.metadata
import re
import sys

listed = {"clawden"}
for path in sys.argv[1:]:
    with open(path) as lock:
        listed.update(m[1] for m in re.finditer(r"^([a-z0-9][a-z0-9-]*)==", lock.read(), re.M))
installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower()
             for d in importlib.metadata.distributions()}
for name in sorted(installed - listed):
    print(name)
PY
}

if [[ "$want" != "$have" ]] || [[ ! -x "$VENV/bin/clawden" ]]; then
    say "installing Python dependencies into .venv (${LOCKS[*]})"
    # A run that fails halfway leaves a venv that matches no stamp.
    rm -f "$STAMP"
    # Exact pins, hashes checked, no resolution: pip installs what the lock
    # says (moving an installed package up or down to it) and nothing else.
    locked=("$VENV/bin/python" -m pip install --quiet --require-hashes --no-deps)
    quietly "${locked[@]}" -r "$BUILD_LOCK"
    # --no-build-isolation: libvirt-python (an sdist) is built with the locked
    # setuptools instead of whatever the index would give a build environment.
    requirements=()
    for lock in "${LOCKS[@]:1}"; do
        requirements+=(-r "$lock")
    done
    quietly "${locked[@]}" --no-build-isolation "${requirements[@]}"
    # clawden itself, editable: built with the locked setuptools, pulls nothing.
    quietly "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation \
        --editable "$REPO"
    names=$(unlisted)
    if [[ -n $names ]]; then
        mapfile -t extra <<<"$names"
        say "removing packages no lock file lists: ${extra[*]}"
        quietly "$VENV/bin/python" -m pip uninstall --quiet --yes "${extra[@]}"
    fi
    if ! "$VENV/bin/python" -m pip check >>"$LOG" 2>&1; then
        say "FAILED: pip check (usually pyproject.toml changed and the lock" \
            "files were not regenerated: bash scripts/lock.sh)" >&2
        tail -n 20 "$LOG" >&2
        exit 1
    fi
    printf '%s\n' "$want" >"$STAMP"
fi
say "venv ok ($("$VENV/bin/python" -V 2>&1))"
