"""Whether a run directory holds this config's finished result, and the proof a run records
when it finishes (docs/reliability.md,
"Completion is proven" and "Identity covers what determines the result").

Decided inside the run's lock (:func:`loraexp.sweep.runner.run_unless_done`), from what is on disk,
not from the status alone: a run is skipped only when ``metrics.json`` says ``completed``, the
directory's ``config.yaml`` has this config's identity, the data files have the fingerprint the
run was trained on, and the files the run produced are there (the adapter with the SHA-256
recorded at the end of the run, ``predictions.npz``, ``merged/``).
"""

from __future__ import annotations

from dataclasses import dataclass

from loraexp.config.schema import ExperimentConfig
from loraexp.errors import ConfigError
from loraexp.results.record import STATUS_COMPLETED, RunRecord
from loraexp.results.storage import RunStore

ADAPTER_FILE = "adapter_model.safetensors"


@dataclass
class Decision:
    """``action``: ``run`` or ``skip``; ``reason``: why a run recorded ``completed`` is run
    again (its adapter is missing...), else None."""

    action: str
    reason: str | None = None


def identity_conflict(store: RunStore, cfg: ExperimentConfig) -> str | None:
    """The message when ``store``'s ``config.yaml`` holds a config with another identity than
    ``cfg`` (another sweep of the same name, or changed settings), else None."""
    from loraexp.config.load import build_config

    saved = store.read_config()
    if saved is None:  # config.yaml missing or unreadable: the record holds the config too
        record = store.read_record()
        saved = record.config if record is not None and record.config else None
    if saved is None:
        return None
    try:
        saved_id = build_config(saved).run_id
    except ConfigError:
        saved_id = "unreadable"
    if saved_id == cfg.run_id:
        return None
    return (f"run directory {str(store.run_dir)!r} holds a different config (run_id {saved_id} != {cfg.run_id}); "
            "set another `output_dir` or `sweep.name`, or delete that directory")


def data_conflict(store: RunStore, record: RunRecord | None, fingerprint: str | None) -> str | None:
    """The message when ``record`` (completed) was trained on data files with another
    fingerprint than ``fingerprint`` (:func:`~loraexp.tasks.fingerprint.data_fingerprint`), else
    None. A record without a fingerprint (schema < 6) is not compared."""
    recorded = record.resolved.data_fingerprint if record is not None and record.resolved else None
    if record is None or record.status != STATUS_COMPLETED or not recorded or not fingerprint:
        return None
    if recorded == fingerprint:
        return None
    return (f"the data files changed since run {str(store.run_dir)!r} was trained (fingerprint {recorded} then, "
            f"{fingerprint} now; data_dir {record.resolved.data_dir!r}); its results are not this data's: rerun with "
            "--rerun to train every run again, or set another `sweep.name`")


def completion_problem(store: RunStore, record: RunRecord) -> str | None:
    """Why a run whose ``metrics.json`` says ``completed`` does not hold its result on disk
    (None when it does): a LoRA run's ``adapter/adapter_model.safetensors`` is missing or is not
    the file evaluated (SHA-256 against ``completion.adapter_sha256``; not recorded before
    schema 6); ``predictions.npz`` or ``merged/`` it recorded is missing."""
    from loraexp.tasks.fingerprint import file_sha256

    run_dir = store.run_dir
    lora = (record.config or {}).get("method", "lora") != "full"
    if lora:
        adapter = store.adapter_dir / ADAPTER_FILE
        if not adapter.is_file():
            return f"its adapter ({adapter.relative_to(run_dir)}) is missing"
        expected = record.completion.adapter_sha256
        if expected and file_sha256(adapter) != expected:
            return f"its adapter ({adapter.relative_to(run_dir)}) is not the one the run evaluated (SHA-256 differs)"
    if record.predictions_file and not (run_dir / record.predictions_file).is_file():
        return f"its {record.predictions_file} is missing"
    if record.merged_dir and not (run_dir / "merged").is_dir():
        return "its merged model (merged/) is missing"
    return None


def decide(store: RunStore, cfg: ExperimentConfig, fingerprint: str | None, rerun: bool = False) -> Decision:
    """Skip the run only when the directory holds this config's completed, intact result on
    today's data; hold the run's lock while calling this.

    Raises:
        ConfigError: the directory holds another config, or (without ``rerun``) a result
            trained on data files that have changed since.
        OSError: the adapter file exists but cannot be read for its SHA-256.
    """
    conflict = identity_conflict(store, cfg)
    if conflict:
        raise ConfigError(conflict)
    record = store.read_record()
    if rerun or record is None or record.status != STATUS_COMPLETED:
        return Decision("run")
    changed = data_conflict(store, record, fingerprint)
    if changed:
        raise ConfigError(changed)
    problem = completion_problem(store, record)
    return Decision("skip") if problem is None else Decision("run", f"recorded completed, but {problem}")


def prove_completion(record: RunRecord, store: RunStore, cfg: ExperimentConfig, adapter_on_disk: bool = True) -> None:
    """Fill ``record.completion`` (:class:`~loraexp.results.record.Completion`) at the end of a run:
    every planned optimizer step trained (a Trainer that returned early -- a callback's
    ``should_training_stop``, transformers' own SIGTERM handling -- is not a finished run), the
    evaluation produced metrics, and, for a LoRA run, the adapter file on disk is the one
    evaluated: its SHA-256 is recorded (what :func:`completion_problem` compares later), and the
    reload check (or, for a quantized base, the merge check, which loads ``adapter/`` into a
    full-precision base) reproduced the evaluated model's outputs from it. What is missing goes
    to ``completion.problems``. ``adapter_on_disk`` False (a rank other than 0, which saves
    nothing) skips the adapter part.

    Raises:
        OSError: the adapter file exists but cannot be read.
    """
    from loraexp.config.methods import is_lora
    from loraexp.tasks.fingerprint import file_sha256

    completion, verification = record.completion, record.verification
    problems = completion.problems
    if completion.planned_steps is None or completion.trained_steps != completion.planned_steps:
        problems.append(f"trained {completion.trained_steps} of {completion.planned_steps} planned optimizer "
                        "steps (the Trainer stopped early)")
    completion.evaluated = bool(record.eval)
    if not completion.evaluated:
        problems.append("the evaluation produced no metrics")
    if not is_lora(cfg.method) or not adapter_on_disk:
        return
    adapter = store.adapter_dir / ADAPTER_FILE
    if not adapter.is_file():
        problems.append(f"no adapter file {adapter}")
        return
    completion.adapter_sha256 = file_sha256(adapter)
    if "reload" not in verification.not_applicable:
        completion.adapter_verified_by = "reload check" if verification.reload.passed else None
    elif cfg.quantization.method != "none":
        completion.adapter_verified_by = "quantized merge check" if verification.merge.passed else None
    else:  # LoftQ: the adapter needs its own quantized residual base; the file's hash is the proof kept
        completion.adapter_verified_by = f"none: {verification.not_applicable['reload']}"
