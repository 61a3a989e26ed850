"""Showing untrusted text (guest output, member names, console logs) safely.

Anything that came from a claw may contain terminal escape sequences meant to
rewrite the operator's screen or hide output, or Unicode format characters
(bidi overrides) that make text read differently from what it is. Those are
shown as visible escapes instead; newlines and tabs are kept.
"""

from __future__ import annotations

import unicodedata

_KEEP = {"\n", "\t"}
# Cc: C0/C1 controls (ESC, CSI, BEL, CR...); Cf: format (bidi overrides,
# zero-width); Zl/Zp: line/paragraph separators; Cs: lone surrogates.
_ESCAPED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def printable(text: str) -> str:
    out = []
    for ch in text:
        if ch in _KEEP or unicodedata.category(ch) not in _ESCAPED_CATEGORIES:
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)
