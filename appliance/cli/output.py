"""What every command group shares: progress lines and guest output on the
operator's terminal."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import BinaryIO, TypeAlias

from appliance.core.textsafe import printable

# argparse's type for ``add_subparsers()``'s result (private in typeshed's name).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def progress(line: str) -> None:
    """One progress line on stderr, so stdout stays the command's result."""
    print(f"· {line}", file=sys.stderr, flush=True)


def terminal_writer(stream: BinaryIO) -> Callable[[bytes], None]:
    """Guest output is untrusted: raw bytes to a pipe, escaped on a terminal
    (so a claw cannot drive the operator's terminal with escape sequences)."""
    is_tty = stream.isatty()

    def write(data: bytes) -> None:
        if is_tty:
            data = printable(data.decode("utf-8", "replace")).encode()
        stream.write(data)
        stream.flush()

    return write
