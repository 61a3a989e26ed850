"""Editing a claw's USER.md or HEARTBEAT.md from the host (the panel's claw
page), audited.

The file is checked (which file, how large) before anything reaches the
claw, written through the caller's ``write`` (the controller's channel in
``clawden serve``), then audited as ``claw.file_edit`` with its name, size
and SHA-256 — never its text: the audit log is read by people who need not
see what a parent wrote about their child.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from appliance.core.workspace_files import check_edit_text, check_editable_file
from appliance.store.audit import AuditLog

# (claw, path, bytes) -> None; raises ClawdenError when the claw cannot be written.
WriteFile = Callable[[str, str, bytes], None]


@dataclass(frozen=True)
class FileEdit:
    path: str
    size: int
    sha256: str


def edit_workspace_file(
    audit: AuditLog, write: WriteFile, claw: str, path: str, text: str, actor: str
) -> FileEdit:
    """Replace ``path`` in ``claw``'s workspace with ``text`` and audit it."""
    path = check_editable_file(path)
    data = check_edit_text(path, text)
    write(claw, path, data)
    edit = FileEdit(path, len(data), hashlib.sha256(data).hexdigest())
    audit.append(
        actor, "claw.file_edit", claw, {"file": path, "bytes": edit.size, "sha256": edit.sha256}
    )
    return edit
