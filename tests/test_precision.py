"""Device-aware precision defaults (loraexp.config.precision; docs/gpu.md, "Defaults on a GPU"):
``auto`` dtypes resolve to what the device trains in, explicit ones are kept, and CPU run ids
stay those of earlier versions."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loraexp.config import precision
from loraexp.config.load import build_config

# (overrides, bf16 GPU present, expected model_dtype, compute_dtype, training.bf16)
CASES = [
    ({}, False, "float32", "float32", None),
    ({}, True, "float32", "float32", True),  # bf16 autocast, float32 weights; no quantization: compute unused
    ({"quantization.method": "nf4"}, True, "float32", "bfloat16", True),
    ({"quantization.method": "nf4", "training.fp16": True}, True, "float32", "float16", None),
    ({"quantization.method": "nf4", "training.bf16": False}, True, "float32", "float32", False),
    ({"method": "full"}, True, "float32", "float32", True),
    ({"training.fp16": True}, True, "float32", "float32", None),  # a precision named in training is kept
    ({"training.use_cpu": True, "quantization.method": "nf4"}, True, "float32", "float32", None),
    ({"model_dtype": "bfloat16"}, True, "bfloat16", "float32", None),  # explicit: never changed, no autocast added
    ({"quantization.method": "nf4", "quantization.compute_dtype": "float32"}, True, "float32", "float32", True),
    ({"quantization.method": "nf4"}, False, "float32", "float32", None),
]


@pytest.mark.parametrize("overrides,gpu,model_dtype,compute_dtype,bf16", CASES)
def test_auto_resolves_for_the_device(monkeypatch, overrides, gpu, model_dtype, compute_dtype, bf16):
    monkeypatch.setattr(precision, "bf16_gpu", lambda: gpu)
    cfg = precision.resolve_device_defaults(build_config(overrides=overrides))
    assert (cfg.model_dtype, cfg.quantization.compute_dtype, cfg.training.get("bf16")) == (
        model_dtype, compute_dtype, bf16)
    assert not precision.needs_resolution(cfg)
    assert precision.resolve_device_defaults(cfg) is cfg  # resolving twice changes nothing


def test_a_cpu_run_id_is_that_of_the_explicit_float32_config(monkeypatch):
    monkeypatch.setattr(precision, "bf16_gpu", lambda: False)
    auto = build_config()
    explicit = build_config(overrides={"model_dtype": "float32", "quantization.compute_dtype": "float32"})
    assert auto.model_dtype == "auto" and auto.run_id == explicit.run_id


def test_on_a_bf16_gpu_the_precision_is_part_of_the_run_id(monkeypatch):
    monkeypatch.setattr(precision, "bf16_gpu", lambda: False)
    cpu = build_config().run_id
    monkeypatch.setattr(precision, "bf16_gpu", lambda: True)
    assert build_config().run_id != cpu


def test_resolving_on_a_machine_without_a_gpu_driver_imports_no_torch():
    script = ("import sys; from loraexp.config.load import build_config; build_config().run_id; "
              "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    has_driver = any(__import__("pathlib").Path(f).exists() for f in precision.GPU_DRIVER_FILES)
    assert out.strip() == ("True" if has_driver else "False")


def test_a_run_writes_the_resolved_dtypes_and_records_its_precision(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    import yaml

    from loraexp.run.recipe import run_experiment
    from tests.conftest import FAST

    cfg = build_config(overrides={"model": tiny_bert_dir, "data_dir": tiny_sst2_dir, "output_dir": str(tmp_path),
                                  **FAST})
    result = run_experiment(cfg, tmp_path / "run", "run")
    assert result.status == "completed", result.record.error
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model_dtype"] == "float32" and saved["quantization"]["compute_dtype"] == "float32"
    assert result.record.run_id == cfg.run_id  # the id the sweep expected
    p = result.record.resolved.precision
    assert p["model_dtype"] == "float32" and p["autocast"] is None and p["compute_dtype"] is None
    assert isinstance(p["attn_implementation"], str) and p["attn_implementation"]
