"""What every report figure shares: the :class:`Figure` record, a matplotlib ``Figure`` drawn
without pyplot's global state, saving, colours, and reading a module name as (layer, kind)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DPI = 150
LAYER_PATTERN = re.compile(r"^(?:.*?\.)?(\d+)\.(.+)$")  # bert.encoder.layer.3.attention.self.query


@dataclass
class Figure:
    """One written figure: file ``path``, ``title``, ``caption`` (what it shows and how to read
    it) and ``facts`` (figures the report's text quotes)."""

    name: str
    path: Path
    title: str
    caption: str
    facts: dict[str, Any] = field(default_factory=dict)


def new_figure(width: float = 7.0, height: float = 4.2, **kwargs):
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width, height), dpi=DPI, layout="constrained", **kwargs)


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def layer_and_kind(module: str) -> tuple[int | None, str]:
    """``bert.encoder.layer.3.attention.self.query`` -> ``(3, "attention.self.query")``; a
    module outside a numbered block -> ``(None, name)``."""
    match = LAYER_PATTERN.match(module)
    return (int(match.group(1)), match.group(2)) if match else (None, module)



def short_module(name: str) -> str:
    layer, kind = layer_and_kind(name)
    return f"L{layer}.{kind.split('.')[-1]}" if layer is not None else name.split(".")[-1]

