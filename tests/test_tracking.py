"""W&B wiring: mode, group per sweep, resolved config, DESIGN.md key namespaces; W&B failures
(online init, offline init, calls inside a run) never end a run."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from types import SimpleNamespace

import pytest
from wandb.errors import AuthenticationError, CommError
from wandb_offline import history, offline_run_log

from loraexp.config.load import build_config
from loraexp.run import tracking
from loraexp.run.tracking import DEFAULT_INIT_TIMEOUT_S, NoOpTracker, WandbTracker, make_tracker
from loraexp.sweep.runner import run_sweep

RUN_CALLS = ("log", "summary", "table", "finish")


class FakeSummary(dict):
    def __init__(self, error=None):
        super().__init__()
        self.error = error

    def update(self, metrics):
        if self.error:
            raise self.error
        super().update(metrics)


class FakeRun:
    """A ``wandb.Run`` double; ``raises`` maps a call (one of :data:`RUN_CALLS`) to the error it raises."""

    def __init__(self, raises=None, **init):
        self.raises = raises or {}
        self.init, self.logged, self.exit_code, self.defined = init, [], None, []
        self.summary = FakeSummary(self.raises.get("summary"))
        self.settings = SimpleNamespace(sync_dir=os.path.join(str(init.get("dir")), "wandb", "offline-run-x"))

    def define_metric(self, name, step_metric=None):
        self.defined.append((name, step_metric))

    def log(self, metrics, step=None):
        if "log" in self.raises and not any(getattr(v, "kind", None) for v in metrics.values()):
            raise self.raises["log"]
        self.logged.append((step, dict(metrics)))

    def finish(self, exit_code=0):
        if "finish" in self.raises:
            raise self.raises["finish"]
        self.exit_code = exit_code


class FakeWandb(list):
    """The started runs; ``calls``: the kwargs of every ``wandb.init`` (failed ones too); ``init_errors``:
    mode -> the error ``wandb.init`` raises in it; ``run_errors``: passed to each run as ``raises``."""

    def __init__(self):
        super().__init__()
        self.calls, self.init_errors, self.run_errors = [], {}, {}

    def modes(self):
        return [call["mode"] for call in self.calls]


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """No online failure recorded yet in this "process", no user init timeout."""
    monkeypatch.setattr(tracking, "_online_failure", None)
    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)


@pytest.fixture
def fake_wandb(monkeypatch):
    runs = FakeWandb()

    def init(**kwargs):
        runs.calls.append(kwargs)
        if kwargs["mode"] in runs.init_errors:
            raise runs.init_errors[kwargs["mode"]]
        runs.append(FakeRun(raises=runs.run_errors, **kwargs))
        return runs[-1]

    def line(table, x, y, stroke=None, title=""):
        if "table" in runs.run_errors:
            raise runs.run_errors["table"]
        return SimpleNamespace(kind="line", table=table, x=x, y=y, stroke=stroke, title=title)

    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(
        init=init, Table=lambda columns, data: SimpleNamespace(kind="table", columns=columns, data=data),
        plot=SimpleNamespace(line=line), Settings=lambda **kw: SimpleNamespace(kind="settings", **kw)))
    return runs


def tracker_for(mode="online", name="n", directory="."):
    return make_tracker(mode, project="p", entity=None, group="g", name=name, config={}, directory=directory)


@pytest.mark.parametrize("mode,main_process,expected,used", [
    ("disabled", True, NoOpTracker, "disabled"), ("offline", False, NoOpTracker, "disabled"),
    ("offline", True, WandbTracker, "offline"),
    ("online", True, WandbTracker, "offline"),  # the suite's WANDB_MODE=offline (conftest.py) wins
])
def test_make_tracker(fake_wandb, mode, main_process, expected, used):
    tracker = make_tracker(mode, project="p", entity=None, group="g", name="n", config={}, directory=".",
                           is_main_process=main_process)
    assert isinstance(tracker, expected)
    assert tracker.mode == used


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "loraexp.run.tracking" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("error,cause", [
    (CommError('Timed out while retrying: Post "http://127.0.0.1:9/graphql": connection refused\n'
               "Consider increasing the init_timeout setting"), "CommError: Timed out while retrying"),
    (AuthenticationError("API key must be 40 characters long, yours was 3"), "AuthenticationError: API key"),
    (RuntimeError("wandb-core exited"), "RuntimeError: wandb-core exited"),
])
def test_online_init_failure_goes_offline_and_later_runs_skip_the_server(fake_wandb, monkeypatch, caplog, error,
                                                                          cause):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    fake_wandb.init_errors["online"] = error
    with caplog.at_level(logging.WARNING, logger="loraexp.run.tracking"):
        first = tracker_for(name="run1", directory="/runs/run1")
        (warning,) = warnings_of(caplog)
        assert cause in warning and "run1" in warning and "`wandb sync /runs/run1/wandb/offline-run-x`" in warning
        assert "Consider" not in warning  # wandb's advice line is left out of the cause
        assert first.mode.startswith(f"offline (fallback: {cause}")
        assert fake_wandb.modes() == ["online", "offline"]
        first.log({"train/loss": 1.0}, step=1)
        assert fake_wandb[0].logged == [(1, {"train/global_step": 1, "train/loss": 1.0})]

        caplog.clear()
        second = tracker_for(name="run2", directory="/runs/run2")
        (warning,) = warnings_of(caplog)
        assert "\n" not in warning and "run2" in warning and "`wandb sync /runs/run2/wandb/offline-run-x`" in warning
    assert fake_wandb.modes() == ["online", "offline", "offline"]  # no second try of the server
    assert second.mode.startswith("offline (fallback: online init failed earlier in this process: " + cause)


@pytest.mark.parametrize("env,passed", [(None, DEFAULT_INIT_TIMEOUT_S), ("120", None)])
def test_online_init_timeout_is_bounded_unless_the_user_sets_one(fake_wandb, monkeypatch, env, passed):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    if env is not None:
        monkeypatch.setenv("WANDB_INIT_TIMEOUT", env)
    tracker = tracker_for("online")
    assert tracker.mode == "online"
    (call,) = fake_wandb.calls
    assert (call["settings"].init_timeout if "settings" in call else None) == passed  # else wandb reads the env
    tracker_for("offline")
    assert "settings" not in fake_wandb.calls[1]  # offline waits for no server


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_offline_init_failure_leaves_the_run_untracked(fake_wandb, monkeypatch, caplog, mode):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    fake_wandb.init_errors.update(online=CommError("no route to host"),
                                  offline=PermissionError(13, "Permission denied", "/runs/run1/wandb"))
    with caplog.at_level(logging.WARNING, logger="loraexp.run.tracking"):
        tracker = tracker_for(mode, name="run1")
    assert isinstance(tracker, NoOpTracker)
    assert tracker.mode.startswith("disabled (fallback: ") and "PermissionError" in tracker.mode
    assert ("CommError: no route to host" in tracker.mode) == (mode == "online")
    (warning,) = warnings_of(caplog)
    assert "run1" in warning and "Permission denied" in warning
    tracker.log({"x": 1})
    tracker.finish()


@pytest.mark.parametrize("failing", [(call,) for call in RUN_CALLS] + [RUN_CALLS])
def test_failing_calls_inside_a_run_are_logged_once_and_never_raise(fake_wandb, caplog, failing):
    fake_wandb.run_errors.update({call: OSError(f"{call}: wandb-core is gone") for call in failing})
    tracker = tracker_for("offline", name="run1")
    with caplog.at_level(logging.DEBUG, logger="loraexp.run.tracking"):
        for step in range(3):
            tracker.log({"train/loss": 1.0}, step=step)
            tracker.table("t", ["a"], [[1]], line=("a", "a", "title"))
            tracker.summary({"eval/accuracy": 0.5})
        tracker.finish(exit_code=0)
    (warning,) = warnings_of(caplog)
    assert f"W&B {'table t' if failing[0] == 'table' else failing[0]} failed in run run1" in warning
    assert "wandb-core is gone" in warning
    assert tracker.failures == sum(1 if call == "finish" else 3 for call in failing)
    run = fake_wandb[0]
    assert (run.exit_code is None) == ("finish" in failing)
    assert bool(run.summary) == ("summary" not in failing)


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once closed: connecting to it is refused


def test_real_wandb_online_init_against_a_closed_port_goes_offline_in_bounded_time(tmp_path, monkeypatch, caplog,
                                                                                    closed_port):
    """Real wandb 0.31 (its wandb-core service), no server: online init is refused, retried until
    WANDB_INIT_TIMEOUT (5 s here) and raises CommError; the run logs offline. About 7 s."""
    import wandb

    for key, value in {"WANDB_BASE_URL": f"http://127.0.0.1:{closed_port}", "WANDB_API_KEY": "f" * 40,
                       "WANDB_INIT_TIMEOUT": "5", "WANDB_DIR": str(tmp_path / "wandb-dir"),
                       "WANDB_CONFIG_DIR": str(tmp_path / "config"), "WANDB_CACHE_DIR": str(tmp_path / "cache"),
                       "WANDB_DATA_DIR": str(tmp_path / "data"), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    wandb.teardown()  # wandb reads the environment once per process setup
    run_dir = tmp_path / "run1"
    run_dir.mkdir()
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="loraexp.run.tracking"):
            tracker = tracker_for("online", name="run1", directory=str(run_dir))
        elapsed = time.monotonic() - started
        assert tracker.mode.startswith("offline (fallback: CommError: ") and "connection refused" in tracker.mode
        assert elapsed < 20, elapsed
        (warning,) = warnings_of(caplog)
        assert f"`wandb sync {tracker.sync_dir}`" in warning and tracker.sync_dir.startswith(str(run_dir))
        tracker.log({"train/loss": 0.5}, step=1)
        tracker.finish()
        assert tracker.failures == 0
        rows = history(offline_run_log(run_dir))
        assert [row["train/loss"] for row in rows] == [0.5]
    finally:
        wandb.teardown()  # later tests set W&B up from their own environment


def test_sweep_runs_share_a_group_and_log_design_namespaces(fake_wandb, tiny_bert_dir, tiny_sst2_dir, tmp_path):
    cfg = build_config(overrides={
        "model": tiny_bert_dir, "data_dir": tiny_sst2_dir, "output_dir": str(tmp_path), "tracking.wandb": "offline",
        "training.max_steps": 4, "training.per_device_train_batch_size": 8, "tracking.stats_every_steps": 2,
        "training.logging_steps": 1,
        "verification.latency_repeats": 1, "sweep.mode": "ablation", "sweep.ablation_type": "rank",
        "sweep.ranks": [2, 4]})
    result = run_sweep(cfg, progress=False)
    assert [r.status for r in result.runs] == ["completed", "completed"]
    assert len(fake_wandb) == 2
    assert {run.init["group"] for run in fake_wandb} == {"sst2-ablation-rank"}
    assert [run.init["config"]["lora"]["r"] for run in fake_wandb] == [2, 4]  # resolved config as wandb.config
    assert all(run.init["mode"] == "offline" and run.init["dir"] == str(r.run_dir)
               for run, r in zip(fake_wandb, result.runs))
    logged = {k for _, metrics in fake_wandb[0].logged for k in metrics}
    assert {"train/loss", "train/learning_rate", "eval/accuracy"} <= logged
    assert any(k.startswith("lora_adapters/") and k.endswith("/delta_norm") for k in logged)
    assert any(k.startswith("lora_rank/") and k.endswith("/effective_rank") for k in logged)
    summary = fake_wandb[0].summary
    for key in ("efficiency/trainable_params", "efficiency/trainable_pct", "verification/frozen_base/passed",
                "verification/grad_flow/passed", "verification/merge/max_abs_diff", "verification/passed",
                "training_efficiency/samples_per_s",
                "training_efficiency/tokens_per_s", "training_efficiency/peak_mem_bytes", "eval/accuracy"):
        assert key in summary, key
    assert fake_wandb[0].exit_code == 0
    # the dashboard: every per-step chart on the optimizer-step axis, spectra and CKA as tables and charts
    assert fake_wandb[0].defined == [("train/global_step", None), ("*", "train/global_step")]
    stepped = [(step, metrics) for step, metrics in fake_wandb[0].logged if step is not None]
    assert stepped and all(metrics["train/global_step"] == step for step, metrics in stepped)
    tables = {k: v for _, metrics in fake_wandb[0].logged for k, v in metrics.items()
              if getattr(v, "kind", None) in ("table", "line")}
    spectra, cka = tables["lora_rank/singular_values"], tables["representation_drift/cka"]
    assert spectra.columns == ["module", "index", "singular_value"]
    assert len(spectra.data) == 2 * 2 * 2  # r = 2 singular values of 2 modules (query, value) in each of 2 layers
    assert cka.columns == ["layer", "cka"] and len(cka.data) == 3  # embeddings + 2 layers
    assert tables["lora_rank/singular_values_chart"].stroke == "module"
    assert tables["representation_drift/cka_chart"].table is cka
