"""Validation gates: `[validate] gates = ["f1 >= 0.8", "recall >= 0.9"]`.

A gate compares one metric's mean over the folds with a number. A failed
gate stops `opsloop validate` (non-zero exit, for CI) and `opsloop run`
before anything is registered.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping, Sequence

import attrs

from opsloop.errors import OpsloopError

OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
GATE_RE = re.compile(r"^\s*([A-Za-z_][\w\[\]\-.]*)\s*(>=|<=|==|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@attrs.frozen(kw_only=True)
class Gate:
    """One parsed gate."""

    metric: str
    op: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> Gate:
        """Parse `metric op number`; ValueError naming the gate otherwise."""
        match = GATE_RE.match(text) if isinstance(text, str) else None
        if not match:
            raise ValueError(f"gate {text!r} is not METRIC OP NUMBER, e.g. \"f1 >= 0.8\" (OP: >=, <=, >, <, ==)")
        return cls(metric=match.group(1), op=match.group(2), threshold=float(match.group(3)))

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"


@attrs.frozen(kw_only=True)
class GateResult:
    """A gate and how a report fared."""

    gate: Gate
    value: float
    passed: bool

    def __str__(self) -> str:
        return f"{self.gate} ({'passed' if self.passed else 'FAILED'}: {self.value:.4f})"


class GateFailed(OpsloopError):
    """At least one validation gate failed."""

    def __init__(self, failed: Sequence[GateResult]) -> None:
        self.failed = list(failed)
        super().__init__("gates failed")

    def __str__(self) -> str:
        return "validation gate(s) failed: " + "; ".join(str(r) for r in self.failed)


def check(gates: Sequence[str], metrics: Mapping[str, float]) -> list[GateResult]:
    """Evaluate gates against mean metrics. An unknown metric is an OpsloopError listing the known ones;
    a NaN metric fails its gate."""
    results = []
    for text in gates:
        gate = Gate.parse(text)
        if gate.metric not in metrics:
            raise OpsloopError(f"[validate] gates: no metric {gate.metric!r} in the validation report "
                               f"(metrics: {', '.join(sorted(metrics))})")
        value = float(metrics[gate.metric])
        passed = not math.isnan(value) and OPERATORS[gate.op](value, gate.threshold)
        results.append(GateResult(gate=gate, value=value, passed=passed))
    return results
