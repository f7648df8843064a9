"""`opsloop report`: (being built in this change; see issue 11, item 7)."""

from __future__ import annotations


def report() -> None:
    """Write one self-contained HTML report of the registry, validation, monitoring and the loop."""
    from opsloop.errors import OpsloopError

    raise OpsloopError("opsloop report is not built yet")
