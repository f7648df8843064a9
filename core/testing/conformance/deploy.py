"""A deploy target (`deploy`, `deploy_status`, `undeploy`): the conformance suite."""

from __future__ import annotations

from typing import Any, ClassVar

from opsloop.testing.conformance._base import Suite


class DeploySuite(Suite):
    """A deploy target (`deploy`, `deploy_status`, `undeploy`).

    `class TestMine(DeploySuite, plugin="mine"): pass` runs it.
    """

    keywords: ClassVar[dict[str, Any]] = {}
