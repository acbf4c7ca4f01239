"""Print the figures of benchmarks/README.md, "Research question (issue 10)", from the sweep
directories written by benchmarks/research_question.sh.

Usage: .venv/bin/python benchmarks/research_question_figures.py [OUTPUT_DIR]

For each sweep: the runs' statuses and verification, the sum of their wall times (seconds,
from metrics.json: model loading, training, evaluation and checks; process start-up not
included), and the configurations' comparison exactly as the summary computes it
(loraexp.results.comparison with the sweep's own settings).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from loraexp.config.load import build_config
from loraexp.results.comparison import Settings, compare, render_markdown
from loraexp.results.storage import RunStore
from loraexp.sweep.expand import expand
from loraexp.sweep.metric import sweep_metric

# (sweep directory, the command's settings as dotted keys; the run names come from expand())
SWEEPS = {
    "sst2 method ablation": ("sst2-2k", {"task": "sst2", "sweep.mode": "ablation", "sweep.ablation_type": "method",
                                         "sweep.seeds": [42, 1337, 2024], "max_train_samples": 2000}),
    "sst2 rank ablation + full": ("sst2-2k", {"task": "sst2", "sweep.mode": "ablation", "sweep.ablation_type": "rank",
                                              "sweep.seeds": [42, 1337, 2024], "sweep.baseline": "full",
                                              "max_train_samples": 2000}),
    "mrpc rank ablation + full": ("mrpc-ablation-rank", {"task": "mrpc", "sweep.mode": "ablation",
                                                         "sweep.ablation_type": "rank", "sweep.seeds": [42, 1337, 2024],
                                                         "sweep.baseline": "full"}),
}


def main(root: Path) -> None:
    for title, (directory, overrides) in SWEEPS.items():
        sweep_dir = root / directory
        if not sweep_dir.is_dir():
            print(f"## {title}: {sweep_dir} not found\n")
            continue
        cfg = build_config(overrides=overrides)
        names = [name for name, _ in expand(cfg)]
        records = [(name, RunStore(sweep_dir / name).read_record()) for name in names]
        done = [r for _, r in records if r is not None]
        statuses = Counter(r.status for r in done)
        verified = sum(1 for r in done if r.verification.passed)
        wall = sum(r.wall_seconds or 0.0 for r in done)
        print(f"## {title} ({sweep_dir})")
        print(f"runs: {len(names)}, found: {len(done)}, statuses: {dict(statuses)}, verification passed: {verified}")
        print(f"sum of run wall times: {wall:.0f} s ({wall / 60:.1f} min)")
        merges = [r.verification.merge.max_abs_diff for r in done if r.verification.merge.max_abs_diff is not None]
        reloads = [r.verification.reload.max_abs_diff for r in done if r.verification.reload.max_abs_diff is not None]
        if merges:
            print(f"merge max |dlogit| over LoRA runs: {max(merges):.3g}; reload max |dlogit|: {max(reloads):.3g}")
        print()
        print(render_markdown(compare(sweep_dir, records, Settings.from_config(cfg, sweep_metric(cfg)[0]))))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/research_question"))
