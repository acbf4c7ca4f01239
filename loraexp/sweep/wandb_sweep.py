"""Export a sweep as a W&B grid sweep whose trials run through loraexp.

``--export-wandb-sweep sweep.yaml`` writes two files:

* ``sweep.yaml``: ``wandb sweep sweep.yaml`` creates the sweep; ``wandb agent <id>`` on
  each VM runs trials. ``method: grid`` over :func:`loraexp.sweep.grid.grid_parameters`,
  ``program: experiments/trial.py`` and ``command`` ending in ``${args}``, so the agent
  calls ``python experiments/trial.py --config sweep.base.yaml --lora.r=8 ...``;
* ``sweep.base.yaml``: the resolved config every trial starts from (``tracking.wandb:
  online``: the agent's runs must report to the W&B server).

Paths in the command are as given, relative to where ``wandb agent`` is started (the
repository root).

With ``sweep.pruner`` set, the sweep gets W&B's own early stopping, ``early_terminate:
{type: hyperband, min_iter: 1, eta: reduction_factor}``, and the base config evaluates every
``min_resource`` optimizer steps (``training.eval_strategy: steps``). W&B counts iterations
as the times ``eval/<metric>`` was logged, so its brackets at iterations 1, eta, eta**2 ... are
loraexp's rungs at ``min_resource * eta**k`` steps. The W&B server decides which runs to stop
(it compares runs, not configurations over seeds); how a stopped run is recorded depends on
how the agent stops it (docs/pruning.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from loraexp.config.schema import ExperimentConfig
from loraexp.errors import ConfigError
from loraexp.results.naming import sweep_name
from loraexp.results.storage import atomic_write_text
from loraexp.sweep.expand import expand
from loraexp.sweep.grid import grid_parameters
from loraexp.sweep.metric import sweep_metric

TRIAL_PROGRAM = "experiments/trial.py"


def base_config_path(sweep_path: str | Path) -> Path:
    """``sweep.yaml`` -> ``sweep.base.yaml`` (same directory)."""
    sweep_path = Path(sweep_path)
    return sweep_path.with_name(f"{sweep_path.stem}.base.yaml")


def sweep_spec(cfg: ExperimentConfig, base_path: str | Path) -> dict[str, Any]:
    """The W&B sweep configuration (a dict) for ``cfg``'s runs, in ``tracking.project`` (and
    ``tracking.entity``, when set)."""
    metric, goal = sweep_metric(cfg)
    where = {"project": cfg.tracking.project, **({"entity": cfg.tracking.entity} if cfg.tracking.entity else {})}
    stopping = ({"early_terminate": {"type": "hyperband", "min_iter": 1, "eta": cfg.sweep.reduction_factor}}
                if cfg.sweep.pruner != "none" else {})
    return {
        "name": sweep_name(cfg), **where,
        "program": TRIAL_PROGRAM,
        "method": "grid",
        "metric": {"name": f"eval/{metric}", "goal": goal},
        "parameters": {key: {"values": values} for key, values in grid_parameters(cfg).items()},
        "command": ["${env}", "${interpreter}", "${program}", "--config", str(base_path), "${args}"],
        **stopping,
    }


def export_wandb_sweep(cfg: ExperimentConfig, path: str | Path) -> tuple[Path, Path]:
    """Write the W&B sweep YAML at ``path`` and its base config beside it; returns both paths.

    Raises:
        ConfigError: the sweep expands to an invalid config, ``path`` is not a .yaml/.yml
            file name, or either file exists with different content.
    """
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"`--export-wandb-sweep` must name a .yaml file, got {str(path)!r}")
    expand(cfg)  # every run config must be valid before anything is written
    base = cfg.to_dict()
    base["tracking"]["wandb"] = "online"
    if cfg.sweep.pruner != "none":  # eval/<metric> logged at every rung: W&B's hyperband iterations
        from loraexp.sweep.pruning import first_rung

        base["training"].update(eval_strategy="steps", eval_steps=first_rung(
            cfg.training["max_steps"], cfg.sweep.reduction_factor, cfg.sweep.min_resource))
    base_path = base_config_path(path)
    spec_text = yaml.safe_dump(sweep_spec(cfg, base_path), sort_keys=False)
    base_text = yaml.safe_dump(base, sort_keys=False)
    for target, text in ((path, spec_text), (base_path, base_text)):  # check both before writing either
        if target.exists() and target.read_text() != text:
            raise ConfigError(f"`--export-wandb-sweep` would overwrite {str(target)!r}, which holds something "
                              "else; choose another file name or delete it")
    atomic_write_text(base_path, base_text)
    atomic_write_text(path, spec_text)
    return path, base_path
