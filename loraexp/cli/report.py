"""``loraexp report SWEEP_DIR [--confirm]``: write a sweep's report; with ``--confirm``, first
train the advised adapter with the sweep's seeds and compare it with its source.

Exit codes: 0 report written (and the confirmation's runs completed); 1 a confirmation run
failed or could not be compared (the report says so), or the sweep directory could not be
read or written; 2 bad input (not a sweep directory, ``--energy`` outside (0, 1],
``--confirm`` without an advice), before any training.
"""

from __future__ import annotations

import argparse
import sys

from loraexp.errors import ConfigError, LoraexpError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loraexp report",
        description="Write report.md, report.html and figures/*.png for a sweep directory: the metric against the "
                    "ablated axis with seed intervals, loss curves, rank use, ΔW spectra, subspace similarity, "
                    "representation drift (CKA), efficiency, and the rank advice.")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="The sweep directory (<output_dir>/<sweep name>).")
    p.add_argument("--energy", type=float, default=0.9,
                   help="Rank advice: fraction of each module's ||ΔW||_F^2 the advised rank keeps (0 < f <= 1; "
                        "default 0.9).")
    p.add_argument("--confirm", action="store_true",
                   help="Train the advised adapter with the sweep's seeds (in SWEEP_DIR/confirm/, skipping runs "
                        "already completed) and report its difference to the configuration it was read from.")
    p.add_argument("--rerun", action="store_true", help="With --confirm: train the advised runs again.")
    p.add_argument("--wandb", choices=("online", "offline", "disabled"), default=None,
                   help="Also log the report to W&B as a summary run of the sweep's group (default: the sweep's "
                        "tracking.wandb).")
    p.add_argument("--verbose", action="store_true", help="Show third-party warnings and log messages.")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``loraexp report``."""
    args = build_parser().parse_args(argv)
    from loraexp.cli import console

    console.configure(verbose=args.verbose)
    try:
        if not 0 < args.energy <= 1:
            raise ConfigError(f"`--energy` must be in (0, 1], got {args.energy!r}")
        return run_report(args.sweep_dir, energy=args.energy, confirm=args.confirm, rerun=args.rerun,
                          wandb_mode=args.wandb)
    except LoraexpError as exc:
        print(f"loraexp report: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the sweep directory cannot be written (permissions, full disk)
        print(f"loraexp report: error: cannot read or write the sweep directory: {exc}", file=sys.stderr)
        return 1


def run_report(sweep_dir: str, energy: float = 0.9, confirm: bool = False, rerun: bool = False,
               wandb_mode: str | None = None, comparison=None) -> int:
    """Write the report (after the confirmation runs, with ``confirm``) and print where it is.

    ``comparison``: the sweep's :class:`~loraexp.results.comparison.Comparison` when just computed.

    Raises:
        ConfigError: not a sweep directory; ``confirm`` without an advice.
    """
    from loraexp.report.build import write_report
    from loraexp.report.sweep_data import load_sweep

    data = load_sweep(sweep_dir, comparison=comparison)
    code, advice = 0, None
    if confirm:
        from loraexp.report.advice import sweep_advice
        from loraexp.report.build import confirmation_text
        from loraexp.report.confirm import confirm_advice

        advice = sweep_advice(data, energy)
        if advice is None:
            raise ConfigError(f"`--confirm`: {sweep_dir} has no rank advice (no completed plain LoRA, rsLoRA, DoRA or "
                              "LoRA+ configuration with recorded spectra), so there is nothing to confirm")
        result = confirm_advice(data, advice, rerun=rerun)
        print(confirmation_text(result))
        code = 0 if result["status"] == "completed" else 1
    report = write_report(sweep_dir, energy=energy, data=data, advice=advice)
    print(f"Report: {report.html_path}\n  (report.md and {len(report.figures)} figures in figures/ beside it)")
    from loraexp.report.wandb_summary import log_report

    log_report(report, wandb_mode)
    return code
