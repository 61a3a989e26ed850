"""``clawden host provision``: make this machine an appliance host (Ansible)."""

from __future__ import annotations

import argparse

from appliance.cli.output import Subparsers, progress


def register(sub: Subparsers) -> None:
    host = sub.add_parser("host", help="prepare this machine").add_subparsers(
        dest="host_command", metavar="ACTION", required=True
    )
    prov = host.add_parser("provision", help="install and start libvirt, QEMU and tools (Ansible)")
    prov.add_argument("--check", action="store_true", help="only report what would change")
    prov.set_defaults(handler=host_provision)


def host_provision(args: argparse.Namespace) -> int:
    from appliance.host.ansible import provision_host

    result = provision_host(progress, check=args.check)
    print(
        f"host provisioned: {result.changed} changed, {result.failed} failed "
        f"in {result.duration_s:.0f} s"
    )
    return 0 if result.ok else 1
