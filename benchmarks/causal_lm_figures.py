"""Print the causal-LM / QLoRA figures of the README from the runs of causal_lm_runs.sh.

    python benchmarks/causal_lm_figures.py [--results results/causal_lm]

Each figure is read from the runs' metrics.json; a missing run is reported as missing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHAKESPEARE = "shakespeare-single/shakespeare-smollm2-135m-r8-a16-attention-lr1e-3-s42"
QLORA = "shakespeare-single/shakespeare-smollm2-135m-r8-a16-attention-nf4dq-lr1e-3-s42"
SST2 = "sst2-single/sst2-smollm2-135m-r8-a16-attention-lr1e-3-s42"
GSM8K = "gsm8k-single/gsm8k-smollm2-135m-r16-a32-all-linear-lr5e-4-s42"
QUANT_SWEEP = "shakespeare-ablation-quantization"


def load(root: Path, run: str) -> dict | None:
    """A finished run's metrics (None if missing, still running or failed before evaluation)."""
    path = root / run / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else None
    return metrics if metrics and "eval" in metrics else None


def efficiency(m: dict) -> str:
    e = m.get("training_efficiency", {})
    return (f"{e.get('optimizer_steps')} steps in {e.get('train_seconds', 0):.0f} s, "
            f"{e.get('tokens_per_s', 0):.0f} tokens/s, peak memory {e.get('peak_mem_bytes', 0) / 2**30:.2f} GiB "
            f"({e.get('peak_mem_kind')}), base weights {e.get('base_weight_bytes', 0) / 2**20:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results/causal_lm")
    root = Path(parser.parse_args().results)

    lora, qlora = load(root, SHAKESPEARE), load(root, QLORA)
    if lora:
        base, tuned = lora["base_eval"]["perplexity"], lora["eval"]["perplexity"]
        print(f"shakespeare LoRA r=8 attention [{lora['status']}]: held-out perplexity base {base:.2f} -> "
              f"{tuned:.2f} ({100 * (1 - tuned / base):.1f}% lower; target >= 30%); loss {lora['eval']['loss']:.4f}")
        print(f"  {efficiency(lora)}")
    else:
        print(f"shakespeare LoRA: missing ({root / SHAKESPEARE})")
    if qlora:
        print(f"shakespeare QLoRA nf4+dq [{qlora['status']}]: held-out loss {qlora['eval']['loss']:.4f}, perplexity "
              f"{qlora['eval']['perplexity']:.2f} (4-bit base {qlora['base_eval']['perplexity']:.2f}); merge max |dp| "
              f"{qlora['verification']['merge'].get('max_abs_diff') or float('nan'):.2e}, quantization gap max |dp| "
              f"{qlora['verification']['merge'].get('quantization_gap_max_abs_diff') or float('nan'):.3f}")
        if lora:
            ratio = qlora["eval"]["loss"] / lora["eval"]["loss"]
            print(f"  QLoRA / LoRA held-out loss: {ratio:.4f} ({100 * (ratio - 1):+.2f}%; target within 5%)")
        print(f"  {efficiency(qlora)}")
    else:
        print(f"shakespeare QLoRA: missing ({root / QLORA})")

    sst2 = load(root, SST2)
    if sst2:
        print(f"sst2 verbalizer [{sst2['status']}]: dev accuracy {sst2['eval']['accuracy']:.4f} "
              f"(target >= 0.75); base model zero-shot {sst2['base_eval']['accuracy']:.4f}")
        print(f"  {efficiency(sst2)}")
    else:
        print(f"sst2: missing ({root / SST2})")

    summary = root / QUANT_SWEEP
    runs = sorted(p for p in summary.iterdir() if p.is_dir()) if summary.is_dir() else []
    rows = {}
    for metrics in filter(None, (load(summary, p.name) for p in runs)):
        q = metrics["config"]["quantization"]
        rows[q["method"] + ("+dq" if q["double_quant"] else "")] = metrics
    if rows:
        full = rows.get("none", {}).get("training_efficiency", {}).get("base_weight_bytes")
        print("quantization ablation (same model, data, LoRA; 20 steps):")
        for name, m in rows.items():
            e = m.get("training_efficiency", {})
            share = f"{100 * e['base_weight_bytes'] / full:.1f}% of full precision" if full else ""
            print(f"  {name:8s} [{m['status']}] base weights {e.get('base_weight_bytes', 0):,} B {share}; peak memory "
                  f"{e.get('peak_mem_bytes', 0) / 2**30:.2f} GiB; held-out loss {m.get('eval', {}).get('loss', 0):.4f}")
    else:
        print(f"quantization ablation: missing ({summary})")

    gsm8k = load(root, GSM8K)
    if gsm8k:
        base, adapter = gsm8k["base_eval"], gsm8k["eval"]
        print(f"gsm8k [{gsm8k['status']}]: exact match on {adapter['generation_samples']} test questions: "
              f"base {base['exact_match']:.2f} (flexible {base['exact_match_flexible']:.2f}), "
              f"adapter {adapter['exact_match']:.2f} (flexible {adapter['exact_match_flexible']:.2f})")
    else:
        print(f"gsm8k: missing ({root / GSM8K})")


if __name__ == "__main__":
    main()
