"""Pre-flight: everything that can be checked without training, for every run of a sweep at
once, so that bad input fails with one clear error (exit code 2) before anything is written.

Two phases: first what needs no heavy import (a model path that is not a directory or holds
no weights, missing data files, an output directory that cannot be written or holds another
config), so those errors come back at once; then what needs transformers, PEFT, bitsandbytes or
wandb (the model's config and its limits, reading the data whole, matching the target modules
and reading the shapes of the layers the adapter would wrap on a weightless copy of the model,
the quantization backend, the training settings the device can do, W&B credentials). Value
checks that need neither are in :mod:`loraexp.config.checks`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from loraexp.config.methods import is_lora
from loraexp.config.schema import ExperimentConfig
from loraexp.errors import ConfigError
from loraexp.model.load import MODEL_ALIASES, check_model_dir, load_model_config, model_task_type, resolve_model
from loraexp.results.storage import RunStore
from loraexp.run.tracking import effective_mode
from loraexp.tasks import FORMS, configured_task
from loraexp.tasks.base import check_files_exist

logger = logging.getLogger(__name__)

# Model types whose position ids start after the padding index (RoBERTa's create_position_ids_from_input_ids):
# max_position_embeddings - (pad_token_id + 1) tokens fit.
PADDING_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text")


def _skeleton(model_config, task_type: str, num_labels: int):
    """A weightless (meta-device) copy of the model, with a ``num_labels`` head (0: as saved)."""
    import torch

    from loraexp.model.load import auto_model_class

    if num_labels:
        model_config.num_labels = num_labels
    with torch.device("meta"):
        return auto_model_class(task_type).from_config(model_config)


def _check_targets(skeleton, model_type: str, target_modules) -> None:
    """Target modules match some module of the skeleton (the message lists its Linear modules)."""
    from loraexp.model.target_modules import matched_module_names, resolve_target_modules

    matched_module_names(skeleton, resolve_target_modules(target_modules, model_type))


def _in_out(module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an ``nn.Linear`` or of GPT-2's ``Conv1D`` (weight ``(in, out)``)."""
    if hasattr(module, "in_features"):
        return module.in_features, module.out_features
    rows, cols = module.weight.shape
    return rows, cols


def _check_lora(cfg: ExperimentConfig, skeleton, model_config, task_type: str) -> None:
    """The adapter PEFT would build, checked on the skeleton (no weights): ``peft.LoraConfig``
    accepts the ``lora`` mapping (as :func:`~loraexp.model.load.attach_lora` builds it);
    ``layers_to_transform`` names layers the model has (``num_hidden_layers``); some module is
    left to adapt; and ``r`` (or the ``rank_pattern`` entry of a module) is at most the smaller
    dimension of every targeted layer: ``B·A`` has rank at most ``min(in, out)``, so a larger
    ``r`` only adds parameters, and the SVD/QR initialisations (PiSSA, OLoRA) silently build
    ``min(in, out)`` components instead of ``r`` (an error); ``r`` equal to it is a full-rank
    adapter, legal but not low-rank (a logged warning).
    See docs/reliability.md, "A rank at or above a layer's dimension".

    Raises:
        ConfigError: naming the field, the layers and their shapes, and what is allowed.
    """
    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils.other import get_pattern_key

    from loraexp.config.methods import lora_fields
    from loraexp.model.load import head_module_names
    from loraexp.model.target_modules import (
        adaptable_module_names,
        lora_config,
        matched_module_names,
        resolve_target_modules,
        summarise_module_names,
    )

    lora = lora_fields(cfg.method, cfg.lora, cfg.method_options)
    extra: dict[str, Any] = {"task_type": task_type}
    if "modules_to_save" not in lora:
        extra["modules_to_save"] = head_module_names(skeleton) or None
    config = lora_config(lora, model_config.model_type, **extra)
    layers = cfg.lora.get("layers_to_transform")
    count = getattr(model_config, "num_hidden_layers", None)
    if layers is not None and isinstance(count, int):
        outside = [i for i in ([layers] if isinstance(layers, int) else layers) if not 0 <= i < count]
        if outside:
            raise ConfigError(f"`lora.layers_to_transform` must name layers from 0 to {count - 1} (the model has "
                              f"{count}, num_hidden_layers), got {layers!r}")
    names = adaptable_module_names(skeleton)
    if config.target_modules == "all-linear":  # PEFT's preset: every Linear but the output layer
        output = skeleton.get_output_embeddings()
        config.target_modules = set(names) - {n for n, m in skeleton.named_modules() if m is output}
    targeted = [n for n in names if check_target_module_exists(config, n)]
    if not targeted:
        removed = [f"`lora.{k}` {cfg.lora[k]!r}" for k in ("layers_to_transform", "layers_pattern", "exclude_modules")
                   if cfg.lora.get(k) is not None] + ["the trained head (modules_to_save)"]
        matched = matched_module_names(skeleton, resolve_target_modules(cfg.lora["target_modules"],
                                                                        model_config.model_type))
        raise ConfigError(f"`lora.target_modules` {cfg.lora['target_modules']!r} leaves no module to adapt once "
                          f"{', '.join(removed)} are applied; the modules it matches: "
                          f"{summarise_module_names(matched)}")
    over: dict[tuple[str, int], list[str]] = {}
    full: dict[tuple[str, int], list[str]] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for name in targeted:
        shapes[name] = _in_out(skeleton.get_submodule(name))
        pattern = get_pattern_key(config.rank_pattern.keys(), name) if config.rank_pattern else None
        if pattern in (config.rank_pattern or {}):  # PEFT's own lookup of a module's rank
            field, r = f"`lora.rank_pattern` entry {pattern!r}", config.rank_pattern[pattern]
        else:
            field, r = "`lora.r`", config.r
        if r > min(shapes[name]):
            over.setdefault((field, r), []).append(name)
        elif r == min(shapes[name]):
            full.setdefault((field, r), []).append(name)
    for (field, r), found in over.items():
        smallest = min(found, key=lambda n: min(shapes[n]))
        fan_in, fan_out = shapes[smallest]
        raise ConfigError(f"{field} must be at most {min(fan_in, fan_out)}, the smaller dimension of the targeted "
                          f"layers {summarise_module_names(found)} ({fan_in} in, {fan_out} out): B·A has rank at most "
                          f"min(in, out), so a larger r only adds parameters (and PiSSA/OLoRA initialise fewer "
                          f"components than r); got {r}")
    for (field, r), found in full.items():
        fan_in, fan_out = shapes[found[0]]
        logger.warning("%s %d equals the smaller dimension of the targeted layers %s (%d in, %d out): the adapter is "
                       "full rank there, not low-rank (B·A can represent any update of those layers), with "
                       "r·(in + out) = %d parameters per layer against the layer's own %d; a smaller r is cheaper",
                       field, r, summarise_module_names(found), fan_in, fan_out, r * (fan_in + fan_out),
                       fan_in * fan_out)


def _check_max_seq_length(cfg: ExperimentConfig, model_config) -> None:
    """``max_seq_length`` fits the model's position table (``max_position_embeddings``, when
    its config has one; RoBERTa-like models lose ``pad_token_id + 1`` positions to the padding
    offset): a longer sequence indexes past the position embeddings (an index error in the
    middle of training, a device-side assert on CUDA), or, with rotary positions, runs at
    lengths the model never trained on.

    Raises:
        ConfigError: naming the limit and where it comes from.
    """
    limit = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        return
    source = f"the model's max_position_embeddings ({limit})"
    if model_config.model_type in PADDING_OFFSET_POSITIONS:
        offset = (getattr(model_config, "pad_token_id", None) or 1) + 1
        limit -= offset
        source += f" less the {offset} positions of {model_config.model_type}'s padding offset"
    if cfg.max_seq_length > limit:
        raise ConfigError(f"`max_seq_length` must be at most {limit}, {source}: longer sequences have no trained "
                          f"position embedding, got {cfg.max_seq_length}")


def _check_quantization(cfg: ExperimentConfig) -> None:
    """A quantized base needs bitsandbytes with a backend for this device
    (:func:`~loraexp.model.quantization.check_backend`; its CPU backend runs nf4, fp4 and int8)."""
    import torch

    from loraexp.model.quantization import check_backend

    check_backend(cfg.quantization, "cuda" if torch.cuda.is_available() else "cpu")


def _check_method_device(cfg: ExperimentConfig) -> None:
    """A method that needs a device this machine lacks (LoftQ: CUDA)."""
    import torch

    from loraexp.config.methods import check_method_device

    problem = check_method_device(cfg.method, torch.cuda.is_available())
    if problem:
        raise ConfigError(problem)


def _check_training_device(cfg: ExperimentConfig, skeleton) -> None:
    """Every ``training`` setting can work on this machine
    (:func:`~loraexp.run.device.training_device_problems`: fp16 on the CPU, bf16 or tf32 the
    device cannot do, liger-kernel not installed, ``torch_compile`` whose compiler fails, an
    optimizer transformers cannot build here, checked on the weightless ``skeleton``).

    Raises:
        ConfigError: every such setting, each naming the field, the value and what is allowed.
    """
    from loraexp.run.device import training_device_problems

    problems = training_device_problems(cfg.training, model=skeleton, builds_optimizer=cfg.method != "lora-plus")
    if problems:
        raise ConfigError(problems)


def _check_wandb_login(cfg: ExperimentConfig) -> None:
    """W&B online needs credentials, looked up by the installed wandb itself as ``wandb.init``
    does (``wandb.sdk.lib.wbauth.authenticate_session``, without prompting and without storing
    what it finds): ``$WANDB_API_KEY`` (or ``$WANDB_IDENTITY_TOKEN_FILE``), then the netrc file
    (``$NETRC``, else ``~/.netrc``) entry for the netloc, port included, of wandb's ``base_url``
    (``$WANDB_BASE_URL``, else ``base_url`` in wandb's settings files, ``~/.config/wandb/settings``
    or ``$WANDB_CONFIG_DIR/settings``, else wandb's default server) or of the W&B host behind it,
    then an ``api_key`` in those settings. A wandb without ``wbauth`` (older than the one this
    was written against, 0.31) is not second-guessed: its ``wandb.init`` falls back to offline.

    Raises:
        ConfigError: no credentials, or credentials or a server address wandb refuses.
    """
    if effective_mode(cfg.tracking.wandb) != "online":
        return
    from urllib.parse import urlsplit

    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth
    except ImportError:
        logger.debug("this wandb has no wbauth module; W&B credentials are not checked before training")
        return
    try:
        settings = wandb_setup.singleton().settings  # what wandb.init reads in this process
        host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)
        found = wbauth.authenticate_session(host=host, source="loraexp preflight", prompt=False,
                                            update_session=False)
    except Exception as exc:  # noqa: BLE001 -- wandb's AuthenticationError/UsageError, ValueError for a bad URL
        detail = str(exc).splitlines()[:1]
        if callable(getattr(exc, "errors", None)):  # pydantic's ValidationError of wandb.Settings ($WANDB_BASE_URL)
            detail = [f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()]
        raise ConfigError(f"`tracking.wandb` is 'online' but wandb refuses its credentials or server address "
                          f"({type(exc).__name__}: {'; '.join(detail)}); fix them, or use --wandb offline (sync "
                          "later with `wandb sync`) or --wandb disabled") from None
    if found is None:
        netloc = urlsplit(host.url).netloc
        raise ConfigError(f"`tracking.wandb` is 'online' but no W&B API key was found for {host.url} (WANDB_API_KEY "
                          f"unset, no entry for {netloc} in {os.environ.get('NETRC') or '~/.netrc'}, no api_key in "
                          "wandb's settings); run `wandb login`, or use --wandb offline (sync later with `wandb "
                          "sync`) or --wandb disabled")


def _check_output_dir(sweep_dir: Path, runs: list[tuple[str, ExperimentConfig]], rerun: bool) -> None:
    """The output directory is writable; no run directory holds another config, or (unless
    ``rerun``) a result trained on data files that changed since (:mod:`loraexp.run.run_state`)."""
    from loraexp.run.run_state import data_conflict, identity_conflict
    from loraexp.tasks.fingerprint import data_fingerprint

    root = sweep_dir
    while not root.exists():
        root = root.parent
    if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"`output_dir` {str(sweep_dir.parent)!r} is not writable (checked {str(root)!r})")
    for name, cfg in runs:
        store = RunStore(sweep_dir / name)
        conflict = identity_conflict(store, cfg)
        if conflict:
            raise ConfigError(conflict)
        if not rerun:
            changed = data_conflict(store, store.read_record(), data_fingerprint(cfg.task, cfg.resolved_data_dir()))
            if changed:
                raise ConfigError(changed)


def check_adapter_setup(cfg: ExperimentConfig, model_config, task_type: str, num_labels: int) -> None:
    """Pre-flight's checks of one run's method, quantization, training settings and adapter on
    a weightless copy of the model -- what ``loraexp validate`` checks before it loads the model.
    Target modules that match nothing are not checked here (validate reports them as its failing
    ``adapters applied`` line).

    Raises:
        ConfigError: the first problem found, naming the field.
    """
    from loraexp.model.target_modules import matched_module_names, resolve_target_modules

    _check_method_device(cfg)
    _check_quantization(cfg)
    skeleton = _skeleton(model_config, task_type, num_labels)
    _check_training_device(cfg, skeleton)
    targets = resolve_target_modules(cfg.lora["target_modules"], model_config.model_type)  # an unknown preset: raises
    try:
        matched_module_names(skeleton, targets)
    except ConfigError:
        return  # nothing to adapt: validate's failing "adapters applied" line says so, with the Linear modules
    _check_lora(cfg, skeleton, model_config, task_type)


def preflight(runs: list[tuple[str, ExperimentConfig]], sweep_dir: Path, rerun: bool = False) -> None:
    """Fail before any training, writing nothing, if any run cannot start: unknown task,
    missing, non-UTF-8 or malformed data file (a label outside the task's classes included),
    unloadable model or a model folder without weights, ``max_seq_length`` past the model's
    positions, target modules matching nothing, a ``lora`` mapping PEFT rejects,
    ``layers_to_transform`` outside the model's layers, ``r`` above a targeted layer's smaller
    dimension (equal to it: a logged warning), quantization the device's bitsandbytes backend
    cannot do, a ``training`` setting the device cannot do (:func:`_check_training_device`),
    W&B online without credentials the installed wandb accepts, a ``warm_start``
    directory without a readable LoRA adapter, output directory not writable or holding a
    different config under the same run name or a result trained on data files that changed
    since (unless ``rerun``).

    Raises:
        ConfigError | DataError | ModelError: the first problem found.
    """
    for _, cfg in runs:  # cheap first: no heavy import
        if cfg.model not in MODEL_ALIASES:
            resolve_model(cfg.model)
            check_model_dir(cfg.model)
        for form in FORMS[cfg.task].values():  # the forms of a task read the same files
            check_files_exist(form, cfg.resolved_data_dir())
        if cfg.warm_start is not None:
            from loraexp.model.adapters import check_adapter_dir

            check_adapter_dir(cfg.warm_start, field="warm_start")
    _check_output_dir(sweep_dir, runs, rerun)
    checked: set = set()
    model_configs: dict[str, Any] = {}  # config.json read once per model
    skeletons: dict[tuple, Any] = {}  # one meta-device copy per model, objective and head size
    for _, cfg in runs:
        if cfg.model not in model_configs:
            model_configs[cfg.model] = load_model_config(cfg.model, cfg.trust_remote_code)
        task = configured_task(cfg, model_task_type(model_configs[cfg.model]))
        task_type = task.task_type
        key = (repr(task), cfg.resolved_data_dir())
        if key not in checked:
            task.check_data(cfg.resolved_data_dir())
            checked.add(key)
        key = ("max_seq_length", cfg.model, cfg.max_seq_length)
        if key not in checked:
            _check_max_seq_length(cfg, model_configs[cfg.model])
            checked.add(key)
        key = (cfg.model, task_type, task.num_labels)
        if key not in skeletons:
            skeletons[key] = _skeleton(model_configs[cfg.model], task_type, task.num_labels)
        skeleton = skeletons[key]
        key = (cfg.model, task_type, repr(cfg.lora["target_modules"]))
        if key not in checked:
            _check_targets(skeleton, model_configs[cfg.model].model_type, cfg.lora["target_modules"])
            checked.add(key)
        key = ("method", cfg.method)
        if key not in checked:
            _check_method_device(cfg)
            checked.add(key)
        key = ("training", cfg.model, task_type, cfg.method, repr(cfg.training))
        if key not in checked:
            _check_training_device(cfg, skeleton)
            checked.add(key)
        key = ("lora", cfg.model, task_type, cfg.method, repr(cfg.lora), repr(cfg.method_options))
        if is_lora(cfg.method) and key not in checked:
            _check_lora(cfg, skeleton, model_configs[cfg.model], task_type)
            checked.add(key)
        key = (repr(cfg.quantization), cfg.tracking.wandb)
        if key not in checked:
            _check_quantization(cfg)
            _check_wandb_login(cfg)
            checked.add(key)
