"""``loraexp validate``: the checklist on tiny models built here, its failing cases, its output
and its exit codes (docs/validate.md)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_CONFIGS

from loraexp.cli import main as cli
from loraexp.config.load import build_config
from loraexp.run import checklist as V
from loraexp.run import checklist_report as R

# -- the checklist on tiny in-memory models ----------------------------------------------------


def _tiny_model(arch: str, causal: bool):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
    return auto.from_config(TINY_CONFIGS[arch]())


def _inputs(arch: str, causal: bool) -> V.Inputs:
    """A tiny model, a fixed synthetic batch (4 rows x 12 tokens) and a fresh-base factory that
    rebuilds the same weights."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 100, (4, 12), generator=generator)
    labels = ids.clone() if causal else torch.randint(0, 2, (4,), generator=generator)
    return V.Inputs(model=_tiny_model(arch, causal), batch={"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                                            "labels": labels},
                    task_type="CAUSAL_LM" if causal else "SEQ_CLS", space="probs" if causal else "logits",
                    check_rows=None, fresh_base=lambda quantized: _tiny_model(arch, causal), data="synthetic")


def _unfreeze_a_base_weight(monkeypatch) -> None:
    """After get_peft_model froze the base, make one base weight near the output trainable again
    (Llama's output head, BERT's pooler), so that the round trip sees its change too."""
    from loraexp.model import load as models

    attach = models.attach_lora

    def attach_then_unfreeze(*args, **kwargs):
        model, config = attach(*args, **kwargs)
        name, param = next((n, p) for n, p in model.named_parameters()
                           if n.endswith(("lm_head.weight", "bert.pooler.dense.weight")))
        param.requires_grad_(True)
        return model, config

    monkeypatch.setattr(models, "attach_lora", attach_then_unfreeze)


# (id, architecture, causal LM, config overrides, tamper(monkeypatch), max trainable %, checks expected to fail)
CASES = [
    ("bert-all-pass", "bert", False, {}, None, None, set()),
    ("llama-all-pass", "llama", True, {}, None, None, set()),
    ("llama-all-linear-all-pass", "llama", True, {"lora.target_modules": "all-linear"}, None, None, set()),
    ("bert-dora-all-pass", "bert", False, {"method": "dora"}, None, None, set()),
    ("llama-pissa-all-pass", "llama", True, {"method": "pissa"}, None, None, set()),
    # a base weight trains: frozen and unchanged fail, and the saved adapter no longer reproduces the model
    ("bert-base-weight-unfrozen", "bert", False, {}, _unfreeze_a_base_weight, None,
     {V.FROZEN, V.UNCHANGED, V.ROUND_TRIP}),
    ("llama-base-weight-unfrozen", "llama", True, {}, _unfreeze_a_base_weight, None,
     {V.FROZEN, V.UNCHANGED, V.ROUND_TRIP}),
    ("bert-over-trainable-target", "bert", False, {}, None, 0.01, {V.TRAINABLE}),
    # every later check needs the adapter: not run, which counts as failed
    ("llama-targets-match-nothing", "llama", True, {"lora.target_modules": ["nope"]}, None, None,
     set(V.CHECK_NAMES) - {V.MEMORY}),
]


@pytest.mark.parametrize("case_id,arch,causal,overrides,tamper,max_pct,failing", CASES, ids=[c[0] for c in CASES])
def test_checklist(monkeypatch, case_id, arch, causal, overrides, tamper, max_pct, failing):
    if tamper:
        tamper(monkeypatch)
    cfg = build_config(overrides={"verification.latency_repeats": 1, **overrides})
    checks = V.run_checks(cfg, _inputs(arch, causal), steps=4, max_trainable_pct=max_pct)
    assert [c.name for c in checks] == list(V.CHECK_NAMES)
    statuses = {c.name: c.status for c in checks}
    assert {n for n, s in statuses.items() if s in (V.FAIL, V.NOT_RUN)} == failing, checks
    assert statuses[V.MEMORY] == V.INFO
    by_name = {c.name: c for c in checks}
    if V.ADAPTERS not in failing:
        assert by_name[V.ADAPTERS].details["modules"] > 0
    if not failing:  # the figures behind the passes
        assert by_name[V.LOSS].details["losses"][-1] < by_name[V.LOSS].details["losses"][0]
        assert by_name[V.MERGE].details["adapter_vs_base_max_abs_diff"] > 1e-4  # not vacuous
        assert by_name[V.ROUND_TRIP].details["max_abs_diff"] <= cfg.verification.merge_atol
    if case_id == "llama-targets-match-nothing":
        assert "matches no module of the model; its Linear modules are" in by_name[V.ADAPTERS].figure
        assert statuses[V.TRAINABLE] == V.NOT_RUN and "adapters applied failed" in by_name[V.TRAINABLE].figure
    if case_id.endswith("unfrozen"):
        assert "1 of" in by_name[V.FROZEN].figure and "1 of" in by_name[V.UNCHANGED].figure


def test_adapter_names_grouped_by_type():
    names = [f"m.layer.{i}.attention.{part}" for i in range(2) for part in ("self.query", "output.dense")]
    names += [f"m.layer.{i}.output.dense" for i in range(2)]
    assert V.group_by_type(names) == {"query": 2, "attention.output.dense": 2, "output.dense": 2}
    assert V.group_by_type([f"model.layers.{i}.self_attn.q_proj" for i in range(3)]) == {"q_proj": 3}


def test_report_renders_one_line_per_check_and_the_verdict():
    checks = [V.Check(n, V.PASS, "fine", "> 0") for n in V.CHECK_NAMES[:-1]] + [V.Check(V.MEMORY, V.INFO, "1 GiB")]
    checks[2] = V.Check(V.FROZEN, V.FAIL, "1 of 9 base tensors require grad", "none")
    report = R.Report("m", "SEQ_CLS", "synthetic", 4, 2e-3, "lora", "none", {"r": 8}, checks, seconds=1.0)
    text = report.render()
    assert report.exit_code == 1 and not report.passed
    for check in checks:
        assert any(line.startswith(check.status.upper()) and check.name in line for line in text.splitlines())
    assert text.splitlines()[-1] == "1 of 9 checks failed: base frozen (1.0 s)"
    checks[4] = V.Check(V.LOSS, V.FAIL, "nan", "last < first", {"losses": [0.7, float("nan")], "rows": (4, 32)})
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))  # strict JSON for CI
    assert data["checks"][4]["details"] == {"losses": [0.7, "nan"], "rows": [4, 32]}
    assert data["passed"] is False and data["exit_code"] == 1


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory, minilm_path) -> str:
    """A tiny Llama causal LM saved with MiniLM's tokenizer (any tokenizer serves synthetic tokens)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-llama-validate")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = cli.main(["validate", *argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_json_lists_every_check_and_exit_0(capsys, tiny_llama_dir):
    code, out, _ = _run(capsys, "--model", tiny_llama_dir, "--json", "--max-length", "16")
    result = json.loads(out)
    assert code == 0 and result["passed"] is True and result["exit_code"] == 0
    assert [c["name"] for c in result["checks"]] == list(V.CHECK_NAMES)
    assert {c["status"] for c in result["checks"]} == {"pass", "info"}
    assert result["objective"] == "CAUSAL_LM" and result["data"].startswith("synthetic tokens")


def test_task_batch_and_console_checklist(capsys, tiny_bert_dir, tiny_sst2_dir):
    code, out, _ = _run(capsys, "--model", tiny_bert_dir, "--task", "sst2", "--data-dir", tiny_sst2_dir,
                        "--max-trainable-pct", "50")
    assert code == 0, out
    assert "data: sst2 train split, 4 rows, " in out
    assert out.splitlines()[-1].startswith("all 9 checks passed")
    assert sum(line.startswith("PASS ") for line in out.splitlines()) == 9


def test_squad_v2_windows_validate_as_extractive_qa(capsys, tiny_bert_dir, tmp_path):
    from test_squad_v2_task import write_squad

    data = write_squad(tmp_path, articles=3)
    code, out, _ = _run(capsys, "--model", tiny_bert_dir, "--task", "squad_v2", "--data-dir", data, "--json",
                        "--set", "max_seq_length=48", "--set", "qa.local_train_articles=2")
    result = json.loads(out)
    assert code == 0 and result["passed"] is True and result["objective"] == "QUESTION_ANS"
    assert result["data"].startswith("squad_v2 train split, 4 rows")


def test_target_modules_matching_nothing_fail_with_exit_1(capsys, tiny_llama_dir):
    code, out, err = _run(capsys, "--model", tiny_llama_dir, "--json", "--set", "lora.target_modules=[nope]")
    result = json.loads(out)
    assert code == 1 and result["exit_code"] == 1 and "error" not in err
    checks = {c["name"]: c for c in result["checks"]}
    assert checks[V.ADAPTERS]["status"] == "fail" and checks[V.ADAPTERS]["passed"] is False
    assert "['nope'] matches no module" in checks[V.ADAPTERS]["figure"]
    assert checks[V.MERGE]["status"] == "not run" and checks[V.MERGE]["passed"] is None


# (argv, fragments of the one error message): exit 2, before any model is loaded
BAD_INPUT = [
    (["--steps", "0"], ["`--steps` must be an int >= 2, got 0"]),
    (["--steps", "1"], ["`--steps` must be an int >= 2, got 1"]),
    (["--steps", "-3"], ["`--steps` must be an int >= 2, got -3"]),
    (["--max-trainable-pct", "-1"], ["`--max-trainable-pct` must be a percentage in (0, 100], got -1.0"]),
    (["--max-trainable-pct", "200"], ["`--max-trainable-pct` must be a percentage in (0, 100], got 200.0"]),
    (["--max-trainable-pct", "nan"], ["`--max-trainable-pct` must be a percentage in (0, 100], got nan"]),
    (["--batch-size", "0"], ["`--batch-size` must be a positive int, got 0"]),
    (["--set", "lora.r=0"], ["`lora.r` must be a positive int, got 0"]),
    (["--set", "lora.r"], ["`--set` expects key=value, got 'lora.r'"]),
    (["--set", "lora.target_modules=everything"], ["`lora.target_modules` preset 'everything' is unknown"]),
    (["--task", "cola"], ["`task` 'cola' is unknown; allowed: gsm8k"]),
    (["--quantization", "nf5"], ["`quantization.method` must be one of none, nf4, fp4, int8, got 'nf5'"]),
    (["--set", "method=full"], ["`method` 'full' has no adapter to validate"]),
    (["--model", "./no/such/model"], ["`model` path './no/such/model' is not a directory"]),
    (["--steps", "x"], ["argument --steps: invalid int value: 'x'"]),
    (["--model"], ["argument --model: expected one argument"]),
]


@pytest.mark.parametrize("argv,fragments", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_exit_2_before_loading_the_model(capsys, monkeypatch, tiny_bert_dir, argv, fragments):
    from loraexp.run import recipe

    def never(*args, **kwargs):
        raise AssertionError("bad input must be reported before the model is loaded")

    monkeypatch.setattr(recipe, "load_base", never)
    args = ["--model", tiny_bert_dir, *argv] if argv[:1] != ["--model"] else argv
    code, out, err = _run(capsys, *args)
    assert code == 2 and not out
    assert err.count("error:") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_help_and_bad_input_import_no_heavy_library():
    """``--help`` and errors found before the model are instant: no torch, transformers or PEFT."""
    import subprocess
    import sys

    heavy = ("torch", "transformers", "peft", "bitsandbytes", "datasets")
    cases = [(["--help"], 0), (["--steps", "0"], 2), (["--task", "cola"], 2), (["--model", "./no/such/model"], 2),
             (["--task", "sst2", "--data-dir", "/no/such/data"], 2)]
    script = "\n".join([
        "import sys", "from loraexp.cli.main import main", f"for argv, expected in {cases!r}:",
        "    try:", "        code = main(['validate', *argv])",
        "    except SystemExit as exc:", "        code = exc.code",
        f"    print('heavy:', sorted(m for m in {heavy!r} if m in sys.modules), 'code:', code, 'expected:', expected)"])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("heavy:")]
    assert lines == [f"heavy: [] code: {code} expected: {code}" for _, code in cases], proc.stdout + proc.stderr


def test_a_stage_raising_without_a_message_is_a_failed_line_not_a_traceback(monkeypatch):
    """An exception with an empty message (bitsandbytes' bare asserts) fails the stage's first
    check with its type, and the stage's other checks are not run."""
    from loraexp.run import training_args

    def bare_assert(*args, **kwargs):
        raise AssertionError()

    monkeypatch.setattr(training_args, "training_arguments", bare_assert)
    cfg = build_config(overrides={"verification.latency_repeats": 1})
    checks = {c.name: c for c in V.run_checks(cfg, _inputs("llama", True), steps=2)}
    assert checks[V.LOSS].status == V.FAIL and checks[V.LOSS].figure == "AssertionError: "
    assert checks[V.FROZEN].status == V.NOT_RUN and "training loss raised an error" in checks[V.FROZEN].figure
