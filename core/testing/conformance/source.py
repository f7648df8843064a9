"""A data source (`load_data`): the conformance suite."""

from __future__ import annotations

from typing import Any, ClassVar

from opsloop.testing.conformance._base import Suite


class SourceSuite(Suite):
    """A data source (`load_data`).

    `class TestMine(SourceSuite, plugin="mine"): pass` runs it.
    """

    keywords: ClassVar[dict[str, Any]] = {'source': None}
