"""The lines of the ``loraexp validate`` checklist (:mod:`loraexp.run.checklist` produces them)
and their rendering: one :class:`Check` per name of :data:`CHECK_NAMES`, a :class:`Report` for a
terminal (:meth:`Report.render`) or CI (:meth:`Report.to_dict`, ``--json``). Imports nothing
heavy."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# One line each, in this order.
ADAPTERS = "adapters applied"
TRAINABLE = "trainable parameters"
FROZEN = "base frozen"
GRAD_FLOW = "gradient flow"
LOSS = "training loss"
LORA_CHANGED = "LoRA parameters changed"
UNCHANGED = "base unchanged"
ROUND_TRIP = "save/load round trip"
MERGE = "merge equivalence"
MEMORY = "peak memory"
CHECK_NAMES = (ADAPTERS, TRAINABLE, FROZEN, GRAD_FLOW, LOSS, LORA_CHANGED, UNCHANGED, ROUND_TRIP, MERGE, MEMORY)

PASS, FAIL, NOT_RUN, INFO = "pass", "fail", "not run", "info"


@dataclass
class Check:
    """One line of the checklist.

    Attributes:
        name: one of :data:`CHECK_NAMES`.
        status: ``pass`` | ``fail`` | ``not run`` (an earlier stage failed; counts as failed) |
            ``info`` (a figure without a threshold).
        figure: what was measured, for a person.
        threshold: the rule the figure is held to.
        details: the figures as numbers (``--json``), e.g. a
            :class:`~loraexp.results.record.MergeCheck` as a dict.
    """

    name: str
    status: str
    figure: str
    threshold: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        """True/False for a pass/fail; None for information and for a check that did not run."""
        return {PASS: True, FAIL: False}.get(self.status)


@dataclass
class Report:
    """The checklist of one validation and what it ran on; :attr:`passed` when every check
    passed (information lines do not count, a check that did not run counts as failed)."""

    model: str
    objective: str
    data: str
    steps: int
    learning_rate: float
    method: str
    quantization: str
    lora: dict[str, Any]
    checks: list[Check]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.status in (PASS, INFO) for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: ``passed``, ``exit_code``, what ran, and one object per check
        (``name``, ``status``, ``passed``, ``figure``, ``threshold``, ``details``)."""
        out = {"passed": self.passed, "exit_code": self.exit_code, "seconds": round(self.seconds, 2),
               "model": self.model, "objective": self.objective, "data": self.data, "steps": self.steps,
               "learning_rate": self.learning_rate, "method": self.method, "quantization": self.quantization,
               "lora": self.lora}
        out["checks"] = [{"name": c.name, "status": c.status, "passed": c.passed, "figure": c.figure,
                          "threshold": c.threshold, "details": c.details} for c in self.checks]
        return plain_json(out)

    def render(self) -> str:
        """The checklist for a terminal: a header, one line per check (result, name, threshold,
        figure), and a verdict line."""
        lora = ", ".join(f"{k}={v}" for k, v in self.lora.items() if k in ("r", "lora_alpha", "target_modules"))
        quant = "" if self.quantization == "none" else f", {self.quantization} base"
        lines = [f"loraexp validate: {self.model} ({self.objective}{quant}), {self.method} {lora}",
                 f"  data: {self.data}; {self.steps} AdamW steps at learning rate {self.learning_rate:g}", ""]
        name_width = max(len(c.name) for c in self.checks)
        threshold_width = max(len(c.threshold) for c in self.checks)
        lines.append(f"{'result':<7}  {'check':<{name_width}}  {'threshold':<{threshold_width}}  figure")
        for c in self.checks:
            lines.append(f"{c.status.upper():<7}  {c.name:<{name_width}}  {c.threshold:<{threshold_width}}  {c.figure}")
        failed = [c.name for c in self.checks if c.status == FAIL]
        not_run = [c.name for c in self.checks if c.status == NOT_RUN]
        counted = len([c for c in self.checks if c.status != INFO])
        parts = []
        if failed:
            parts.append(f"{len(failed)} of {counted} checks failed: {', '.join(failed)}")
        if not_run:
            parts.append(f"{len(not_run)} did not run")
        verdict = "; ".join(parts) or f"all {counted} checks passed"
        lines += ["", f"{verdict} ({self.seconds:.1f} s)"]
        return "\n".join(lines)


def plain_json(value: Any) -> Any:
    """``value`` as strict JSON data: tuples and sets as lists, a non-finite float as its name
    (``"nan"``, ``"inf"``), anything else unknown as its ``str``."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def figure_number(value: float | None) -> str:
    """A figure to two significant digits (``3.1e-08``, ``0.067``, ``0``)."""
    if value is None:
        return "n/a"
    return "0" if value == 0 else f"{value:.2g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.1e}"
