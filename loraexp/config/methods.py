"""Run types: full fine-tuning and the LoRA variants, each defined by what it hands PEFT
(docs/methods.md).

A method is a set of ``lora`` fields (``use_rslora``, ``use_dora``, ``init_lora_weights``
...) plus, for three of them, something outside ``LoraConfig``: ``full`` trains the model
without PEFT; ``lora-plus`` builds its optimizer with
:func:`peft.optimizers.create_loraplus_optimizer`; ``eva`` initialises lora_A from data with
``peft.initialize_lora_eva_weights`` (in the recipe). The verification rules that depend on the
initialisation are derived from the resolved ``LoraConfig`` (:func:`rewrites_base`), so a
value set through ``--set lora.init_lora_weights=...`` is covered the same way.

Imports nothing heavy at module level.
"""

from __future__ import annotations

from typing import Any

SEQ_CLS, CAUSAL_LM = "SEQ_CLS", "CAUSAL_LM"

# Full fine-tuning learning rates by objective (MethodOptions.full_learning_rate = None):
# 5e-5 is the top of the BERT paper's fine-tuning range (Devlin et al. 2019, appendix A.3);
# 2e-5 is the usual full fine-tuning rate of small decoders (SmolLM2's own SFT recipe uses 3e-5 to 1e-5).
FULL_LEARNING_RATES = {SEQ_CLS: 5e-5, CAUSAL_LM: 2e-5}

# ``lora`` fields each LoRA variant sets (on top of the config's ``lora`` mapping).
METHOD_LORA_FIELDS: dict[str, dict[str, Any]] = {
    "lora": {},
    "rslora": {"use_rslora": True},     # scaling α/√r (Kalajdzievski 2023)
    "dora": {"use_dora": True},         # magnitude + direction (Liu et al. 2024)
    "pissa": {"init_lora_weights": "pissa"},  # principal singular vectors; base becomes the residual (Meng et al. 2024)
    "olora": {"init_lora_weights": "olora"},  # QR of the base weight; base becomes the residual (Büyükakyüz 2024)
    "lora-plus": {},                    # same adapter, lora_B learns faster (Hayou et al. 2024)
    "loftq": {"init_lora_weights": "loftq"},  # quantization-aware SVD init (Li et al. 2023)
    "eva": {"init_lora_weights": "eva"},      # activation-SVD init of lora_A (Paischer et al. 2024)
}

# Every run type, in the order --help and docs/configuration.md list them: plain LoRA, full
# fine-tuning, then the variants of METHOD_LORA_FIELDS (declared once, there).
METHODS = ("lora", "full", *(m for m in METHOD_LORA_FIELDS if m != "lora"))

# MethodOptions fields that define each method's result (part of its run identity).
_OPTIONS_USED = {"full": ("full_learning_rate",), "lora-plus": ("loraplus_lr_ratio",),
                 "loftq": ("loftq_bits", "loftq_iter"), "eva": ("eva_rho", "eva_batches")}

# init_lora_weights values whose initialisation rewrites the base weights (the frozen base becomes
# W - s·B0·A0); PEFT converts their trained adapters back to the original base on save
# (``path_initial_model_for_weight_conversion``) for all but LoftQ.
REWRITING_INITS = ("pissa", "olora", "corda", "loftq")
CONVERTIBLE_INITS = ("pissa", "olora", "corda")
CUDA_ONLY_METHODS = {"loftq": "PEFT's loftq_init quantizes on a CUDA (or XPU) device"}


def options_used(method: str) -> tuple[str, ...]:
    """The :class:`~loraexp.config.schema.MethodOptions` fields ``method`` reads."""
    return _OPTIONS_USED.get(method, ())


def is_lora(method: str) -> bool:
    """Whether ``method`` trains a PEFT LoRA adapter (all but ``full``)."""
    return method != "full"


def lora_fields(method: str, lora: dict[str, Any], options) -> dict[str, Any]:
    """The ``lora`` mapping ``method`` runs with: the config's mapping with the method's fields
    set (LoftQ and EVA get their ``loftq_config`` / ``eva_config`` from ``options``, a
    :class:`~loraexp.config.schema.MethodOptions`; LoftQ runs at ``lora_alpha = r``, scaling 1, the
    only one at which PEFT's LoftQ initialisation reproduces the base).

    Raises:
        ValueError: ``method`` is ``full`` (it has no adapter) or unknown.
    """
    if method not in METHOD_LORA_FIELDS:
        raise ValueError(f"method {method!r} has no LoRA fields; allowed: {', '.join(METHOD_LORA_FIELDS)}")
    fields = {**lora, **METHOD_LORA_FIELDS[method]}
    if method == "loftq":
        from peft import LoftQConfig

        fields["loftq_config"] = LoftQConfig(loftq_bits=options.loftq_bits, loftq_iter=options.loftq_iter)
        # PEFT's loftq_init fits B·A to W − Q(W) without the scaling, so the start reproduces W
        # only at scaling 1
        fields["lora_alpha"] = fields["r"]
    if method == "eva":
        from peft import EvaConfig

        fields["eva_config"] = EvaConfig(rho=options.eva_rho)
    return fields


def init_name(init_lora_weights: Any) -> str:
    """``init_lora_weights`` as a lower-case name: ``True`` -> ``default`` (B = 0, Kaiming A),
    ``False`` -> ``random`` (both factors random: the adapter changes the output at step 0),
    ``pissa_niter_4`` -> ``pissa_niter_4``."""
    if init_lora_weights is True:
        return "default"
    if init_lora_weights is False:
        return "random"
    return str(init_lora_weights).lower()


def rewrites_base(init_lora_weights: Any) -> bool:
    """Whether this initialisation replaces the base weights by a residual (PiSSA, OLoRA,
    CorDA, LoftQ)."""
    return init_name(init_lora_weights).startswith(REWRITING_INITS)


def convertible(init_lora_weights: Any) -> bool:
    """Whether PEFT can convert an adapter of this initialisation to apply to the original base
    (``save_pretrained(..., path_initial_model_for_weight_conversion=...)``)."""
    return init_name(init_lora_weights).startswith(CONVERTIBLE_INITS)


def not_applicable_checks(method: str, init_lora_weights: Any, quantized: bool) -> dict[str, str]:
    """Check name -> why it does not apply to a run of ``method`` (with that initialisation, on
    a quantized base or not): :attr:`loraexp.results.record.Verification.not_applicable`."""
    if not is_lora(method):
        return {"frozen_base": "full fine-tuning trains every weight", "grad_flow": "no LoRA factors",
                "merge": "no adapter to merge", "reload": "no adapter: the trained weights are the model"}
    out = {"full_training": "LoRA run: the base is frozen"}
    if quantized:
        out["reload"] = ("quantized base: the merge check loads the saved adapter onto a full-precision reload "
                         "of the base")
    elif rewrites_base(init_lora_weights) and not convertible(init_lora_weights):
        out["reload"] = (f"{init_name(init_lora_weights)} adapters apply to the base their initialisation rewrote; "
                         "PEFT converts only pissa, olora and corda adapters back to the original base")
    return out


def full_learning_rate(options, task_type: str) -> float:
    """``options.full_learning_rate``, else :data:`FULL_LEARNING_RATES` for the objective."""
    return options.full_learning_rate or FULL_LEARNING_RATES.get(task_type, FULL_LEARNING_RATES[SEQ_CLS])


def loraplus_optimizer(model, training: dict[str, Any], options):
    """AdamW with LoRA+ parameter groups (``peft.optimizers.create_loraplus_optimizer``):
    lora_B and every 1-D trainable parameter (biases, LayerNorm, a head's bias) at
    ``learning_rate`` × ``options.loraplus_lr_ratio``; lora_A and other 2-D trainable weights
    (a classification head's weight) at ``learning_rate``. Betas, eps and weight decay (PEFT's
    ``loraplus_weight_decay``, applied to every group but the bias/LayerNorm one) come from
    ``training`` (TrainingArguments' defaults otherwise). The Trainer builds the schedule."""
    import torch
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model=model, optimizer_cls=torch.optim.AdamW, lr=training["learning_rate"],
        loraplus_lr_ratio=options.loraplus_lr_ratio, loraplus_weight_decay=training.get("weight_decay", 0.0),
        betas=(training.get("adam_beta1", 0.9), training.get("adam_beta2", 0.999)),
        eps=training.get("adam_epsilon", 1e-8))


def check_method_device(method: str, cuda: bool) -> str | None:
    """Why ``method`` cannot run on this device (None when it can)."""
    if method in CUDA_ONLY_METHODS and not cuda:
        return f"`method` {method!r} needs a CUDA device ({CUDA_ONLY_METHODS[method]}); this machine has none"
    return None


__all__ = ["FULL_LEARNING_RATES", "METHODS", "METHOD_LORA_FIELDS", "check_method_device", "convertible",
           "full_learning_rate", "init_name", "is_lora", "lora_fields", "loraplus_optimizer", "not_applicable_checks",
           "options_used",
           "rewrites_base"]
