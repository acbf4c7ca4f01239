"""Bit-exact fingerprints of the frozen base weights (docs/design.md, "Frozen base")."""

from __future__ import annotations

import hashlib

import torch

from loraexp.analysis.params import is_base_parameter


def base_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Parameters of the pretrained model inside a PEFT model (see
    :func:`~loraexp.analysis.params.is_base_parameter`), by name."""
    return {n: p for n, p in model.named_parameters() if is_base_parameter(n)}


def tensor_fingerprint(tensor: torch.Tensor) -> str:
    """BLAKE2b-128 of the tensor's raw bytes, dtype and shape: equal fingerprints mean
    bit-identical tensors (``torch.equal`` strength, not allclose). Works for any dtype,
    including bf16 and packed 4-bit storage; copies to CPU one tensor at a time."""
    t = tensor.detach().contiguous().cpu()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fingerprint_base(model: torch.nn.Module) -> dict[str, str]:
    """Fingerprint of every base parameter, by name."""
    return {n: tensor_fingerprint(p) for n, p in base_parameters(model).items()}


def changed_tensors(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Names whose fingerprint differs, or that appear in only one of the two."""
    return sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
