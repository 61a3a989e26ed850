"""The controller's ``put_tree`` RPC op: copy a folder the CLI staged under
``$CLAWDEN_HOME/tmp`` into a claw's workspace, over its channel's SFTP
(``appliance.channel.sftp``, which has the rules of the copy)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from appliance.channel.exec import WaitingTransportFor
from appliance.channel.sftp import GUEST_WORKSPACE, Send, put_tree, validate_dest
from appliance.controller.rpc import Handler, Reply
from appliance.core.errors import InvalidInput
from appliance.core.model import validate_claw_name
from appliance.core.textsafe import printable


def _staged_source(raw: str, staging: Path) -> Path:
    """Only a folder the CLI staged may be copied: a request naming any other
    host path (say /root/.ssh) must not turn the controller into a leak."""
    source = Path(raw)
    inside = os.path.realpath(source).startswith(os.path.realpath(staging) + os.sep)
    if not source.is_absolute() or not inside:
        raise InvalidInput(
            f"{printable(raw)} is not a folder staged under {staging}",
            "use `clawden skill add` or `clawden claw import`, which stage files there",
        )
    return source


def put_tree_handler(
    transport_for: WaitingTransportFor, staging: Path, root: str = GUEST_WORKSPACE
) -> Handler:
    """The controller's ``put_tree`` RPC op (request: ``claw``, ``source``,
    ``dest``, ``mode``, ``wait``); ``source`` must lie under ``staging``
    ($CLAWDEN_HOME/tmp)."""

    def handle(request: dict[str, Any], send: Send) -> Reply:
        claw = validate_claw_name(str(request.get("claw", "")))
        source = _staged_source(str(request.get("source", "")), staging)
        dest = validate_dest(str(request.get("dest", "")))
        mode = str(request.get("mode", ""))
        transport = transport_for(claw, float(request.get("wait", 30)))
        return put_tree(transport, source, dest, mode, send, root=root)

    return handle
