"""Writing ``llm.toml``: the TOML it is made of, checked before it replaces
the old file, atomically and private (0600).

An edit reads the file as data, changes one table, renders the whole of it
again and runs the same checks ``load_llm_config`` makes on the result; only
a valid file is written (a temporary file, mode 0600 from its creation,
fsynced, then renamed over the old one), so a bad value never reaches the
gateway, which re-reads the file on its next call. Tables the edit did not
touch are kept; comments are not (the TOML reader drops them), which the
header written on top says.

No TOML writer ships with Python, and the file's shape is small (strings,
numbers, booleans, lists of them, nested tables), so it is rendered here;
``render_toml`` refuses anything else rather than guess.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.llm.config import CONFIG_NAME, LlmConfig, LlmConfigError, config_from_data

HEADER = (
    "# clawden LLM settings (docs/llm.md). Written by the panel's Settings page:\n"
    "# comments in this file are not kept when it saves.\n"
)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# TOML basic strings: these must be escaped; everything else may appear as is.
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
                  "\r": "\\r"}  # fmt: skip


def toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LlmConfigError(f"{where} must be a finite number", "give a plain number")
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v, where) for v in value) + "]"
    raise LlmConfigError(
        f"{where} holds a {type(value).__name__}, which this editor does not write",
        "edit llm.toml by hand (see docs/llm.md)",
    )


def render_toml(data: Mapping[str, Any]) -> str:
    """``data`` as TOML that ``tomllib`` reads back as the same data."""
    lines: list[str] = [HEADER]
    _table(lines, [], data)
    return "\n".join(lines).rstrip("\n") + "\n"


def _table(lines: list[str], prefix: list[str], table: Mapping[str, Any]) -> None:
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
    if prefix and (scalars or not tables):
        lines.append("[" + ".".join(_key(p) for p in prefix) + "]")
    for key, value in scalars:
        lines.append(f"{_key(key)} = {_value(value, '.'.join([*prefix, key]))}")
    if scalars or prefix:
        lines.append("")
    for key, value in tables:
        _table(lines, [*prefix, key], value)


def write_llm_toml(
    home: Path, data: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> LlmConfig:
    """Check ``data`` as a whole configuration, then make it ``llm.toml``.

    Raises ``LlmConfigError`` (the file untouched) when the result would not
    load; returns the configuration it now describes.
    """
    path = home / CONFIG_NAME
    text = render_toml(data)
    # Read back what will be written: the file is checked, not the intent.
    config = config_from_data(path, tomllib.loads(text), env)
    tmp = path.with_name(f".{CONFIG_NAME}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o600)  # a leftover temp file would keep its mode
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return config
