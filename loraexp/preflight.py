"""Pre-flight: everything that can be checked without training, for every run of a sweep at
once, so that bad input fails with one clear error (exit code 2) before anything is written.

Two phases: first what needs no heavy import (a model path that is not a directory, missing
data files, an output directory that cannot be written or holds another config), so those
errors come back at once; then what needs transformers, PEFT or bitsandbytes (the model's
config, reading the data, matching the target modules, the quantization backend).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loraexp.config import build_config
from loraexp.errors import ConfigError
from loraexp.models import MODEL_ALIASES, load_model_config, model_task_type, resolve_model
from loraexp.schema import ExperimentConfig
from loraexp.storage import RunStore
from loraexp.tasks import FORMS, configured_task
from loraexp.tasks.base import check_files_exist
from loraexp.tracking import effective_mode


def _check_targets(model_config, task_type: str, num_labels: int, target_modules) -> None:
    """Match target modules on a weightless (meta-device) copy of the model."""
    import torch

    from loraexp.models import auto_model_class
    from loraexp.target_modules import matched_module_names, resolve_target_modules

    if num_labels:
        model_config.num_labels = num_labels
    with torch.device("meta"):
        skeleton = auto_model_class(task_type).from_config(model_config)
    matched_module_names(skeleton, resolve_target_modules(target_modules, model_config.model_type))


def _check_quantization(cfg: ExperimentConfig) -> None:
    """A quantized base needs bitsandbytes with a backend for this device
    (:func:`~loraexp.quantization.check_backend`; its CPU backend runs nf4, fp4 and int8)."""
    import torch

    from loraexp.quantization import check_backend

    check_backend(cfg.quantization, "cuda" if torch.cuda.is_available() else "cpu")


def _check_method_device(cfg: ExperimentConfig) -> None:
    """A method that needs a device this machine lacks (LoftQ: CUDA)."""
    import torch

    from loraexp.methods import check_method_device

    problem = check_method_device(cfg.method, torch.cuda.is_available())
    if problem:
        raise ConfigError(problem)


def _check_wandb_login(cfg: ExperimentConfig) -> None:
    """W&B online needs a key: ``$WANDB_API_KEY``, or the ``~/.netrc`` entry that ``wandb
    login`` writes for the W&B host (``$WANDB_BASE_URL``, default api.wandb.ai)."""
    if effective_mode(cfg.tracking.wandb) != "online" or os.environ.get("WANDB_API_KEY"):
        return
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        found = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        found = None
    if not found:
        raise ConfigError(f"`tracking.wandb` is 'online' but no W&B API key was found (WANDB_API_KEY unset, no "
                          f"~/.netrc entry for {host}); run `wandb login`, or use --wandb offline (sync later with "
                          "`wandb sync`) or --wandb disabled")


def _check_output_dir(sweep_dir: Path, runs: list[tuple[str, ExperimentConfig]]) -> None:
    root = sweep_dir
    while not root.exists():
        root = root.parent
    if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"`output_dir` {str(sweep_dir.parent)!r} is not writable (checked {str(root)!r})")
    for name, cfg in runs:
        saved = RunStore(sweep_dir / name).read_config()
        if saved is None:
            continue
        try:
            saved_id = build_config(saved).run_id
        except ConfigError:
            saved_id = "unreadable"
        if saved_id != cfg.run_id:
            raise ConfigError(
                f"run directory {str(sweep_dir / name)!r} holds a different config (run_id {saved_id} != "
                f"{cfg.run_id}); set another `output_dir` or `sweep.name`, or delete that directory")


def preflight(runs: list[tuple[str, ExperimentConfig]], sweep_dir: Path) -> None:
    """Fail before any training, writing nothing, if any run cannot start: unknown task,
    missing or malformed data file, unloadable model, target modules matching nothing,
    quantization the device's bitsandbytes backend cannot do, W&B online without a key,
    output directory not writable or holding a different config under the same run name.

    Raises:
        ConfigError | DataError | ModelError: the first problem found.
    """
    for _, cfg in runs:  # cheap first: no heavy import
        if cfg.model not in MODEL_ALIASES:
            resolve_model(cfg.model)
        for form in FORMS[cfg.task].values():  # the forms of a task read the same files
            check_files_exist(form, cfg.resolved_data_dir())
    _check_output_dir(sweep_dir, runs)
    checked: set = set()
    model_configs: dict[str, Any] = {}  # config.json read once per model
    for _, cfg in runs:
        if cfg.model not in model_configs:
            model_configs[cfg.model] = load_model_config(cfg.model, cfg.trust_remote_code)
        task = configured_task(cfg, model_task_type(model_configs[cfg.model]))
        task_type = task.task_type
        key = (repr(task), cfg.resolved_data_dir())
        if key not in checked:
            task.check_data(cfg.resolved_data_dir())
            checked.add(key)
        key = (cfg.model, task_type, repr(cfg.lora["target_modules"]))
        if key not in checked:
            _check_targets(model_configs[cfg.model], task_type, task.num_labels, cfg.lora["target_modules"])
            checked.add(key)
        key = ("method", cfg.method)
        if key not in checked:
            _check_method_device(cfg)
            checked.add(key)
        key = (repr(cfg.quantization), cfg.tracking.wandb)
        if key not in checked:
            _check_quantization(cfg)
            _check_wandb_login(cfg)
            checked.add(key)
