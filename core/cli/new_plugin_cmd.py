"""`opsloop new-plugin`: (being built in this change; see issue 11, item 3)."""

from __future__ import annotations


def new_plugin() -> None:
    """Write a plugin package skeleton."""
    from opsloop.errors import OpsloopError

    raise OpsloopError("opsloop new-plugin is not built yet")
