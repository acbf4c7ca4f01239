"""GPU benchmark (issue 24; docs/gpu.md, "The GPU benchmark"): loraexp against the bare
PEFT + Trainer script on the same run, alternating, and each switch side by side.

    python3 benchmarks/gpu.py --kit .gpu-kit --out OUTDIR [--steps 20] [--repeats 2]

Run by ``scripts/gpu_kit.sh run`` on a lent GPU (randomly initialised models of real shapes,
SmolLM2-135M's tokenizer, Tiny Shakespeare from the kit; tests/gpu/kit.py); with
``LORAEXP_GPU_TINY=1`` (the CPU dry run) every shape is the kit's tiny one and the figures only
prove that the script runs.

Configurations (``--only`` picks some):

* ``lora-1b``: LoRA (r 16, attention) on the Llama-3.2-1B shape, float32 weights under bf16
  autocast (loraexp's GPU default, docs/gpu.md "Defaults on a GPU"; the bare script the same),
  loraexp and bare in ABBA order over ``--repeats`` pairs;
* ``qlora-3b``: QLoRA (NF4, double quantization, bf16 compute) on the Llama-3.2-3B shape, the same;
* switches on ``lora-1b``, one run each: bf16 weights (bare), eager attention instead of SDPA
  (bare: loraexp loads with transformers' default, SDPA), padding-free packing of LIMA's variable-length examples with
  ``DataCollatorWithFlattening`` against padding (bare: loraexp has no packing), gradient
  checkpointing, paged 8-bit AdamW (``optim: paged_adamw_8bit``), Liger kernels
  (``use_liger_kernel``).

Per run: tokens per second over ``Trainer.train`` (non-padding input tokens / training seconds),
peak ``torch.cuda.max_memory_allocated`` (the process's peak RSS on the CPU), and model FLOPs
utilisation. LoRA's FLOPs per token: forward 2·N plus the input gradients 2·N of the frozen
weights (no weight gradients, about (2+ε)/3 of full training's 6·N), plus attention's
12·L·S·d_attn (forward and backward of QKᵀ and AV, PaLM's convention), plus another forward with
gradient checkpointing; N the parameters in the layers' matmuls (embeddings excluded, the LM head
included). MFU against the H200's bf16 dense peak (989.5 TFLOP/s, NVIDIA's datasheet) and against
the ~790 TFLOP/s a plain bf16 matmul reaches there (docs/gpu.md). The memory prediction
(issue 24, part 5) is not implemented yet: the table says so instead of a figure.

Prints one table and writes ``OUTDIR/gpu-bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.gpu import kit  # noqa: E402

H200_BF16_DENSE = 989.5e12  # FLOP/s, NVIDIA H200 datasheet (SXM, dense)
H200_MATMUL_MEASURED = 790e12  # FLOP/s, a plain bf16 matmul on an H200 (docs/gpu.md)
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def reset_peak() -> None:
    import torch

    from loraexp.run.callbacks.efficiency import reset_peak_memory

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    reset_peak_memory()


def peak_bytes() -> int:
    from loraexp.run.callbacks.efficiency import peak_memory_bytes

    return peak_memory_bytes()[0]


def matmul_params(config) -> int:
    """Parameters in the matmuls a token passes: attention and MLP projections of every layer
    and the LM head (embedding lookups do no FLOPs)."""
    d, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q = d * config.num_attention_heads * head_dim
    kv = 2 * d * config.num_key_value_heads * head_dim
    o = config.num_attention_heads * head_dim * d
    mlp = 3 * d * inter
    return layers * (q + kv + o + mlp) + d * config.vocab_size


def lora_flops_per_token(config, seq: int, checkpointing: bool) -> float:
    """Forward 2·N + input gradients 2·N (+ a recomputed forward 2·N with checkpointing), plus
    attention's QKᵀ and AV: 4·S·d_attn per layer forward, twice that backward (both operands are
    activations), counted without the causal half as PaLM's MFU does (12·L·S·d_attn in all; 16
    with checkpointing)."""
    n = matmul_params(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = (16 if checkpointing else 12) * config.num_hidden_layers * seq * config.num_attention_heads * head_dim
    return (6 if checkpointing else 4) * n + attention


def blocks(tokenizer, text: str, seq: int, count: int):
    """``count`` blocks of ``seq`` tokens of ``text``, as a ``datasets.Dataset``."""
    import datasets

    ids = tokenizer(text[: seq * count * 8], add_special_tokens=False)["input_ids"]
    rows = [ids[i * seq:(i + 1) * seq] for i in range(min(count, len(ids) // seq))]
    return datasets.Dataset.from_dict({"input_ids": rows, "labels": rows})


def lima_examples(tokenizer, path: Path, seq: int, count: int):
    """The first ``count`` LIMA conversations, tokenized and cut to ``seq`` tokens: examples of
    different lengths, what packing is for."""
    import datasets

    from loraexp.tasks.lima import LIMA

    data = json.loads(path.read_text())
    texts = ["\n".join(m["content"] for m in LIMA.to_messages(row)) for row in data[:count]]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:seq] for t in texts]
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})


def bare(folder: str, out: str, args, quantized: bool, **switch) -> dict:
    """The bare script: transformers + PEFT + the Trainer, nothing of loraexp's."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForLanguageModeling,
        DataCollatorWithFlattening,
        Trainer,
        TrainingArguments,
    )
    from transformers.trainer_callback import PrinterCallback

    gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if gpu else torch.float32  # autocast and 4-bit compute; the weights: float32
    kwargs = {"dtype": torch.float32 if not switch.get("bf16_weights") or not gpu else torch.bfloat16,
              "attn_implementation": switch.get("attn", "sdpa")}
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": 0} if gpu else {"": "cpu"}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    if switch.get("packing") is not None:
        lima = kit.kit_dir() / "data" / "lima" / "lima.json"
        train = lima_examples(tokenizer, lima, args.seq, args.batch * args.steps)
        collator = (DataCollatorWithFlattening() if switch["packing"]
                    else DataCollatorForLanguageModeling(tokenizer, mlm=False))
    else:
        train = blocks(tokenizer, (kit.kit_dir() / "data" / "tinyshakespeare" / "input.txt").read_text(), args.seq,
                       args.batch * args.steps)
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    training = TrainingArguments(output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch,
                                 learning_rate=2e-4, logging_steps=max(args.steps, 1), save_strategy="no",
                                 report_to="none", bf16=gpu, use_cpu=not gpu, disable_tqdm=True,
                                 include_num_input_tokens_seen="non_padding",
                                 gradient_checkpointing=switch.get("checkpointing", False),
                                 optim=switch.get("optim", "adamw_torch"))
    trainer = Trainer(model=model, args=training, train_dataset=train, data_collator=collator)
    trainer.pop_callback(PrinterCallback)
    reset_peak()
    output = trainer.train()
    seconds = output.metrics["train_runtime"]
    tokens = trainer.state.num_input_tokens_seen
    return {"tokens_per_s": tokens / seconds, "peak_mem_bytes": peak_bytes(), "train_seconds": seconds,
            "loss": output.metrics.get("train_loss"), "tokens": tokens}


def loraexp_run(folder: str, out: str, args, quantized: bool, **switch) -> dict:
    """The same run through loraexp (its verification included; tokens per second over
    training only, as the bare script's)."""
    from loraexp.config.load import build_config
    from loraexp.run.recipe import run_experiment

    training = {"max_steps": args.steps, "per_device_train_batch_size": args.batch, "learning_rate": 2e-4,
                "warmup_steps": 0, "logging_steps": max(args.steps, 1),
                "gradient_checkpointing": switch.get("checkpointing", False),
                "optim": switch.get("optim", "adamw_torch"),
                **({"use_liger_kernel": True} if switch.get("liger") else {})}
    overrides = {"model": folder, "task": "shakespeare", "output_dir": out, "max_seq_length": args.seq,
                 "max_eval_samples": 8, "lora": dict(LORA),
                 "training": training, "tracking.wandb": "disabled", "tracking.cka_probe_examples": 0,
                 "verification.merge_eval_batches": 1, "evaluation.base_model": False}
    if quantized:
        overrides.update({"quantization.method": "nf4", "quantization.double_quant": True,
                          "quantization.gradient_checkpointing": switch.get("checkpointing", False)})
    reset_peak()
    result = run_experiment(build_config(overrides=overrides), out, os.path.basename(out))
    eff = result.record.training_efficiency or {}
    return {"tokens_per_s": eff.get("tokens_per_s"), "peak_mem_bytes": eff.get("peak_mem_bytes"),
            "train_seconds": eff.get("train_seconds"), "status": result.status, "error": result.record.error,
            "verification_passed": result.record.verification.passed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="loraexp vs bare PEFT + Trainer on a GPU, and the switches")
    parser.add_argument("--kit", default=str(ROOT / ".gpu-kit"))
    parser.add_argument("--out", default=str(ROOT / ".gpu-kit-out"))
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 20; tiny 3)")
    parser.add_argument("--repeats", type=int, default=2, help="loraexp/bare pairs per configuration (ABBA)")
    parser.add_argument("--only", nargs="*", default=None, help="configurations to run (default: all)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or (args.steps is not None and args.steps < 1):
        parser.error(f"--steps and --repeats must be >= 1, got {args.steps} and {args.repeats}")
    os.environ.setdefault(kit.KIT_ENV, args.kit)
    if kit.kit_dir() is None:
        parser.error(f"--kit {args.kit!r} holds no GPU kit (MANIFEST.json); run scripts/gpu_kit.sh build")
    from transformers import AutoConfig

    gpu = cuda()
    args.steps = args.steps or (20 if gpu else 3)
    args.seq, args.batch = (512, 8) if gpu else (64, 4)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="loraexp-gpu-bench-"))
    rows: list[dict] = []

    def record(config: str, impl: str, shape: str, quantized: bool, figures: dict, **switch) -> None:
        cfg = AutoConfig.from_pretrained(Path(args.kit) / "models" / shape)
        flops = lora_flops_per_token(cfg, args.seq, switch.get("checkpointing", False))
        tps = figures.get("tokens_per_s") or 0.0
        row = {"config": config, "impl": impl, "shape": shape, "quantized": quantized, **switch, **figures,
               "flops_per_token": flops, "mfu_datasheet": tps * flops / H200_BF16_DENSE if gpu else None,
               "mfu_matmul": tps * flops / H200_MATMUL_MEASURED if gpu else None,
               "predicted_peak_bytes": None}
        rows.append(row)
        peak = (figures.get("peak_mem_bytes") or 0) / 2**30
        print(f"[gpu-bench] {config:<14} {impl:<8} {tps:10.0f} tok/s  peak {peak:6.2f} GiB"
              + (f"  MFU {row['mfu_datasheet']:.1%}" if gpu else ""), flush=True)

    def wanted(name: str) -> bool:
        return args.only is None or name in args.only

    for config, name, quantized in (("lora-1b", "llama-3.2-1b", False), ("qlora-3b", "llama-3.2-3b", True)):
        if not wanted(config):
            continue
        shape = kit.shape(name)
        folder = kit.random_model_dir(shape, work, "bfloat16" if gpu else "float32")
        for i in range(args.repeats):
            for impl in ("loraexp", "bare") if i % 2 == 0 else ("bare", "loraexp"):
                run = loraexp_run if impl == "loraexp" else bare
                record(config, impl, shape, quantized, run(folder, str(work / f"{config}-{impl}-{i}"), args, quantized))
    shape = kit.shape("llama-3.2-1b")
    folder = kit.random_model_dir(shape, work, "bfloat16" if gpu else "float32")
    switches = [("eager", "bare", {"attn": "eager"}), ("sdpa", "bare", {"attn": "sdpa"}),
                ("bf16-weights", "bare", {"bf16_weights": True}),
                ("padded-lima", "bare", {"packing": False}), ("packed-lima", "bare", {"packing": True}),
                ("checkpointing", "loraexp", {"checkpointing": True}),
                ("paged-adamw-8bit", "loraexp", {"optim": "paged_adamw_8bit"})]
    if gpu:  # Liger's kernels are Triton: GPU only
        switches.append(("liger", "loraexp", {"liger": True}))
    for name, impl, switch in switches:
        if not wanted(name):
            continue
        run = loraexp_run if impl == "loraexp" else bare
        try:
            figures = run(folder, str(work / f"switch-{name}"), args, False, **switch)
        except Exception as exc:  # noqa: BLE001 -- a switch that cannot run here is a row saying why
            figures = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
        record(name, impl, shape, False, figures, **switch)

    summary = {}

    def speeds(config: str, impl: str) -> list[float]:
        return [r["tokens_per_s"] for r in rows
                if r["config"] == config and r["impl"] == impl and r.get("tokens_per_s")]

    for config in ("lora-1b", "qlora-3b"):
        mine, theirs = speeds(config, "loraexp"), speeds(config, "bare")
        if mine and theirs:
            summary[config] = {"loraexp_over_bare_tokens_per_s": (sum(mine) / len(mine)) / (sum(theirs) / len(theirs)),
                               "pairs": min(len(mine), len(theirs))}
    payload = {"cuda": gpu, "tiny": kit.tiny(), "steps": args.steps, "seq": args.seq, "batch": args.batch,
               "rows": rows, "summary": summary,
               "memory_prediction": "not implemented (issue 24, part 5, open)"}
    (out / "gpu-bench.json").write_text(json.dumps(payload, indent=2, default=str))
    print("\n| config | impl | shape | tokens/s | peak GiB | MFU (989.5 TF) | MFU (790 TF) | predicted peak |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        mfu = (f"{r['mfu_datasheet']:.1%} | {r['mfu_matmul']:.1%}" if r.get("mfu_datasheet") is not None
               else "n/a (CPU) | n/a (CPU)")
        tps = f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") else r.get("error", "-")
        print(f"| {r['config']} | {r['impl']} | {r['shape']} | {tps} | {(r.get('peak_mem_bytes') or 0) / 2**30:.2f} | "
              f"{mfu} | not implemented |")
    for config, s in summary.items():
        print(f"{config}: loraexp / bare tokens/s = {s['loraexp_over_bare_tokens_per_s']:.3f} over {s['pairs']} pairs")
    print(f"[gpu-bench] wrote {out / 'gpu-bench.json'}")
    failed = [r for r in rows if r.get("status") not in (None, "completed") and r["impl"] == "loraexp"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
