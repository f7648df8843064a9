"""A trainer plugin (`train`, with its flavor's `save_model`/`load_model`): the conformance suite."""

from __future__ import annotations

from typing import Any, ClassVar

from opsloop.testing.conformance._base import Suite


class TrainerSuite(Suite):
    """A trainer plugin (`train`, with its flavor's `save_model`/`load_model`).

    `class TestMine(TrainerSuite, plugin="mine"): pass` runs it.
    """

    keywords: ClassVar[dict[str, Any]] = {}
