"""The base model of a sweep's runs, loaded once per process where it is the same
(docs/design.md, "Reuse across a sweep").

One process runs the runs of a sweep one after another (:mod:`loraexp.sweep.runner`); each loads
its base, and its reload check loads it again. Where the load is the same -- the model folder
and its files (name, size, modification time), the objective, ``num_labels``, the dtype; no
quantization, no ``trust_remote_code``, a local folder -- what a load costs beyond building the
model is paid once: finding the folder (an alias's GGUF conversion is found by the file's
SHA-256, memoised by :func:`~loraexp.tasks.fingerprint.file_sha256`) and parsing the tokenizer
(SmolLM2's: 0.3-0.5 s). The cache keeps the pristine tokenizer and hands out a deep copy per
load. The weights, by :data:`MODES`:

* ``map`` (the default): the model is built by the same ``from_pretrained`` call as without
  the cache. A safetensors checkpoint is memory-mapped: once the page cache holds the file, a
  second load reads no disk and copies no more than the first did.
* ``copy``: the checkpoint's tensors are kept in RAM once and each load builds the model from
  a clone of them (``from_pretrained(None, config=..., state_dict=...)``), never reading the
  folder again. On a 2-core VM a clone was slower than the memory map (MiniLM 0.4-1.1 s vs
  0.2-0.8 s per load and first forward pass, SmolLM2-135M 2.6-4.3 s vs 2.0-3.7 s), hence not
  the default; ``benchmarks/reuse.py`` measures both.
* ``off``: every load as without the cache.

Either way every load goes through transformers' own loading, so a randomly initialised head
(MiniLM's classifier) is drawn from torch's random state at that moment, as from a fresh load:
a run's result is bit-identical with and without the cache (tests/test_reuse.py). One base is
kept (SmolLM2-135M in float32: 538 MB in ``copy`` mode, a tokenizer otherwise); a load of
another base frees it first.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loraexp.config.schema import ExperimentConfig

MODES = ("map", "copy", "off")
DEFAULT_MODE = "map"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"

_mode = DEFAULT_MODE
_entry: _Base | None = None


@dataclass
class _Base:
    """A cached base: its :func:`base_key`, folder and pristine tokenizer; in ``copy`` mode
    also the model class, config and generation config of a fresh load and the checkpoint's
    tensors (as stored in the files, in RAM)."""

    key: tuple
    path: str
    tokenizer: Any
    model_class: type | None = None
    config: Any = None
    generation_config: Any = None
    weights: dict[str, Any] | None = None


def set_mode(mode: str) -> None:
    """Choose how a cached base's weights are handed out (:data:`MODES`); empties the cache.

    Raises:
        ValueError: ``mode`` is not one of :data:`MODES`.
    """
    global _mode
    if mode not in MODES:
        raise ValueError(f"base cache mode must be one of {MODES}, got {mode!r}")
    _mode = mode
    clear()


def clear() -> None:
    """Free the cached base."""
    global _entry
    _entry = None


def cached_path() -> str | None:
    """The folder of the cached base, if any."""
    return _entry.path if _entry is not None else None


def base_key(name: str, task_type: str, num_labels: int, trust_remote_code: bool = False, dtype=None,
             quantization_config=None) -> tuple | None:
    """What makes two loads of :func:`loraexp.model.load.load_model` the same: the resolved local
    folder with the name, size and modification time of each file in it, ``task_type``,
    ``num_labels`` (for a classifier), ``dtype``. None (not cached) for a quantized load,
    ``trust_remote_code`` (the model's own code could load differently) and a Hub id.

    Raises:
        ModelError: see :func:`loraexp.model.load.resolve_model`.
    """
    from loraexp.model.load import SEQ_CLS, resolve_model

    if quantization_config is not None or trust_remote_code:
        return None
    path = Path(resolve_model(name))
    if not path.is_dir():
        return None
    files = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()))
    return (str(path), files, task_type, num_labels if task_type == SEQ_CLS else 0, str(dtype))


def load(name: str, task_type: str, num_labels: int = 2, trust_remote_code: bool = False, dtype=None,
         quantization_config=None):
    """:func:`loraexp.model.load.load_model`, through the cache: ``(model, tokenizer)``, both
    the caller's own (a pristine base, a deep copy of the tokenizer).

    Raises:
        ModelError | ConfigError: see :func:`loraexp.model.load.load_model`.
    """
    from loraexp.model.load import load_model

    global _entry
    key = None if _mode == "off" else base_key(name, task_type, num_labels, trust_remote_code, dtype,
                                               quantization_config)
    if key is None:
        return load_model(name, task_type, num_labels, trust_remote_code, dtype=dtype,
                          quantization_config=quantization_config)
    if _entry is not None and _entry.key == key:
        tokenizer = copy.deepcopy(_entry.tokenizer)
        if _entry.weights is None:
            return load_model(name, task_type, num_labels, dtype=dtype, tokenizer=tokenizer)
        return _from_weights(_entry, dtype, tokenizer), tokenizer
    _entry = None  # free the other base before loading this one
    model, tokenizer = load_model(name, task_type, num_labels, dtype=dtype)
    entry = _Base(key, key[0], copy.deepcopy(tokenizer))
    if _mode == "copy":
        _keep_weights(entry, model, task_type, num_labels)
    _entry = entry
    return model, tokenizer


def _weight_files(path: Path) -> list[Path] | None:
    """The safetensors files of the checkpoint in ``path`` (one, or the shards of its
    index); None for another format."""
    import json

    if (path / SAFETENSORS_FILE).is_file():
        return [path / SAFETENSORS_FILE]
    if (path / SAFETENSORS_INDEX).is_file():
        shards = json.loads((path / SAFETENSORS_INDEX).read_text(encoding="utf-8"))["weight_map"].values()
        return [path / s for s in sorted(set(shards))]
    return None


def _keep_weights(entry: _Base, model, task_type: str, num_labels: int) -> None:
    """``copy`` mode: read the checkpoint's tensors into RAM, and keep the config a fresh load
    builds the model from (config.json with ``num_labels``), its class and generation config.
    A checkpoint not in safetensors is handed out as in ``map`` mode."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from loraexp.model.load import SEQ_CLS

    files = _weight_files(Path(entry.path))
    if files is None:
        return
    weights: dict[str, Any] = {}
    for file in files:
        weights.update({k: v.clone() for k, v in load_file(str(file)).items()})  # owned, not a view of the file
    kwargs = {"num_labels": num_labels} if num_labels and task_type == SEQ_CLS else {}
    entry.config = AutoConfig.from_pretrained(entry.path, **kwargs)
    entry.model_class = type(model)
    entry.generation_config = copy.deepcopy(getattr(model, "generation_config", None))
    entry.weights = weights


def _from_weights(entry: _Base, dtype, tokenizer):
    """``copy`` mode: the model built by transformers' loading from a clone of the cached
    tensors (the same conversion and initialisation of missing weights as from the files),
    named after the folder as a fresh load is."""
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = entry.model_class.from_pretrained(None, config=copy.deepcopy(entry.config),
                                              state_dict={k: v.clone() for k, v in entry.weights.items()}, **kwargs)
    model.config.name_or_path = model.name_or_path = entry.path
    if entry.generation_config is not None:
        model.generation_config = copy.deepcopy(entry.generation_config)
    model.config.pad_token_id = tokenizer.pad_token_id  # as load_model sets it
    return model


def load_base(cfg: ExperimentConfig, task_type: str, num_labels: int, quantized: bool = True):
    """``(model, tokenizer)``: the base in ``cfg.model_dtype``, quantized per
    ``cfg.quantization`` (and prepared for k-bit training) unless ``quantized`` is False. A
    full-precision base loaded before in this process is not loaded again
    (:func:`load`).

    Raises:
        ModelError | ConfigError: see :func:`loraexp.model.load.load_model`.
    """
    from loraexp.model.quantization import DTYPE_BY_NAME, bnb_config, prepare_for_training

    quantization = bnb_config(cfg.quantization) if quantized else None
    model, tokenizer = load(cfg.model, task_type, num_labels, cfg.trust_remote_code,
                            dtype=DTYPE_BY_NAME[cfg.model_dtype], quantization_config=quantization)
    if quantization is not None:
        model = prepare_for_training(model, cfg.quantization)
    return model, tokenizer
