"""Names and identities of runs: the readable ``run_name`` and ``configuration_name`` (what
replicates over seeds share), the sweep's name, and ``effective_identity`` (what decides a
run's result; docs/design.md, "Run identity and results"). Pure functions of a config.
"""

from __future__ import annotations

from pathlib import Path

from loraexp.config.load import apply_overrides
from loraexp.config.schema import ExperimentConfig


def format_lr(lr: float) -> str:
    """``3e-4`` style: mantissa without trailing zeros, exponent without padding."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def model_label(model: str) -> str:
    """Short model name for run names: the alias, or the last path / Hub-id component."""
    return Path(model.rstrip("/")).name.lower() or model


def targets_label(target_modules: str | list[str]) -> str:
    """Preset name, or the explicit module names' last parts joined by ``+``."""
    if isinstance(target_modules, str):
        return target_modules
    return "+".join(t.split(".")[-1] for t in target_modules)


def quantization_label(cfg: ExperimentConfig) -> str | None:
    """``nf4``, ``nf4dq``, ``int8`` ...; None for a full-precision base."""
    q = cfg.quantization
    if q.method == "none":
        return None
    return q.method + ("dq" if q.double_quant else "")


def configuration_name(cfg: ExperimentConfig) -> str:
    """The run name without its seed: what replicates over seeds share, e.g.
    ``sst2-minilm-r8-a16-standard-lr1e-3``, ``sst2-minilm-r8-a16-standard-dora-lr2e-3``
    (the method after the target modules, none for plain LoRA, ``-nf4dq`` for a quantized
    base), ``sst2-minilm-full`` (full fine-tuning: its learning rate comes from
    ``method_options``)."""
    if cfg.method == "full":
        lr = cfg.method_options.full_learning_rate
        return "-".join(p for p in (cfg.task, model_label(cfg.model), "full", lr and f"lr{format_lr(lr)}") if p)
    lora = cfg.lora
    parts = [cfg.task, model_label(cfg.model), f"r{lora['r']}", f"a{lora['lora_alpha']:g}",
             targets_label(lora["target_modules"]), None if cfg.method == "lora" else cfg.method,
             quantization_label(cfg), f"lr{format_lr(cfg.training['learning_rate'])}"]
    return "-".join(p for p in parts if p)


def run_name(cfg: ExperimentConfig) -> str:
    """Readable run name: :func:`configuration_name` and the seed, e.g.
    ``sst2-minilm-r8-a16-standard-lr1e-3-s42``."""
    return f"{configuration_name(cfg)}-s{cfg.seed}"


def sweep_name(cfg: ExperimentConfig) -> str:
    """``sweep.name``, else ``<task>-<mode>[-<ablation_type>]``."""
    if cfg.sweep.name:
        return cfg.sweep.name
    parts = [cfg.task, cfg.sweep.mode]
    if cfg.sweep.mode == "ablation":
        parts.append(cfg.sweep.ablation_type)
    return "-".join(parts)


def effective_identity(cfg: ExperimentConfig) -> str:
    """What determines a run's result: its run id, except that full fine-tuning ignores
    ``training.learning_rate`` (it trains at ``method_options.full_learning_rate``), so two full
    runs differing only there are the same run."""
    if cfg.method != "full":
        return cfg.run_id
    return apply_overrides(cfg, {"training.learning_rate": 1.0}).run_id
