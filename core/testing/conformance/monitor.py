"""A monitor plugin (`monitor`): the conformance suite."""

from __future__ import annotations

from typing import Any, ClassVar

from opsloop.testing.conformance._base import Suite


class MonitorSuite(Suite):
    """A monitor plugin (`monitor`).

    `class TestMine(MonitorSuite, plugin="mine"): pass` runs it.
    """

    keywords: ClassVar[dict[str, Any]] = {}
