"""The documentation is checked against the code, so it cannot drift:

* the README's set-up is exactly two commands, and their scripts exist;
* every ``clawden …`` command shown in the README and the operator guide is a
  real command of the argparse parser (``appliance.cli._parser``), with real
  options, and every command the parser has is documented;
* every relative link (and ``#anchor``) in README.md, docs/ and the package
  READMEs (web/, provisioning/) resolves.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cli import _parser

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
GUIDE = REPO / "docs" / "operator-guide.md"
CLI_DOCS = (README, GUIDE)
PACKAGE_READMES = (REPO / "web" / "README.md", REPO / "provisioning" / "README.md")
MARKDOWN = (README, *sorted((REPO / "docs").rglob("*.md")), *PACKAGE_READMES)

SETUP_COMMANDS = ["bash scripts/up.sh", "bash scripts/test.sh"]
SETUP_SECTION = "Set up"
EVERYDAY_SECTION = "Everyday use"

_FENCE = re.compile(r"^(`{3,}|~{3,})[^\n]*\n(.*?)^\1[ \t]*$", re.M | re.S)
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
_INLINE_CODE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# `clawden`, `.venv/bin/clawden`, `sudo clawden`, followed by arguments.
_CLAWDEN = re.compile(r"(?:^|[\s/])clawden[ \t]+(\S.*)$")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
_ELLIPSES = {"...", "…"}


# ---- markdown helpers ----------------------------------------------------------
def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _fenced_blocks(text: str) -> list[str]:
    return [m.group(2) for m in _FENCE.finditer(text)]


def _without_fences(text: str) -> str:
    return _FENCE.sub("", text)


def _sections(text: str) -> dict[str, str]:
    """Top-level (``##``) sections by title, fenced blocks included; ``""`` is
    the text before the first heading. A ``##`` line inside a fence is code."""
    sections: dict[str, list[str]] = {"": []}
    title, fence = "", None
    for line in text.splitlines(keepends=True):
        opener = re.match(r"(`{3,}|~{3,})", line)
        if fence is None and opener:
            fence = opener.group(1)
        elif fence is not None and line.strip() == fence:
            fence = None
        elif fence is None and (heading := re.match(r"##[ \t]+(.+?)[ \t]*$", line)):
            title = heading.group(1)
            sections[title] = []
            continue
        sections[title].append(line)
    return {name: "".join(lines) for name, lines in sections.items()}


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for m in _HEADING.finditer(_without_fences(text)):
        slug = _slug(m.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


# ---- the CLI -------------------------------------------------------------------
def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[str]:
    subs = _subcommands(parser)
    if not subs:
        yield " ".join(path)
        return
    for name, sub in subs.items():
        yield from _leaf_commands(sub, (*path, name))


def _mentions(path: Path) -> Iterator[tuple[str, bool]]:
    """``(arguments after 'clawden', complete)`` for every command the file
    shows. Lines of fenced blocks are complete examples; inline code may
    leave out arguments (``clawden claw stop``)."""
    text = _read(path)
    for block in _fenced_blocks(text):
        for line in block.splitlines():
            m = _CLAWDEN.search(line.strip())
            if m:
                yield m.group(1), True
    for span in _INLINE_CODE.findall(_without_fences(text)):
        m = _CLAWDEN.search(" ".join(span.split()))
        if m:
            yield m.group(1), False


def _tokens(args: str) -> list[str]:
    words = shlex.split(args.replace("[", " ").replace("]", " "), comments=True)
    return [w for w in words if w not in _ELLIPSES]


def _check_command(args: str, complete: bool) -> str | None:
    """None if ``clawden <args>`` is valid, else what is wrong."""
    tokens = _tokens(args)
    parser = _parser()
    path: list[str] = []
    rest = list(tokens)
    while rest and _subcommands(parser):
        word = rest[0]
        subs = _subcommands(parser)
        if word not in subs:
            where = " ".join(["clawden", *path])
            return f"`{where} {word}`: no such command (there are: {', '.join(sorted(subs))})"
        parser, path = subs[word], [*path, word]
        rest = rest[1:]
    if not path:
        return None  # just `clawden` (or `clawden --version`, checked below)
    if _subcommands(parser):
        return None  # a command group, e.g. `clawden claw`
    known = set(parser._option_string_actions)
    for word in rest:
        if word == "--":
            break  # the rest is a command for the guest (`claw exec NAME -- CMD`)
        if word.startswith("-") and word.split("=", 1)[0] not in known:
            return f"`clawden {' '.join(path)}` has no option {word}"
    if complete:
        argv = ["1" if _PLACEHOLDER.match(w) else w for w in tokens]
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                _parser().parse_args(argv)
        except SystemExit as exc:
            if exc.code not in (0, None):
                return f"`clawden {args}` does not parse: {err.getvalue().strip()}"
    return None


# ---- (a) the README's set-up ---------------------------------------------------------
def test_readme_sets_up_with_exactly_two_commands() -> None:
    sections = _sections(_read(README))
    assert SETUP_SECTION in sections, f"README.md needs a '## {SETUP_SECTION}' section"
    blocks = _fenced_blocks(sections[SETUP_SECTION])
    commands = [[line.strip() for line in block.splitlines() if line.strip()] for block in blocks]
    assert commands == [[c] for c in SETUP_COMMANDS], (
        f"the set-up must be exactly two fenced blocks, {SETUP_COMMANDS}; found {commands}"
    )
    for command in SETUP_COMMANDS:
        script = REPO / command.split()[1]
        assert script.is_file(), f"{command}: {script} does not exist"


def test_readme_shows_no_other_shell_commands() -> None:
    for title, body in _sections(_read(README)).items():
        if title == SETUP_SECTION:
            continue
        for block in _fenced_blocks(body):
            for line in filter(str.strip, block.splitlines()):
                assert title == EVERYDAY_SECTION and line.startswith("clawden "), (
                    f"README.md section {title or '(intro)'!r} shows {line.strip()!r}: only "
                    f"'{SETUP_SECTION}' and '{EVERYDAY_SECTION}' (clawden commands) may "
                    "have commands"
                )


# ---- (b) the CLI as documented ---------------------------------------------------------
@pytest.mark.parametrize("doc", CLI_DOCS, ids=lambda p: p.name)
def test_every_documented_command_exists(doc: Path) -> None:
    mentions = list(_mentions(doc))
    assert mentions, f"{doc.name} shows no clawden commands"
    problems = [p for args, complete in mentions if (p := _check_command(args, complete))]
    assert not problems, f"{doc.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("doc", CLI_DOCS, ids=lambda p: p.name)
def test_every_command_is_documented(doc: Path) -> None:
    shown: set[str] = set()
    for args, _ in _mentions(doc):
        words = [w for w in _tokens(args) if not w.startswith("-")]
        shown.update(" ".join(words[:n]) for n in range(1, len(words) + 1))
    missing = sorted(set(_leaf_commands(_parser())) - shown)
    assert not missing, f"{doc.name} does not show: " + ", ".join(f"`clawden {m}`" for m in missing)


def test_the_checker_catches_drift() -> None:
    assert _check_command("claw list", True) is None
    assert _check_command("claw exec NAME -- ls -la", True) is None
    assert _check_command("claw stop", False) is None
    assert _check_command("claw remove alice", True) is not None
    assert _check_command("claw destroy alice --force", False) is not None
    assert _check_command("claw create alice", True) is not None  # --member is required


# ---- (c) links ---------------------------------------------------------------
def _links(path: Path) -> Iterator[str]:
    text = _INLINE_CODE.sub("", _without_fences(_read(path)))
    yield from _LINK.findall(text)


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path) -> None:
    problems = []
    for target in _links(doc):
        if _SCHEME.match(target):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            problems.append(f"{target}: {dest.relative_to(REPO)} does not exist")
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(_read(dest)):
            problems.append(f"{target}: no heading for #{anchor} in {dest.name}")
    assert not problems, f"{doc.relative_to(REPO)}:\n" + "\n".join(problems)
