"""One trial of an exported sweep, as a W&B agent (or a person) calls it.

    python experiments/trial.py --config sweep.base.yaml --lora.r=8 --lora.lora_alpha=16
    python experiments/trial.py --config sweep.base.yaml '--point={"lora.r": 8, "lora.lora_alpha": 16}'

Every ``--<dotted.key>=<value>`` argument overrides the base config (values are YAML, so
``0.0003``, ``True`` and ``['query', 'value']`` -- the way the agent formats them -- all
parse); ``--point=<JSON object>`` carries several keys at once. The run is written where the
sweep's other runs are (``<output_dir>/<sweep>/<run>``), continues from its checkpoint if it
was cut short, and is skipped if already completed. Exit codes as ``loraexp``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from loraexp.errors import ConfigError, LoraexpError


def parse_overrides(items: list[str]) -> dict:
    """``["--lora.r=8", ...]`` -> ``{"lora.r": 8, ...}``: each item without its ``--`` is a
    ``--set`` item (:func:`loraexp.config.load.parse_set_overrides`, YAML values); the agent's
    ``None`` means null, and ``--point`` carries several keys (:mod:`loraexp.sweep.grid`).

    Raises:
        ConfigError: an item is not ``--key=value``.
    """
    from loraexp.config.load import parse_set_overrides
    from loraexp.sweep.grid import overrides_from_params

    bad = [item for item in items if not item.startswith("--")]
    if bad:
        raise ConfigError([f"trial arguments must look like --<dotted.key>=<value>, got {item!r}" for item in bad])
    params = parse_set_overrides([item[2:] for item in items])
    return overrides_from_params({k: None if v == "None" else v for k, v in params.items()})


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python experiments/trial.py`` and ``loraexp-trial``."""
    parser = argparse.ArgumentParser(prog="loraexp-trial", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="Base config written by --export-wandb-sweep.")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from loraexp.config.load import load_config
    from loraexp.run.distributed import is_main_process
    from loraexp.run.preemption import Preempted
    from loraexp.sweep.runner import run_trial

    try:
        base = load_config(args.config)
        result = run_trial(base, parse_overrides(rest))
    except Preempted as exc:  # recorded interrupted; the agent's next start of this trial continues it
        print(f"loraexp-trial: {exc}: the run saved a checkpoint and is recorded interrupted", file=sys.stderr)
        return exc.exit_code
    except LoraexpError as exc:
        print(f"loraexp-trial: error: {exc}", file=sys.stderr)
        return 2
    if is_main_process():
        print(f"trial {result.run_name}: {result.status} ({result.run_dir})")
    return 0 if result.status in ("completed", "skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
