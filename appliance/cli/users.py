"""``clawden user add|list|rm|passwd|totp``: family accounts, as root.

Passwords are read from a file (``--password-file PATH``, or ``-`` for
stdin) or typed at a terminal, never taken from argv, where every user of
the host can read them. The TOTP enrolment URI holds the secret: it goes to
a file created 0600 (``--uri-file``), and is drawn as a QR code only when
stdout is a terminal, never into a pipe or a log. Recovery codes are printed
once, at confirmation; only their hashes are kept.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

import segno

from appliance.accounts.service import Accounts
from appliance.app import load_settings, open_store
from appliance.cli.output import Subparsers
from appliance.core.accounts import (
    MEMBER,
    ROLES,
    ROOT_CLI_ACTOR,
    check_password,
    validate_role,
    validate_user_name,
)
from appliance.core.errors import InvalidInput
from appliance.core.model import validate_claw_name
from appliance.core.textsafe import printable


def register(sub: Subparsers) -> None:
    user = sub.add_parser("user", help="family accounts for the panel").add_subparsers(
        dest="user_command", metavar="ACTION", required=True
    )
    add = user.add_parser("add", help="a new account (an admin, or a member owning claws)")
    add.add_argument("name", help="1-24 lowercase letters, digits and '-'")
    add.add_argument("--role", choices=ROLES, default=MEMBER, help="default: member")
    add.add_argument(
        "--member-of", action="append", default=[], metavar="CLAW", help="a claw it owns"
    )
    _password_arg(add)
    add.set_defaults(handler=user_add)
    user.add_parser("list", help="accounts, roles, claws, TOTP").set_defaults(handler=user_list)
    rm = user.add_parser("rm", help="delete an account and end its sessions")
    rm.add_argument("name")
    rm.set_defaults(handler=user_rm)
    pw = user.add_parser("passwd", help="set a new password; ends every session")
    pw.add_argument("name")
    _password_arg(pw)
    pw.set_defaults(handler=user_passwd)
    tp = user.add_parser("totp", help="enrol an authenticator app (then --confirm a code)")
    tp.add_argument("name")
    how = tp.add_mutually_exclusive_group()
    how.add_argument("--uri-file", type=Path, metavar="PATH", help="write the otpauth URI (0600)")
    how.add_argument("--confirm", metavar="CODE", help="the 6-digit code the app shows now")
    tp.set_defaults(handler=user_totp)


def _password_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-file",
        metavar="PATH",
        help="read the password from the first line of PATH ('-': stdin); default: ask",
    )


def _read_password(source: str | None) -> str:
    """The password, checked, before anything is stored."""
    if source is None:
        if not sys.stdin.isatty():
            raise InvalidInput(
                "no password given and stdin is not a terminal",
                "pass --password-file PATH (or --password-file - to read stdin)",
            )
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise InvalidInput("the two passwords differ", "run the command again")
        return check_password(first)
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InvalidInput(
            f"cannot read the password file {printable(source)!r}: {reason}",
            "pass a readable UTF-8 file with the password on its first line",
        ) from None
    lines = text.splitlines()
    return check_password(lines[0] if lines else "")


def _accounts() -> Accounts:
    return Accounts(open_store(load_settings()))


def user_add(args: argparse.Namespace) -> int:
    name, role = validate_user_name(args.name), validate_role(args.role)
    claws = tuple(validate_claw_name(c) for c in args.member_of)
    if len(set(claws)) != len(claws):
        raise InvalidInput("a claw is named twice in --member-of", "name each claw once")
    password = _read_password(args.password_file)
    user = _accounts().add(name, role, password, claws, ROOT_CLI_ACTOR)
    owns = f", owning {', '.join(user.claws)}" if user.claws else ""
    print(f"added {user.role} {user.name}{owns}")
    if user.is_admin:
        print(f"next: clawden user totp {user.name} --uri-file PATH (an admin decides with TOTP)")
    return 0


def user_list(args: argparse.Namespace) -> int:
    users = _accounts().store.users.list()
    if not users:
        print("no users; add one with `clawden user add NAME --role admin`")
        return 0
    print(f"{'NAME':<24} {'ROLE':<7} {'TOTP':<4} CLAWS")
    for u in users:
        print(
            f"{u.name:<24} {u.role:<7} {'on' if u.totp_active else 'off':<4} "
            f"{', '.join(u.claws) or '-'}"
        )
    return 0


def user_rm(args: argparse.Namespace) -> int:
    name = validate_user_name(args.name)
    _accounts().remove(name, ROOT_CLI_ACTOR)
    print(f"removed {name}; its sessions ended and its claws have no owner account")
    return 0


def user_passwd(args: argparse.Namespace) -> int:
    name = validate_user_name(args.name)
    accounts = _accounts()
    accounts.store.users.require(name)
    ended = accounts.set_password(name, _read_password(args.password_file), ROOT_CLI_ACTOR)
    print(f"password of {name} changed; {ended} session(s) ended")
    return 0


def user_totp(args: argparse.Namespace) -> int:
    name = validate_user_name(args.name)
    accounts = _accounts()
    if args.confirm is not None:
        codes = accounts.confirm_totp(name, args.confirm, ROOT_CLI_ACTOR)
        print(f"TOTP is on for {name}. Recovery codes (each logs in once; shown only now):")
        for code in codes:
            print(f"    {code}")
        return 0
    tty = sys.stdout.isatty()
    if args.uri_file is None and not tty:
        raise InvalidInput(
            "stdout is not a terminal, so the QR code (a secret) would go to a pipe or a log",
            "pass --uri-file PATH to write the otpauth URI to a 0600 file",
        )
    accounts.store.users.require(name)
    uri = accounts.start_totp(name, ROOT_CLI_ACTOR)
    if args.uri_file is not None:
        _write_private(args.uri_file, uri + "\n")
        print(f"wrote the otpauth URI to {args.uri_file} (0600); delete it once scanned")
    if tty:
        segno.make(uri, error="m").terminal(compact=True)
    print(f"then: clawden user totp {name} --confirm CODE")
    return 0


def _write_private(path: Path, text: str) -> None:
    """Create or replace ``path`` readable by its owner only (never through a symlink)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
            os.write(fd, text.encode("ascii"))
        finally:
            os.close(fd)
    except OSError as exc:
        raise InvalidInput(
            f"cannot write {printable(str(path))!r}: {exc.strerror}",
            "pass a path in a directory you can write; the enrolment was not confirmed, "
            "so run the command again",
        ) from None
