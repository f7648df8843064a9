"""What every conformance suite shares: the one-line subclassing, and the plugin found as a vendor installed it.

A suite is a class of `test_*` methods that pytest collects only on a subclass naming a plugin:

    class TestMyTrainer(TrainerSuite, plugin="my-trainer"): pass

`__init_subclass__` stores the plugin's name, its options (the table it would have in `opsloop.toml`) and the
suite's own keywords as class attributes; the suite base itself is never collected (`__test__ = False`).
"""

from __future__ import annotations

from typing import Any, ClassVar


class Suite:
    """Base of the conformance suites: subclass it with `plugin="name"` (and `options={...}`) to run it."""

    __test__ = False
    #: Keywords a suite takes besides `plugin` and `options`, with their defaults (each suite sets its own).
    keywords: ClassVar[dict[str, Any]] = {}
    plugin: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, *, plugin: str | None = None, options: dict[str, Any] | None = None,
                          **kind_specific: Any) -> None:
        super().__init_subclass__()
        unknown = sorted(set(kind_specific) - set(cls.keywords))
        if unknown:
            known = ", ".join(["plugin", "options", *cls.keywords]) or "none"
            raise TypeError(f"{cls.__name__}: unknown keyword(s) {', '.join(unknown)} for this suite "
                            f"(it takes: {known})")
        if plugin is None:  # an intermediate base (a suite, or a vendor's own base): not collected
            cls.__test__ = False
            return
        cls.plugin = plugin
        cls.options = dict(options or {})
        for key, default in cls.keywords.items():
            if key in kind_specific:
                setattr(cls, key, kind_specific[key])
            elif not hasattr(cls, key):
                setattr(cls, key, default)
        cls.__test__ = True
