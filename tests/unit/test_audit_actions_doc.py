"""The audit actions the docs list are exactly the ones the code writes.

The code's actions are read from its syntax (``ast``) over ``appliance/``:
the action argument (second positional, or ``action=``) of every
``<x>.audit.append(...)`` / ``audit.append(...)`` call, and of
``self.append(...)`` inside ``class AuditLog``. An action argument may be

* a string literal: that action;
* a conditional expression (``"a" if ok else "b"``): both branches;
* an f-string: it must be a key of ``FSTRING_ACTIONS``, whose function gives
  its expansions from the code (``f"claw.{op.kind}"`` expands over the
  operation kinds, the ``<KIND>_STEPS`` tables of controller/lifecycle.py);
* a parameter of a function that forwards actions: it must be a key of
  ``FORWARDED_ACTIONS``, which names the callback the function is handed as,
  and the actions are the string literals passed first to that callback
  (the controller's ``_audit_event`` is the channel manager's ``_on_event``).

Anything else fails the test, so a new way of naming an action has to be
taught here first. Every ``.append`` call with two or more arguments must be
an audit append, so a renamed receiver cannot slip past either.

The docs' tables are the first table whose header starts with ``action`` in
the "The audit log" section of docs/store.md and of docs/operator-guide.md;
the actions are the backticked names in its first column.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "appliance"
LIFECYCLE = PACKAGE / "controller" / "lifecycle.py"
TABLES = {
    REPO / "docs" / "store.md": "The audit log",
    REPO / "docs" / "operator-guide.md": "The audit log",
}

_ACTION = re.compile(r"`([a-z_]+(?:\.[a-z_]+)+)`")


def operation_kinds() -> set[str]:
    """``create``, ``destroy``, …: one per ``<KIND>_STEPS`` table of lifecycle.py."""
    tree = ast.parse(LIFECYCLE.read_text(encoding="utf-8"))
    kinds = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.endswith("_STEPS"):
                    kinds.add(target.id.removesuffix("_STEPS").lower())
    return kinds


FSTRING_ACTIONS: dict[str, Callable[[], set[str]]] = {
    "f'claw.{op.kind}'": lambda: {f"claw.{kind}" for kind in operation_kinds()},
}
# (module, function whose parameter is the action) -> the callback name it is
# called through elsewhere in the package.
FORWARDED_ACTIONS: dict[tuple[str, str], str] = {
    ("appliance/controller/daemon.py", "_audit_event"): "_on_event",
}


@functools.cache
def _parse(path: Path, mtime_ns: int) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _modules(root: Path) -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(root.rglob("*.py")):
        yield path.relative_to(root.parent).as_posix(), _parse(path, path.stat().st_mtime_ns)


def _scopes(tree: ast.Module) -> Iterator[tuple[ast.Call, str | None, str | None]]:
    """Every call with its enclosing class and function names."""

    def walk(
        node: ast.AST, cls: str | None, func: str | None
    ) -> Iterator[tuple[ast.Call, str | None, str | None]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                yield from walk(child, child.name, func)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from walk(child, cls, child.name)
            else:
                if isinstance(child, ast.Call):
                    yield child, cls, func
                yield from walk(child, cls, func)

    yield from walk(tree, None, None)


def _is_audit_append(call: ast.Call, cls: str | None) -> bool:
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr != "append":
        return False
    receiver = func.value
    if isinstance(receiver, ast.Attribute) and receiver.attr == "audit":
        return True
    if isinstance(receiver, ast.Name) and receiver.id == "audit":
        return True
    return isinstance(receiver, ast.Name) and receiver.id == "self" and cls == "AuditLog"


def _action_arg(call: ast.Call) -> ast.expr | None:
    if len(call.args) >= 2:
        return call.args[1]
    return next((kw.value for kw in call.keywords if kw.arg == "action"), None)


def _first_literals(root: Path, callback: str) -> set[str]:
    found = set()
    for _, tree in _modules(root):
        for call, _, _ in _scopes(tree):
            func = call.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == callback and call.args and isinstance(call.args[0], ast.Constant):
                found.add(str(call.args[0].value))
    return found


def _expand(node: ast.expr, where: str, module: str, func: str | None, root: Path) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _expand(node.body, where, module, func, root) | _expand(
            node.orelse, where, module, func, root
        )
    if isinstance(node, ast.JoinedStr):
        source = ast.unparse(node)
        assert source in FSTRING_ACTIONS, (
            f"{where}: audit action {source} is an f-string the test does not know; "
            "add its expansions to FSTRING_ACTIONS"
        )
        return FSTRING_ACTIONS[source]()
    if isinstance(node, ast.Name) and (module, func or "") in FORWARDED_ACTIONS:
        return _first_literals(root, FORWARDED_ACTIONS[(module, func or "")])
    raise AssertionError(
        f"{where}: audit action {ast.unparse(node)} is neither a literal nor a known "
        "f-string or forwarded action; teach tests/unit/test_audit_actions_doc.py"
    )


def written_actions(root: Path = PACKAGE) -> set[str]:
    """Every audit action the code under ``root`` can write."""
    actions: set[str] = set()
    for module, tree in _modules(root):
        for call, cls, func in _scopes(tree):
            where = f"{module}:{call.lineno}"
            nargs = len(call.args) + len(call.keywords)
            if not _is_audit_append(call, cls):
                is_append = isinstance(call.func, ast.Attribute) and call.func.attr == "append"
                assert not (is_append and nargs >= 2), (
                    f"{where}: an .append() with {nargs} arguments on "
                    f"{ast.unparse(call.func)}: if it writes the audit log, make the test see it"
                )
                continue
            action = _action_arg(call)
            assert action is not None, f"{where}: audit append without an action"
            actions |= _expand(action, where, module, func, root)
    return actions


def documented_actions(doc: str, section: str) -> set[str]:
    """The backticked actions in the first column of the first table whose
    header starts with ``action`` in the ``## section`` of ``doc``."""
    match = re.search(rf"^##[ \t]+{re.escape(section)}[ \t]*$", doc, re.M)
    assert match, f"no '## {section}' section"
    rest = doc[match.end() :]
    end = re.search(r"^##[ \t]", rest, re.M)
    lines = (rest[: end.start()] if end else rest).splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells[0] == "action":
            actions: set[str] = set()
            for row in lines[i + 2 :]:
                if not row.lstrip().startswith("|"):
                    break
                actions |= set(_ACTION.findall(row.strip().strip("|").split("|")[0]))
            return actions
    raise AssertionError(f"no table with an 'action' column in '## {section}'")


def test_the_code_writes_the_actions_we_know_of() -> None:
    actions = written_actions()
    # A sanity check of the extraction itself: one of each kind of argument.
    assert {"claw.import", "audit.reseal", "approval.deny", "claw.destroy"} <= actions
    assert "channel.hostkey_mismatch" in actions
    assert operation_kinds() == {"create", "destroy", "start", "stop"}


@pytest.mark.parametrize("doc", sorted(TABLES), ids=lambda p: p.name)
def test_the_docs_list_exactly_the_actions_the_code_writes(doc: Path) -> None:
    documented = documented_actions(doc.read_text(encoding="utf-8"), TABLES[doc])
    written = written_actions()
    missing, extra = sorted(written - documented), sorted(documented - written)
    assert not missing, f"{doc.name} does not list: {missing}"
    assert not extra, f"{doc.name} lists, but no code writes: {extra}"


def test_the_extraction_sees_every_form(tmp_path: Path) -> None:
    package = tmp_path / "appliance"
    (package / "controller").mkdir(parents=True)
    (package / "controller" / "lifecycle.py").write_text("CREATE_STEPS = ()\n")
    (package / "controller" / "daemon.py").write_text(
        "class Controller:\n"
        "    def _audit_event(self, action, claw, details):\n"
        "        self._ctx.audit.append('controller', action, claw, details)\n"
    )
    (package / "a.py").write_text(
        "def f(ctx, ok, op, conn):\n"
        "    ctx.audit.append(ctx.actor, 'x.one', 't', {})\n"
        "    ctx.audit.append(ctx.actor, 'x.yes' if ok else 'x.no', 't', {})\n"
        "    audit.append('cli', action='x.kw', target='t', details={})\n"
        "    conn._on_event('x.forwarded', 'alice', {})\n"
        "    items.append(1)\n"
        "class AuditLog:\n"
        "    def reseal(self):\n"
        "        self.append('cli', 'x.reseal', 'audit_log', {})\n"
    )
    actions = written_actions(package)
    assert actions == {"x.one", "x.yes", "x.no", "x.kw", "x.forwarded", "x.reseal"}


def test_the_extraction_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    package = tmp_path / "appliance"
    package.mkdir()
    (package / "a.py").write_text("def f(ctx, name):\n    ctx.audit.append('cli', name, 't', {})\n")
    with pytest.raises(AssertionError, match="neither a literal"):
        written_actions(package)
    (package / "a.py").write_text("def f(log):\n    log.append('cli', 'x.hidden', 't', {})\n")
    with pytest.raises(AssertionError, match="make the test see it"):
        written_actions(package)


def test_a_missing_row_is_reported() -> None:
    doc = (REPO / "docs" / "store.md").read_text(encoding="utf-8")
    row = next(line for line in doc.splitlines() if line.startswith("| `skill.rm` |"))
    documented = documented_actions(doc.replace(row + "\n", ""), "The audit log")
    assert written_actions() - documented == {"skill.rm"}
