"""Showing untrusted text (guest output, member names, console logs) safely.

Anything that came from a claw may contain terminal escape sequences meant to
rewrite the operator's screen or hide output. Control characters are shown as
visible escapes instead; newlines and tabs are kept.
"""

from __future__ import annotations

_KEEP = {"\n", "\t"}


def printable(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _KEEP or (code >= 0x20 and code != 0x7F and not 0x80 <= code < 0xA0):
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)
