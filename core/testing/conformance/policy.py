"""A retrain policy (`decide_retrain`): the conformance suite."""

from __future__ import annotations

from typing import Any, ClassVar

from opsloop.testing.conformance._base import Suite


class PolicySuite(Suite):
    """A retrain policy (`decide_retrain`).

    `class TestMine(PolicySuite, plugin="mine"): pass` runs it.
    """

    keywords: ClassVar[dict[str, Any]] = {}
