"""A sweep's runs as a parameter grid for external schedulers (W&B sweeps, Optuna).

:func:`grid_parameters` turns the runs of :func:`loraexp.sweep.expand.overrides_for` into named
value lists whose cartesian product is exactly those runs; :func:`overrides_from_params`
turns one combination back into dotted-key overrides. When the runs are a product of
independent scalar axes (``sweep`` mode, a grid ablation) each dotted key is its own
parameter (``lora.r: [4, 8]``); otherwise (paired axes such as r with lora_alpha = 2r,
list values such as target modules) there is one parameter, ``point``, whose values are
the runs' overrides as JSON strings.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

from loraexp.config.schema import ExperimentConfig
from loraexp.errors import ConfigError
from loraexp.sweep.expand import overrides_for

POINT = "point"
SCALARS = (str, int, float, bool, type(None))


def _is_product(points: list[dict[str, Any]], values: dict[str, list]) -> bool:
    if not values or any(set(p) != set(values) for p in points):
        return False
    if len(points) != math.prod(len(v) for v in values.values()):
        return False
    wanted = {json.dumps(dict(zip(values, combo)), sort_keys=True) for combo in itertools.product(*values.values())}
    return wanted == {json.dumps(p, sort_keys=True) for p in points}


def grid_parameters(cfg: ExperimentConfig) -> dict[str, list]:
    """``{parameter: values}`` whose cartesian product is the runs of ``cfg.sweep``.

    Values are JSON scalars (str, int, float, bool, null), as W&B grids and Optuna's
    ``GridSampler`` need them.
    """
    points = overrides_for(cfg)
    values: dict[str, list] = {}
    for point in points:
        for key, value in point.items():
            seen = values.setdefault(key, [])
            if value not in seen:
                seen.append(value)
    scalar = all(isinstance(v, SCALARS) for vs in values.values() for v in vs)
    if scalar and _is_product(points, values):
        return values
    return {POINT: [json.dumps(p) for p in points]}


def overrides_from_params(params: dict[str, Any]) -> dict[str, Any]:
    """Dotted-key overrides of one grid combination (inverse of :func:`grid_parameters`).

    Raises:
        ConfigError: a ``point`` value is not a JSON object.
    """
    out = {k: v for k, v in params.items() if k != POINT}
    if POINT in params:
        raw = params[POINT]
        try:
            point = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            point = None
        if not isinstance(point, dict):
            raise ConfigError(f"`{POINT}` must be a JSON object of dotted config keys, got {raw!r}")
        out.update(point)
    return out
