"""A model store (`open_store`) and the store contract: the conformance suite."""

from __future__ import annotations

from typing import Any, ClassVar

from opsloop.testing.conformance._base import Suite


class StoreSuite(Suite):
    """A model store (`open_store`) and the store contract.

    `class TestMine(StoreSuite, plugin="mine"): pass` runs it.
    """

    keywords: ClassVar[dict[str, Any]] = {}
