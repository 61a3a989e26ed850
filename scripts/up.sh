#!/usr/bin/env bash
# Bring the appliance up on this machine (Debian/Ubuntu, as root):
# tooling, host provisioning, golden image, health check, then the controller.
# Every step is idempotent, so re-running it after an upgrade changes only
# what is missing.
#
# Where systemd runs, provisioning installs clawden.service, which runs the
# controller and the panel now and at every boot; this script then ends by
# printing the panel's address (and, until an admin exists, a one-time setup
# link). Where systemd does not run (a container), nothing starts clawden at
# boot: this script runs `clawden serve` in the foreground, which prints the
# panel's address and the setup link first; re-run it after a reboot.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*"; }

step "bootstrap (Debian packages, .venv)"
bash scripts/bootstrap.sh

step "host provisioning (libvirt, QEMU, daemons, clawden.service)"
.venv/bin/clawden host provision

step "golden image"
.venv/bin/clawden image build

step "doctor"
.venv/bin/clawden doctor

if [ -d /run/systemd/system ] && systemctl is-active --quiet clawden.service; then
    step "controller (clawden.service: started at boot, restarted on failure)"
    echo "logs: journalctl -u clawden -f, and \$CLAWDEN_HOME/logs/controller.log"
    # The panel's address, and the setup link while there is no admin (the
    # service makes none: its output is the journal, a log).
    exec .venv/bin/clawden panel setup-link
fi

step "controller (Ctrl-C stops it)"
exec .venv/bin/clawden serve
