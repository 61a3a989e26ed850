#!/usr/bin/env bash
# Prepare a Debian/Ubuntu machine to run clawden's own tooling: the few
# Debian packages needed to build the Python dependencies, and the project
# venv (.venv) with clawden installed in it (editable, with test extras).
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
# sha256 of pyproject.toml (and where the repo is: the editable install
# points here) at the last successful pip install.
STAMP="$VENV/.clawden-bootstrap.sha256"

# python3-venv: create .venv; python3-dev, gcc, pkg-config, libvirt-dev: build
# libvirt-python from PyPI; python3-apt: Ansible's apt module runs under
# /usr/bin/python3 and needs it.
PACKAGES=(python3 python3-venv python3-dev gcc pkg-config libvirt-dev python3-apt)
# --with-test-tools: what only the tests need — a real sshd (the channel's unit
# tests bridge it to a unix socket, as the guest does) and ssh-keygen (key
# format cross-checks). Not for appliances: they must not run an sshd.
if [[ ${1:-} == --with-test-tools ]]; then
    PACKAGES+=(openssh-server openssh-client socat)
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

want=$( { sha256sum pyproject.toml; printf '%s\n' "$REPO"; } | sha256sum | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [[ "$want" != "$have" ]] || [[ ! -x "$VENV/bin/clawden" ]]; then
    say "installing Python dependencies into .venv (pyproject.toml changed)"
    quietly "$VENV/bin/python" -m pip install --quiet --editable "${REPO}[test]"
    printf '%s\n' "$want" >"$STAMP"
fi
say "venv ok ($("$VENV/bin/python" -V 2>&1))"
