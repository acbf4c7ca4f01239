"""Print the figures behind benchmarks/README.md, "Sweep reports (issue 11)", from the sweeps
benchmarks/report_sweeps.sh wrote: each report's summary (best configuration, verdicts,
pairwise differences, subspace similarity against its random baseline, CKA, rank advice and
its confirmation), the per-layer φ(1, 1) of the rank pair and the per-layer CKA.

    python benchmarks/report_figures.py [OUTPUT_DIR]      # default results/report_sweeps
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(out: Path) -> None:
    from loraexp.report.figures import all_figures
    from loraexp.report.sweep_data import load_sweep

    for sweep in ("sst2-rank", "sst2-method"):
        path = out / sweep
        if not (path / "report.md").is_file():
            print(f"{path}: no report.md (run benchmarks/report_sweeps.sh first)")
            continue
        text = (path / "report.md").read_text()
        summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0].split("```yaml")[0]
        print(f"=== {sweep}: summary of report.md ===\n{summary.strip()}\n")
        data = load_sweep(path)
        for figure in all_figures(data, Path("/tmp") / f"report_figures_{sweep}"):
            if figure.name.startswith("subspace"):
                print(f"{figure.name}: φ(1, 1) per layer (random 1/d = {figure.facts['random_phi_11']:.4f}):")
                for kind, layers in figure.facts["phi_11_per_layer"].items():
                    print(f"  {kind}: " + ", ".join(f"L{k} {v:.3f}" for k, v in layers.items()))
            if figure.name == "cka":
                print("CKA per layer (embeddings first), mean over seeds:")
                for c in data.configurations:
                    if c.key in figure.facts:
                        print(f"  {data.label(c)}: " + ", ".join(f"{v:.3f}" for v in figure.facts[c.key]))
        print()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/report_sweeps"))
