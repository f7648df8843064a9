"""A preprocess step (`preprocess`, and `window_reach` when it reads a series' past): the conformance suite."""

from __future__ import annotations

from typing import Any, ClassVar

from opsloop.testing.conformance._base import Suite


class PreprocessSuite(Suite):
    """A preprocess step (`preprocess`, and `window_reach` when it reads a series' past).

    `class TestMine(PreprocessSuite, plugin="mine"): pass` runs it.
    """

    keywords: ClassVar[dict[str, Any]] = {}
