"""Wall time of ``loraexp --help`` and of bad-input errors found before any model is loaded.

    .venv/bin/python benchmarks/startup_latency.py --repeats 5
    .venv/bin/python benchmarks/startup_latency.py --baseline /tmp/loraexp-before   # side by side

Each case starts a fresh ``python experiments/lora_finetune.py ...`` process (what a user
types), ``--repeats`` times; with ``--baseline CHECKOUT`` the same cases run from that other
checkout of the repository too, alternating with this one in one invocation (the machine is
noisy: compare ratios measured side by side). Prints the median and maximum seconds per case
and checks the exit code (0 for ``--help``, 2 for the errors). Target: every case < 1.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.5

# (name, arguments, expected exit code)
CASES = [
    ("--help", ["--help"], 0),
    ("unknown task", ["--task", "cola"], 2),
    ("bad value", ["--set", "lora.r=0"], 2),
    ("wrong type", ["--set", "max_seq_length=long"], 2),
    ("config file missing", ["--config", "no-such-config.yaml"], 2),
    ("data dir missing", ["--data-dir", "/no/such/data"], 2),
    ("model path missing", ["--model", "./no/such/model"], 2),
]


def time_case(checkout: Path, args: list[str], expected: int) -> float:
    """Seconds from process start to exit of one CLI call from ``checkout``.

    Raises:
        RuntimeError: the exit code is not ``expected``.
    """
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(checkout / "experiments" / "lora_finetune.py"), *args],
                          capture_output=True, text=True, env=env, cwd=checkout)
    seconds = time.perf_counter() - start
    if proc.returncode != expected:
        raise RuntimeError(f"{checkout}: {args} exited {proc.returncode}, expected {expected}:\n{proc.stderr[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="Processes per case and checkout.")
    parser.add_argument("--baseline", type=Path, help="Another checkout of loraexp to time side by side.")
    args = parser.parse_args()
    checkouts = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for name, argv, expected in CASES:
            for label, checkout in checkouts.items():  # alternating, so both see the same machine load
                times.setdefault((label, name), []).append(time_case(checkout, argv, expected))
    header = f"{'case':<22}" + "".join(f"{label + ' median':>17}{label + ' max':>14}" for label in checkouts)
    print(header + ("   ratio" if args.baseline else ""))
    worst = 0.0
    for name, _, _ in CASES:
        row = f"{name:<22}"
        for label in checkouts:
            values = times[(label, name)]
            row += f"{statistics.median(values):>15.2f} s{max(values):>12.2f} s"
        if args.baseline:
            row += f"{statistics.median(times[('baseline', name)]) / statistics.median(times[('this', name)]):>7.1f}x"
        worst = max(worst, max(times[("this", name)]))
        print(row)
    print(f"slowest call of this checkout: {worst:.2f} s (target < {TARGET_S} s): "
          f"{'met' if worst < TARGET_S else 'NOT met'}; {args.repeats} processes per case")
    return 0


if __name__ == "__main__":
    sys.exit(main())
