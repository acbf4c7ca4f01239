"""Factor-space vs dense SVD of ΔW on Llama-7B-shaped adapters (4096 x 4096, r = 16).

Prints the speed-up (target >= 100x) and the max relative difference of the r non-zero
singular values (target <= 1e-6). Both paths compute in float64; the dense path is also
timed in float32, the usual cheaper choice, so the speed-up is not inflated by precision.

    .venv/bin/python benchmarks/svd_speed.py [--m 4096] [--n 4096] [--r 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from loraexp.analysis.svd import factor_singular_values, lora_scaling


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=4096, help="out_features")
    parser.add_argument("--n", type=int, default=4096, help="in_features")
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    # Factors shaped like a trained adapter: A from PEFT's kaiming-uniform init, B moved off zero.
    a = torch.nn.init.kaiming_uniform_(torch.empty(args.r, args.n), a=5 ** 0.5)
    b = 0.01 * torch.randn(args.m, args.r)
    s = lora_scaling(2 * args.r, args.r)

    factor_s = best_of(lambda: factor_singular_values(a, b, s), max(args.repeats, 10))
    dense64_s = best_of(lambda: torch.linalg.svdvals(s * (b.double() @ a.double())), args.repeats)
    dense32_s = best_of(lambda: torch.linalg.svdvals(s * (b @ a)), args.repeats)

    factor = factor_singular_values(a, b, s)
    dense = torch.linalg.svdvals(s * (b.double() @ a.double()))[: args.r]
    rel = ((factor - dense).abs() / dense).max().item()

    print(f"shape ΔW {args.m} x {args.n}, r = {args.r}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"factor-space (QR + {args.r}x{args.r} SVD, float64): {factor_s * 1e3:.2f} ms")
    print(f"dense svdvals float64: {dense64_s:.2f} s   float32: {dense32_s:.2f} s")
    print(f"speed-up vs dense float64: {dense64_s / factor_s:,.0f}x   vs dense float32: {dense32_s / factor_s:,.0f}x")
    print(f"max relative difference of singular values: {rel:.2e}")
    print(f"targets: speed-up >= 100x {'MET' if dense32_s / factor_s >= 100 else 'MISSED'}; "
          f"rel. diff <= 1e-6 {'MET' if rel <= 1e-6 else 'MISSED'}")


if __name__ == "__main__":
    main()
