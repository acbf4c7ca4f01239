"""Print the per-run SQuAD 2.0 figures of a sweep directory beside the always-no-answer
baseline and the untrained head (benchmarks/README.md, "SQuAD 2.0 rank ablation").

Usage: python benchmarks/squad_v2_table.py SWEEP_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(sweep_dir: str) -> int:
    runs = sorted(p.parent for p in Path(sweep_dir).glob("*/metrics.json"))
    if not runs:
        print(f"{sweep_dir}: no run with a metrics.json", file=sys.stderr)
        return 2
    head = ["run", "status", "verified", "exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_f1", "best_f1 (thresh)",
            "untrained head f1 / HasAns_f1", "no-answer f1", "loss fell %", "train s", "run s"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for run in runs:
        m = json.loads((run / "metrics.json").read_text())
        e, b = m.get("eval") or {}, m.get("base_eval") or {}
        conv = (m.get("verification") or {}).get("convergence") or {}

        def f(d, k, spec=".2f"):
            return format(d[k], spec) if isinstance(d.get(k), (int, float)) else "–"

        cells = [run.name, m["status"], str((m.get("verification") or {}).get("passed")), f(e, "exact"), f(e, "f1"),
                 f(e, "HasAns_exact"), f(e, "HasAns_f1"), f(e, "NoAns_f1"),
                 f"{f(e, 'best_f1')} ({f(e, 'best_f1_thresh')})", f"{f(b, 'f1')} / {f(b, 'HasAns_f1')}",
                 f(e, "no_answer_f1"), f(conv, "loss_decrease_pct", ".1f"),
                 f(m.get("training_efficiency") or {}, "train_seconds", ".0f"), f(m, "wall_seconds", ".0f")]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]) if len(sys.argv) == 2 else print(__doc__) or 2)
