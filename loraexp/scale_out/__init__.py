"""Scheduler integrations (docs/scale-out.md): a sweep's runs as a parameter grid
(:mod:`.grid`), exported as a W&B grid sweep (:mod:`.wandb_sweep`) whose agent calls one
trial (:mod:`.trial_cli`), or pulled by workers from a shared Optuna study
(:mod:`.optuna_backend`). loraexp adds no scheduler of its own."""
