"""The sweep report: built from a completed tiny sweep (rank ablation, two seeds, full
fine-tuning baseline), every figure a valid PNG embedded in report.html; representation drift in
metrics.json; the CLI, its bad input, --confirm, and the W&B dashboard read back offline."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import write_tiny_sst2
from wandb_offline import defined_metrics, history, offline_run_log

from loraexp.config.load import build_config
from loraexp.report.build import write_report
from loraexp.report.render import embedded_images
from loraexp.sweep.runner import run_sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_FIGURES = {"metric", "loss_curves", "rank_use", "spectra", "subspace_ranks", "subspace_seeds", "cka", "efficiency"}


def tiny_overrides(model: str, data: str, out: Path, **extra) -> dict:
    return {"model": model, "data_dir": data, "output_dir": str(out), "training.max_steps": 4,
            "training.per_device_train_batch_size": 8, "training.logging_steps": 1,
            "verification.latency_repeats": 1, "sweep.bootstrap_resamples": 500, **extra}


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, tiny_bert_dir) -> Path:
    """A completed rank ablation (r = 2, 4) with seeds 1 and 2 and a full fine-tuning baseline."""
    root = tmp_path_factory.mktemp("report")
    cfg = build_config(overrides=tiny_overrides(tiny_bert_dir, write_tiny_sst2(root), root / "out", **{
        "sweep.mode": "ablation", "sweep.ablation_type": "rank", "sweep.ranks": [2, 4], "sweep.seeds": [1, 2],
        "sweep.baseline": "full", "sweep.name": "tiny-rank"}))
    result = run_sweep(cfg, progress=False)
    assert [r.status for r in result.runs] == ["completed"] * 6
    return result.sweep_dir


def test_every_run_records_representation_drift(tiny_sweep):
    for metrics in tiny_sweep.glob("*/metrics.json"):
        drift = json.loads(metrics.read_text())["representation_drift"]
        assert drift["probe_examples"] == 32  # the whole tiny dev split (< the default 256)
        assert drift["layers"] == ["embeddings", "1", "2"] and len(drift["cka"]) == 3
        assert drift["trained_pass"] == "evaluation"  # taken from the evaluation, no probe pass of its own
        if "-full-" not in metrics.parent.name:  # LoRA leaves the embeddings as they were
            assert drift["cka"][0] == pytest.approx(1.0, abs=1e-9)
        assert min(drift["cka"]) < 1 - 1e-10, drift["cka"]  # training moved some layer (1 up to rounding otherwise)
        assert all(0.0 <= c <= 1.0 + 1e-9 for c in drift["cka"])


def test_report_builds_every_figure_as_a_png_embedded_in_the_html(tiny_sweep, tmp_path):
    sweep = tmp_path / "tiny-rank"
    shutil.copytree(tiny_sweep, sweep)
    report = write_report(sweep)
    assert {f.name for f in report.figures} == ALL_FIGURES
    page = report.html_path.read_text()
    embedded = embedded_images(page)
    markdown = report.markdown_path.read_text()
    for figure in report.figures:
        data = figure.path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, figure.name
        from PIL import Image

        with Image.open(figure.path) as image:
            image.verify()
        assert data in embedded, f"{figure.name} is not embedded in report.html"
        assert f"]({figure.path.relative_to(sweep).as_posix()})" in markdown
    assert len(embedded) == len(report.figures)
    assert 'src="figures/' not in page  # self-contained: no file the page would have to fetch
    for section in ("## Summary", "### Rank advice", "## Configurations", "## Figures", "Best mean dev accuracy",
                    "Subspace similarity, different ranks", "Representation drift"):
        assert section in markdown, section
    advice = report.advice
    assert advice is not None and advice.source.config.lora["r"] == 4  # the largest rank shows how much is used
    assert advice.advice.source_r == 4 and 1 <= advice.advice.r <= 4


def test_report_cli_writes_the_report_and_refuses_bad_input(tiny_sweep, tmp_path, capsys):
    from loraexp.cli.main import main

    sweep = tmp_path / "tiny-rank"
    shutil.copytree(tiny_sweep, sweep)
    assert main(["report", str(sweep)]) == 0
    assert "Report: " in capsys.readouterr().out and (sweep / "report.html").is_file()
    (tmp_path / "empty").mkdir()
    only_full = tmp_path / "only-full"
    only_full.mkdir()
    for run in tiny_sweep.glob("*-full-*"):
        shutil.copytree(run, only_full / run.name)
    for argv, message in [([str(tmp_path / "missing")], "is not a directory"),
                          ([str(tmp_path / "empty")], "holds no run with a readable metrics.json"),
                          ([str(sweep), "--energy", "0"], "`--energy` must be in (0, 1], got 0.0"),
                          ([str(sweep), "--energy", "1.5"], "`--energy` must be in (0, 1], got 1.5"),
                          ([str(only_full), "--confirm"], "has no rank advice")]:
        before = sorted(p.name for p in Path(argv[0]).iterdir()) if Path(argv[0]).is_dir() else None
        assert main(["report", *argv]) == 2, argv
        assert message in capsys.readouterr().err
        if before is not None and "--energy" not in argv:
            assert sorted(p.name for p in Path(argv[0]).iterdir()) == before  # nothing written


def test_confirm_trains_the_advised_adapter_with_the_sweeps_seeds(tiny_sweep, tmp_path, capsys):
    from loraexp.cli.report import run_report

    sweep = tmp_path / "tiny-rank"
    shutil.copytree(tiny_sweep, sweep)
    assert run_report(str(sweep), confirm=True) == 0
    result = json.loads((sweep / "confirm" / "confirm.json").read_text())
    assert result["status"] == "completed" and result["seeds"] == 2
    assert result["verdict"] in ("yes", "no", "inconclusive")
    assert result["difference"]["low"] <= result["difference"]["estimate"] <= result["difference"]["high"]
    runs = sorted(p.name for p in (sweep / "confirm").iterdir() if (p / "metrics.json").is_file())
    assert runs == result["runs"] and all(re.search(r"-advised-[0-9a-f]{6}-s[12]$", r) for r in runs) and len(runs) == 2
    overrides = result["overrides"]
    for run in runs:  # the advice is what was trained
        advised = json.loads((sweep / "confirm" / run / "adapter" / "adapter_config.json").read_text())
        assert advised["r"] == overrides["lora.r"] and advised["lora_alpha"] == overrides["lora.lora_alpha"]
        assert advised["rank_pattern"] == overrides["lora.rank_pattern"]
        assert advised["alpha_pattern"] == overrides["lora.alpha_pattern"]
    assert "Confirmed with 2 seeds" in (sweep / "report.md").read_text()
    assert "as good?" in capsys.readouterr().out
    stamps = {run: (sweep / "confirm" / run / "metrics.json").stat().st_mtime_ns for run in runs}
    assert run_report(str(sweep), confirm=True) == 0  # a second --confirm reuses the completed runs
    assert {run: (sweep / "confirm" / run / "metrics.json").stat().st_mtime_ns for run in runs} == stamps
    assert run_report(str(sweep), energy=0.5) == 0  # another advice: the old confirmation is not shown under it
    assert "Confirmed with" not in (sweep / "report.md").read_text()


def test_wandb_dashboard_read_back_offline(tiny_sweep, tmp_path, monkeypatch):
    """A run's offline log: per-step metrics on the optimizer-step axis, spectra and CKA tables;
    the report's summary run: the summary tables and every figure as an image."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = tmp_path / "tiny-rank"
    shutil.copytree(tiny_sweep, sweep)
    from loraexp.cli.report import run_report

    assert run_report(str(sweep), wandb_mode="offline") == 0
    rows = history(offline_run_log(sweep))
    logged = {k: v for row in rows for k, v in row.items()}
    assert logged["report/summary/_type"] == "table-file" and logged["report/summary/nrows"] == 6
    assert logged["report/configurations/_type"] == "table-file"
    run_dir = next(offline_run_log(sweep).parent.glob("files"))
    for name in ALL_FIGURES:
        assert logged[f"report/{name}/_type"] == "image-file", name
        assert (run_dir / logged[f"report/{name}/path"]).read_bytes().startswith(PNG_SIGNATURE)


def test_a_runs_wandb_log_has_step_axis_spectra_and_cka(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = build_config(overrides=tiny_overrides(tiny_bert_dir, write_tiny_sst2(tmp_path), tmp_path / "out", **{
        "tracking.wandb": "offline", "lora.r": 2}))
    result = run_sweep(cfg, progress=False)
    assert result.runs[0].status == "completed"
    log = offline_run_log(result.runs[0].run_dir)
    assert ("train/global_step", "") in defined_metrics(log)
    assert ("*", "train/global_step") in defined_metrics(log)
    rows = history(log)
    assert [row["train/global_step"] for row in rows if "train/loss" in row] == [1, 2, 3, 4]
    logged = {k: v for row in rows for k, v in row.items()}
    assert logged["lora_rank/singular_values/_type"] == "table-file"
    assert logged["lora_rank/singular_values/nrows"] == 2 * 4  # r = 2 values of 4 modules (2 layers x query, value)
    assert logged["representation_drift/cka/_type"] == "table-file" and logged["representation_drift/cka/nrows"] == 3
    table = json.loads((log.parent / "files" / logged["representation_drift/cka/path"]).read_text())
    recorded = json.loads((result.runs[0].run_dir / "metrics.json").read_text())["representation_drift"]["cka"]
    assert table["columns"] == ["layer", "cka"] and [row[1] for row in table["data"]] == pytest.approx(recorded)


def test_report_of_one_seed_leaves_out_what_needs_two(tiny_sweep, tmp_path):
    sweep = tmp_path / "one-seed"
    sweep.mkdir()
    for run in tiny_sweep.glob("*-s1"):
        shutil.copytree(run, sweep / run.name)
    report = write_report(sweep)  # no summary.csv: every run directory
    names = {f.name for f in report.figures}
    assert names == ALL_FIGURES - {"subspace_seeds"}
    ranks = next(f for f in report.figures if f.name == "subspace_ranks")
    assert ranks.facts["seeds"] == [1, 1] and "one seed only" in ranks.caption


def test_report_survives_hostile_files_and_escapes_html(tiny_sweep, tmp_path, caplog):
    sweep = tmp_path / "<img src=x onerror=alert(1)>"
    shutil.copytree(tiny_sweep, sweep)
    r2 = sorted(sweep.glob("*-r2-*-s1"))[0]
    (r2 / "adapter" / "adapter_model.safetensors").write_bytes(b"\x00" * 10)  # truncated adapter
    (sorted(sweep.glob("*-full-s2"))[0] / "metrics.json").write_text("[1, 2]")  # not an object: a missing run
    edited = sorted(sweep.glob("*-r4-*-s2"))[0] / "metrics.json"
    edited.write_text(json.dumps({**json.loads(edited.read_text()), "adapter_statistics": [1]}))  # wrong type
    with open(sorted(sweep.glob("*-r4-*-s1"))[0] / "history.jsonl", "a") as fh:
        fh.write("[1, 2]\nnot json\n")
    (sweep / "confirm").mkdir()
    (sweep / "confirm" / "confirm.json").write_text('{"status": "completed", "difference": {}}')
    with open(sweep / "summary.csv", "a") as fh:
        fh.write("../../etc,completed\n")
    report = write_report(sweep)
    assert {"metric", "loss_curves", "cka", "efficiency"} <= {f.name for f in report.figures}
    page = report.html_path.read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img src=x" not in page
    messages = caplog.text
    assert "not a readable safetensors file" in messages  # the subspace figure that needs it is left out, named
    assert "left out of the report" in messages and "not a directory of the sweep" in messages


def test_the_cka_probe_leaves_the_trained_adapter_unchanged(tiny_bert_dir, tmp_path):
    """The probe is a measurement: with it (default) and without it (0) the run trains the same
    adapter bit for bit (dropout on, so a shifted random stream would show)."""
    from safetensors.torch import load_file

    adapters = []
    for probe in (0, 256):
        out = tmp_path / f"probe-{probe}"
        cfg = build_config(overrides=tiny_overrides(tiny_bert_dir, write_tiny_sst2(out), out / "out", **{
            "tracking.cka_probe_examples": probe, "lora.r": 2}))
        result = run_sweep(cfg, progress=False)
        assert result.runs[0].status == "completed"
        assert bool(result.runs[0].record.representation_drift) == bool(probe)
        adapters.append(load_file(str(result.runs[0].run_dir / "adapter" / "adapter_model.safetensors")))
    assert adapters[0].keys() == adapters[1].keys()
    assert all(adapters[0][k].equal(adapters[1][k]) for k in adapters[0])
