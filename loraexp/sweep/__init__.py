"""Layer 7, many runs: expansion into named runs (:mod:`.expand`, :mod:`.axes`), pre-flight before any
model loads (:mod:`.preflight`), the local runner (:mod:`.runner`), successive halving
(:mod:`.pruning`), the metric a sweep optimises (:mod:`.metric`) and the scheduler backends: Optuna
(:mod:`.optuna_backend`) and W&B grid sweeps (:mod:`.wandb_sweep`, :mod:`.grid`)."""
