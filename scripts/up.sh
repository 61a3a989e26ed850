#!/usr/bin/env bash
# Bring the appliance up on this machine (Debian/Ubuntu, as root):
# tooling, host provisioning, golden image, health check, then the controller
# in the foreground. Every step is idempotent, so re-running it after a
# reboot or an upgrade just starts the controller again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*"; }

step "bootstrap (Debian packages, .venv)"
bash scripts/bootstrap.sh

step "host provisioning (libvirt, QEMU, daemons)"
.venv/bin/clawden host provision

step "golden image"
.venv/bin/clawden image build

step "doctor"
.venv/bin/clawden doctor

step "controller (Ctrl-C stops it)"
exec .venv/bin/clawden serve
