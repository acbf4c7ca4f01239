"""Generate with a trained run: base model and base + adapter, side by side.

    python experiments/generate.py --run results/shakespeare-single/<run> --prompt "ROMEO:" --raw
    loraexp-generate --run <run dir> --prompt "What is 12 * 7?" --max-new-tokens 64

The run directory's ``config.yaml`` names the model (and quantization); ``adapter/`` holds the
adapter (safetensors only, :func:`loraexp.model.adapters.load_adapter`). Exit code 2: the run
directory is not a finished causal-LM run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from loraexp.errors import ConfigError, LoraexpError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loraexp-generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="Run directory (holds config.yaml and adapter/).")
    p.add_argument("--prompt", action="append", required=True, help="Prompt text; repeat for several.")
    p.add_argument("--raw", action="store_true",
                   help="Feed the prompt as is; by default it is the user turn of the tokenizer's chat template.")
    p.add_argument("--max-new-tokens", type=int, default=128, help="Tokens to generate (default 128).")
    p.add_argument("--sample", action="store_true", help="Sample instead of greedy decoding.")
    p.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (with --sample).")
    p.add_argument("--top-p", type=float, default=1.0, help="Nucleus sampling mass (with --sample).")
    p.add_argument("--top-k", type=int, default=50, help="Top-k sampling (with --sample).")
    p.add_argument("--seed", type=int, default=0, help="Sampling seed.")
    p.add_argument("--quantized", action="store_true",
                   help="Load the base with the run's quantization (default: full precision).")
    return p


def _check_args(args) -> None:
    problems = []
    if args.max_new_tokens <= 0:
        problems.append(f"`--max-new-tokens` must be a positive int, got {args.max_new_tokens}")
    if args.temperature <= 0:
        problems.append(f"`--temperature` must be > 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        problems.append(f"`--top-p` must be in (0, 1], got {args.top_p}")
    if args.top_k <= 0:
        problems.append(f"`--top-k` must be a positive int, got {args.top_k}")
    if problems:
        raise ConfigError(problems)


def load_run(run_dir: str | Path, quantized: bool = False):
    """``(peft_model, tokenizer, config)`` of a finished causal-LM run.

    Raises:
        ConfigError: no ``config.yaml`` or no ``adapter/`` in ``run_dir``, or the run is not a
            causal LM.
    """
    from loraexp.config.load import build_config, read_yaml
    from loraexp.config.precision import resolve_device_defaults
    from loraexp.model.adapters import check_adapter_dir, load_adapter
    from loraexp.model.load import CAUSAL_LM, load_model, load_model_config, model_task_type
    from loraexp.model.quantization import DTYPE_BY_NAME, bnb_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"`--run` {str(run_dir)!r} has no config.yaml; give a run directory "
                          "(<output_dir>/<sweep>/<run>)")
    adapter = run_dir / "adapter"
    if not adapter.is_dir():
        if (read_yaml(run_dir / "config.yaml") or {}).get("method") == "full":
            raise ConfigError(f"`--run` {str(run_dir)!r} is a full fine-tuning run, which saves no adapter; run it "
                              "with --export-merged and load the model saved in <run>/merged")
        raise ConfigError(f"`--run` {str(run_dir)!r} has no adapter/ directory: the run did not finish")
    check_adapter_dir(adapter, "--run adapter")
    cfg = resolve_device_defaults(build_config(read_yaml(run_dir / "config.yaml")))
    if model_task_type(load_model_config(cfg.model, cfg.trust_remote_code)) != CAUSAL_LM:
        raise ConfigError(f"`--run` {str(run_dir)!r} trained {cfg.model!r}, which is not a causal LM")
    quantization = bnb_config(cfg.quantization) if quantized else None
    base, tokenizer = load_model(cfg.model, CAUSAL_LM, trust_remote_code=cfg.trust_remote_code,
                                 dtype=DTYPE_BY_NAME[cfg.model_dtype], quantization_config=quantization)
    return load_adapter(base, adapter, "--run adapter").eval(), tokenizer, cfg


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python experiments/generate.py`` and ``loraexp-generate``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    from loraexp.tasks.generation import generate_texts
    from loraexp.tasks.sft import render

    try:
        _check_args(args)
        model, tokenizer, _ = load_run(args.run, args.quantized)
    except LoraexpError as exc:
        print(f"loraexp-generate: error: {exc}", file=sys.stderr)
        return 2
    prompts = args.prompt if args.raw else [
        render(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True) for p in args.prompt]
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                   top_p=args.top_p, top_k=args.top_k, add_special_tokens=True if args.raw else None)
    torch.manual_seed(args.seed)
    adapted = generate_texts(model, tokenizer, prompts, **options)
    torch.manual_seed(args.seed)
    with model.disable_adapter():
        base = generate_texts(model, tokenizer, prompts, **options)
    for prompt, b, a in zip(args.prompt, base, adapted):
        print(f"=== prompt: {prompt}\n--- base model:\n{b.strip()}\n--- base + adapter:\n{a.strip()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
