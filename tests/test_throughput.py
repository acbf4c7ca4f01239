"""Throughput settings on a tiny BERT: each knob trains to a completed, verified run; bf16
trains under autocast on the CPU and is verified in float32; ``pad_to_multiple_of`` gives
fixed shapes; the device checks and the ``--fast`` preset."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from loraexp.config.load import build_config
from loraexp.run.recipe import run_experiment
from tests.conftest import FAST


class Recorder(TrainerCallback):
    """Records, for every training forward pass, the ``input_ids`` shape and the dtype a
    Linear layer inside the model computed in (bfloat16 under bf16 autocast)."""

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []
        self.dtypes: set[torch.dtype] = set()
        self.handles = []

    def on_train_begin(self, args, state, control, **kwargs):
        model = kwargs["model"]
        linear = next(m for m in model.modules() if type(m) is torch.nn.Linear)
        self.handles = [
            model.register_forward_pre_hook(lambda m, a, kw: self.shapes.append(tuple(kw["input_ids"].shape)),
                                            with_kwargs=True),
            linear.register_forward_hook(lambda m, i, out: self.dtypes.add(out.dtype))]

    def on_train_end(self, args, state, control, **kwargs):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("overrides,dtype,multiple", [
    ({}, torch.float32, None),
    ({"training.bf16": True}, torch.bfloat16, None),  # loraexp sets use_cpu on a machine without a GPU
    ({"training.train_sampling_strategy": "group_by_length"}, torch.float32, None),
    ({"training.dataloader_num_workers": 1}, torch.float32, None),
    ({"pad_to_multiple_of": 16}, torch.float32, 16),
], ids=["fp32", "bf16", "group_by_length", "dataloader_workers", "pad_to_multiple_of"])
def test_throughput_setting_completes_verified(tiny_bert_dir, tiny_sst2_dir, tmp_path, overrides, dtype, multiple):
    cfg = build_config(overrides={"model": tiny_bert_dir, "data_dir": tiny_sst2_dir, "output_dir": str(tmp_path),
                                  **FAST, **overrides})
    recorder = Recorder()
    result = run_experiment(cfg, tmp_path / "run", "run", extra_callbacks=[recorder])
    assert result.status == "completed", result.record.error
    verification = result.record.verification
    assert verification.passed and verification.merge.passed and verification.reload.passed
    assert recorder.dtypes == {dtype}  # bf16: the forward really ran under autocast
    # both checks compare in float32, the weights' dtype: no bf16 rounding in the figures
    # (before they did, the tiny BERT's bf16 merge figure was 6.5e-5)
    assert verification.merge.precision == "float32" and verification.merge.max_abs_diff <= 1e-6
    assert verification.reload.precision == "float32" and verification.reload.max_abs_diff <= 1e-6
    assert len(recorder.shapes) == 6
    # drift: the trained states come from the evaluation unless it ran under autocast
    drift = result.record.representation_drift
    assert drift["trained_pass"] == ("probe" if "training.bf16" in overrides else "evaluation") and drift["cka"]
    if multiple:
        assert all(length % multiple == 0 for _, length in recorder.shapes), recorder.shapes


def _rows(tokenizer, texts):
    return [{**tokenizer(t), "labels": 1} for t in texts]


@pytest.mark.parametrize("form", ["SEQ_CLS", "CAUSAL_LM"])
@pytest.mark.parametrize("multiple", [None, 8, 32])
def test_pad_to_multiple_of_gives_fixed_shapes(minilm_path, form, multiple):
    """Every batch is padded to its longest row rounded up to the multiple (labels of a causal
    LM with -100), and the padding changes no output under the attention mask."""
    from transformers import AutoTokenizer

    from loraexp.tasks import get_task
    from tests.conftest import tiny_bert_config

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    task = get_task("sst2" if form == "SEQ_CLS" else "shakespeare", form)
    texts = ["a fine film", "a dull , tedious and far too long film about nothing at all"]
    rows = _rows(tokenizer, texts)
    if form == "CAUSAL_LM":
        rows = [{**r, "labels": list(r["input_ids"])} for r in rows]
    longest = max(len(r["input_ids"]) for r in rows)
    batch = task.collator(tokenizer, multiple)(rows)
    expected = longest if multiple is None else -(-longest // multiple) * multiple
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, expected)
    assert int(batch["attention_mask"].sum()) == sum(len(r["input_ids"]) for r in rows)
    if form == "CAUSAL_LM":
        assert batch["labels"].shape == (2, expected) and (batch["labels"][0, len(rows[0]["input_ids"]):] == -100).all()
    else:
        from transformers import BertForSequenceClassification

        torch.manual_seed(0)
        model = BertForSequenceClassification(tiny_bert_config(vocab_size=tokenizer.vocab_size)).eval()
        unpadded = task.collator(tokenizer)(rows)
        with torch.no_grad():
            torch.testing.assert_close(model(**{k: v for k, v in batch.items() if k != "labels"}).logits,
                                       model(**{k: v for k, v in unpadded.items() if k != "labels"}).logits,
                                       rtol=0, atol=1e-6)


@pytest.mark.parametrize("training,fragment", [
    ({"bf16": True}, None),  # bf16 autocast on the CPU works (loraexp sets use_cpu)
    ({"tf32": False}, None),
    ({"optim": "paged_adamw_8bit"}, None),  # bitsandbytes 0.50 runs paged and 8-bit optimizers on the CPU
    ({"optim": "adamw_torch_fused"}, None),
    ({"fp16": True}, "`training.fp16` true cannot work on the CPU"),
    ({"bf16": True, "use_cpu": False}, "`training.use_cpu` false with `training.bf16` true"),
    ({"bf16_full_eval": True, "use_cpu": False}, "`training.use_cpu` false with `training.bf16_full_eval` true"),
    ({"tf32": True}, "`training.tf32` true needs an NVIDIA GPU"),
    ({"optim": "adamw_anyprecision"}, "`training.optim` 'adamw_anyprecision' cannot be used here: Please install"),
    ({"optim": "no_such_optimizer"}, "unsupported optimizer: no_such_optimizer"),
])
def test_training_settings_the_cpu_cannot_do(monkeypatch, training, fragment):
    from loraexp.run import device as throughput

    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    problems = throughput.training_device_problems(training)
    if fragment is None:
        assert problems == []
    else:
        assert len(problems) == 1 and fragment in problems[0], problems


@pytest.mark.parametrize("argv,expected", [
    (["--fast"], {"bf16": True}),
    (["--fast", "--set", "training.bf16=false"], {"bf16": False}),  # --set wins over the preset
    ([], {}),
])
def test_fast_flag_sets_the_preset(monkeypatch, argv, expected):
    from loraexp.cli import main as cli
    from loraexp.config.load import load_config, parse_set_overrides

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = cli.build_parser().parse_args(argv)
    cfg = load_config(overrides=parse_set_overrides(args.overrides), cli=cli.flag_values(args))
    assert {k: cfg.training[k] for k in ("bf16", "fp16") if k in cfg.training} == expected
