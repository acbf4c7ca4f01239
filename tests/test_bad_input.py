"""Bad input: one clear error, exit code 2, nothing lost (docs/reliability.md, "Bad input").

Every case runs a CLI entry point in-process on top of an output directory that already
holds an earlier sweep; the error must name the field, the bad value and what is allowed,
and the directory must be byte-for-byte unchanged. The table in docs/reliability.md lists the
same ids (checked by the last test).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from loraexp import cli, generate_cli
from loraexp.config import load_config
from loraexp.sweep import expand

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _bad_yaml(e, mp):
    return ["--config", str(_write(e["tmp"] / "bad.yaml", "task: sst2\nlora: {r: 8\n"))]


def _latin1_config(e, mp):
    path = e["tmp"] / "latin1.yaml"
    path.write_bytes("sweep: {name: café}\n".encode("latin-1"))
    return ["--config", str(path)]


def _data_with(e, name, text):
    root = e["tmp"] / f"data-{name}"
    _write(root / "glue/sst2/train.tsv", text)
    _write(root / "glue/sst2/dev.tsv", "sentence\tlabel\na fine film\t1\n")
    return ["--data-dir", str(root)]


def _other_config_in_run_dir(e, mp):
    base = load_config(cli={"task": "sst2", "model": e["model"], "data_dir": e["data"], "output_dir": str(e["out"])})
    ((name, cfg),) = expand(base)
    saved = cfg.to_dict()
    saved["max_seq_length"] = 64  # not part of the run name
    _write(e["out"] / "sst2-single" / name / "config.yaml", yaml.safe_dump(saved))
    return []


def _wandb_online_without_key(e, mp):
    mp.delenv("WANDB_API_KEY", raising=False)
    mp.delenv("WANDB_MODE", raising=False)
    mp.setenv("NETRC", str(e["tmp"] / "no-netrc"))
    return ["--wandb", "online"]


def _backend_without_4bit_kernel(e, mp):
    import bitsandbytes.functional as F

    def no_kernel(*args, **kwargs):
        raise NotImplementedError("no kernel for this device")

    mp.setattr(F, "quantize_4bit", no_kernel)
    return ["--quantization", "nf4"]


def _no_bitsandbytes(e, mp):
    import sys

    mp.setitem(sys.modules, "bitsandbytes", None)
    return ["--quantization", "int8"]


def _no_optuna(e, mp):
    import sys

    mp.setitem(sys.modules, "optuna", None)
    return ["--backend", "optuna", "--storage", str(e["tmp"] / "study.journal")]


def _export_over_another_file(e, mp):
    _write(e["out"] / "keep.yaml", "program: mine.py\n")
    return ["--export-wandb-sweep", str(e["out"] / "keep.yaml")]


def _run_dir_with_adapter(e, weights: bytes | None, config: str = '{"peft_type": "LORA", "r": 2}'):
    run = e["out"] / "earlier" / "run"
    _write(run / "config.yaml", "task: shakespeare\n")
    _write(run / "adapter" / "adapter_config.json", config)
    if weights is not None:
        (run / "adapter" / "adapter_model.safetensors").write_bytes(weights)
    return run


def _full_fine_tuning_run(e, mp):
    run = e["out"] / "earlier" / "full-run"
    _write(run / "config.yaml", "task: sst2\nmethod: full\n")
    return ["--run", str(run)]


def _causal_lm_config_dir(e):
    """A model directory whose config.json names a causal LM (preflight reads only that)."""
    from tests.conftest import tiny_llama_config

    config = tiny_llama_config()
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(e["tmp"] / "causal-lm")
    return str(e["tmp"] / "causal-lm")


def _squad_data(e):
    from tests.test_squad_v2_task import write_squad

    return write_squad(e["tmp"] / "squad-data", articles=3)


# (id, entry point, argv builder (env, monkeypatch) -> extra argv, fragments of the one error message)
CASES = [
    ("yaml-syntax-error", "main", _bad_yaml, ["is not valid YAML at line 3"]),
    ("yaml-duplicate-key", "main",
     lambda e, mp: ["--config", str(_write(e["tmp"] / "dup.yaml", "task: sst2\nlora:\n  r: 4\n  r: 8\n"))],
     ["is not valid YAML at line 4, column 3: found duplicate key r"]),
    ("config-not-utf8", "main", _latin1_config, ["`--config` file", "is not UTF-8 text"]),
    ("set-value-not-yaml", "main", lambda e, mp: ["--set", "lora.target_modules=[query"],
     ["`--set lora.target_modules` value '[query' is not valid YAML"]),
    ("config-file-missing", "main", lambda e, mp: ["--config", "nope.yaml"],
     ["`--config` file 'nope.yaml' does not exist"]),
    ("unknown-key", "main", lambda e, mp: ["--set", "lora.rank=4"],
     ["unknown key `lora.rank`", "allowed: the fields of peft.LoraConfig"]),
    ("unknown-top-level-key", "main", lambda e, mp: ["--set", "epochs=3"],
     ["unknown key `epochs`; allowed keys: task"]),
    ("wrong-type", "main", lambda e, mp: ["--set", "max_seq_length=long"],
     ["`max_seq_length` must be of type int, got 'long'"]),
    ("r-zero", "main", lambda e, mp: ["--set", "lora.r=0"], ["`lora.r` must be a positive int, got 0"]),
    ("lora-alpha-not-positive", "main", lambda e, mp: ["--set", "lora.lora_alpha=-8"],
     ["`lora.lora_alpha` must be a number > 0, got -8"]),
    ("lora-dropout-out-of-range", "main", lambda e, mp: ["--set", "lora.lora_dropout=1.5"],
     ["`lora.lora_dropout` must be in [0, 1), got 1.5"]),
    ("negative-learning-rate", "main", lambda e, mp: ["--set", "training.learning_rate=-1e-4"],
     ["`training.learning_rate` must be a number > 0, got -0.0001"]),
    ("max-steps-zero", "main", lambda e, mp: ["--max-steps", "0"],
     ["`training.max_steps` must be a positive int (or -1 for epochs), got 0"]),
    ("unknown-task", "main", lambda e, mp: ["--task", "cola"],
     ["`task` 'cola' is unknown; allowed: gsm8k, lima, mrpc, rte, shakespeare, squad_v2, sst2"]),
    ("squad-v2-on-a-causal-lm", "main", lambda e, mp: ["--task", "squad_v2", "--model", _causal_lm_config_dir(e),
                                                   "--data-dir", _squad_data(e)],
     ["`task` 'squad_v2' is extractive question answering on an encoder", "generative QA is not supported"]),
    ("squad-v2-doc-stride-too-long", "main", lambda e, mp: ["--task", "squad_v2", "--set", "qa.doc_stride=100"],
     ["`qa.doc_stride` must be below half of max_seq_length (64)", "got 100"]),
    ("squad-v2-train-articles-out-of-range", "main",
     lambda e, mp: ["--task", "squad_v2", "--data-dir", _squad_data(e), "--set", "qa.local_train_articles=3"],
     ["`qa.local_train_articles` is 3, but", "has 3 articles; it must be between 1 and 2"]),
    ("min-loss-decrease-not-a-percent", "main", lambda e, mp: ["--set", "verification.min_loss_decrease=0.3e3"],
     ["`verification.min_loss_decrease` must be null (off) or a number of percent below 100", "got 300.0"]),
    ("unknown-ablation-type", "main", lambda e, mp: ["--mode", "ablation", "--ablation-type", "depth"],
     ["argument --ablation-type: invalid choice: 'depth'", "rank"]),
    ("unknown-preset", "main", lambda e, mp: ["--set", "lora.target_modules=everything"],
     ["`lora.target_modules` preset 'everything' is unknown; allowed presets: minimal"]),
    ("target-modules-match-nothing", "main", lambda e, mp: ["--set", "lora.target_modules=[nope]"],
     ["`lora.target_modules` ['nope'] matches no module of the model; its Linear modules are: "
      "bert.encoder.layer.*.attention.self.query"]),
    ("empty-sweep-axis", "main",
     lambda e, mp: ["--mode", "ablation", "--ablation-type", "rank", "--set", "sweep.ranks=[]"],
     ["`sweep.ranks` must be a non-empty list of positive ints, got []"]),
    ("grid-key-not-a-field", "main",
     lambda e, mp: ["--mode", "ablation", "--ablation-type", "grid", "--set", "sweep.grid={rank: [4, 8]}"],
     ["`sweep.grid` key 'rank' is not a config field"]),
    ("model-path-missing", "main", lambda e, mp: ["--model", "./no/such/model"],
     ["`model` path './no/such/model' is not a directory; give an alias"]),
    ("model-id-unavailable", "main", lambda e, mp: ["--model", "no-such-org/no-such-model"],
     ["`model` 'no-such-org/no-such-model' could not be loaded"]),
    ("data-dir-missing", "main", lambda e, mp: ["--data-dir", str(e["tmp"] / "nowhere")],
     ["is not a directory; it must hold the task files"]),
    ("data-file-missing", "main", lambda e, mp: ["--data-dir", str(e["tmp"] / "earlier-out")],
     ["has no sst2 train file: expected 'glue/sst2/train.tsv'"]),
    ("data-file-wrong-columns", "main", lambda e, mp: _data_with(e, "cols", "text\tgold\nfine\t1\n"),
     ["lacks the columns ['sentence', 'label']", "it has ['text', 'gold']"]),
    ("data-file-no-rows", "main", lambda e, mp: _data_with(e, "empty", "sentence\tlabel\n"), ["has no rows"]),
    ("output-dir-not-writable", "main", lambda e, mp: ["--output-dir", str(e["out"] / "keep.txt" / "results")],
     ["`output_dir`", "is not writable"]),
    ("run-dir-holds-another-config", "main", _other_config_in_run_dir,
     ["holds a different config (run_id", "set another `output_dir` or `sweep.name`"]),
    ("wandb-online-without-api-key", "main", _wandb_online_without_key,
     ["`tracking.wandb` is 'online' but no W&B API key was found", "--wandb offline"]),
    ("quantization-unsupported-by-backend", "main", _backend_without_4bit_kernel,
     ["`quantization.method` 'nf4' is not supported by bitsandbytes", "on cpu", "quantization.method: none"]),
    ("quantization-without-bitsandbytes", "main", _no_bitsandbytes,
     ["`quantization.method` 'int8' needs bitsandbytes: pip install bitsandbytes"]),
    ("secret-in-config", "main", lambda e, mp: ["--set", "training.hub_token=hf_abc"],
     ["`training.hub_token` would store a secret", "HF_TOKEN"]),
    ("set-without-value", "main", lambda e, mp: ["--set", "lora.r"], ["`--set` expects key=value, got 'lora.r'"]),
    ("optuna-without-storage", "main", lambda e, mp: ["--backend", "optuna"],
     ["`sweep.storage` must name an Optuna storage (a journal file path or a database URL)"]),
    ("optuna-storage-directory-missing", "main",
     lambda e, mp: ["--backend", "optuna", "--storage", str(e["tmp"] / "nowhere" / "study.journal")],
     ["`sweep.storage` journal file", "does not exist; give a path on a disk every worker sees"]),
    ("optuna-not-installed", "main", _no_optuna, ["`sweep.backend` 'optuna' needs the optuna extra"]),
    ("export-would-overwrite-a-file", "main", _export_over_another_file,
     ["`--export-wandb-sweep` would overwrite", "keep.yaml"]),
    ("adapter-weights-corrupted", "generate",
     lambda e, mp: ["--run", str(_run_dir_with_adapter(e, b"\x00garbage"))],
     ["`--run adapter` directory", "adapter_model.safetensors is corrupted"]),
    ("adapter-pickled-only", "generate",
     lambda e, mp: ["--run", str(_run_dir_with_adapter(e, None))],
     ["has no adapter_model.safetensors"]),
    ("adapter-config-not-lora", "generate",
     lambda e, mp: ["--run", str(_run_dir_with_adapter(e, b"x", config='{"peft_type": "IA3"}'))],
     ["must describe a LoRA adapter (peft_type LORA), got 'IA3'"]),
    ("generate-bad-top-p", "generate", lambda e, mp: ["--run", str(e["tmp"]), "--top-p", "1.5"],
     ["`--top-p` must be in (0, 1], got 1.5"]),
    ("generate-full-fine-tuning-run", "generate", _full_fine_tuning_run,
     ["is a full fine-tuning run, which saves no adapter; run it with --export-merged"]),
    ("seeds-not-integers", "main", lambda e, mp: ["--seeds", "42,abc"],
     ["argument --seeds: expected comma-separated int values, e.g. 42,1337,2024, got '42,abc'"]),
    ("seed-listed-twice", "main", lambda e, mp: ["--seeds", "42,42"], ["`sweep.seeds` lists a seed twice: [42, 42]"]),
    ("unknown-method", "main", lambda e, mp: ["--method", "qlora"], ["argument --method: invalid choice: 'qlora'"]),
    ("unknown-method-in-ablation", "main",
     lambda e, mp: ["--mode", "ablation", "--ablation-type", "method", "--set", "sweep.methods=[lora,vera]"],
     ["`sweep.methods` must list run types from lora, full", "got ['lora', 'vera']"]),
    ("full-fine-tuning-of-a-quantized-base", "main", lambda e, mp: ["--method", "full", "--quantization", "nf4"],
     ["`method` full trains every weight, which a quantized base cannot (quantization.method 'nf4')"]),
    ("loftq-without-cuda", "main", lambda e, mp: ["--method", "loftq"],
     ["`method` 'loftq' needs a CUDA device"]),
    ("max-drop-out-of-range", "main", lambda e, mp: ["--set", "sweep.max_drop=3"],
     ["`sweep.max_drop` must be a number in [0, 1) for a relative drop (0.03 = 3%)", "got 3"]),
    ("lora-plus-with-another-optimizer", "main", lambda e, mp: ["--method", "lora-plus", "--set",
                                                                 "training.optim=sgd"],
     ["`method` lora-plus builds its own AdamW", "remove `training.optim` ('sgd')"]),
    # loraexp report SWEEP_DIR
    ("report-without-sweep-dir", "report", lambda e, mp: [], ["the following arguments are required: SWEEP_DIR"]),
    ("report-not-a-directory", "report", lambda e, mp: [str(e["out"] / "nope")],
     ["`SWEEP_DIR`", "is not a directory; give a sweep directory"]),
    ("report-no-runs", "report", lambda e, mp: [str(e["out"] / "earlier")],
     ["holds no run with a readable metrics.json"]),
    ("report-run-directory", "report", lambda e, mp: [str(_write(e["out"] / "earlier" / "run-1" / "metrics.json",
                                                               "{}").parent)],
     ["holds no run with a readable metrics.json; it is a run directory: give the sweep directory"]),
    ("report-energy-out-of-range", "report", lambda e, mp: [str(e["out"] / "earlier"), "--energy", "1.5"],
     ["`--energy` must be in (0, 1], got 1.5"]),
]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def env(tiny_bert_dir, tiny_sst2_dir, tmp_path):
    out = tmp_path / "out"
    _write(out / "earlier" / "summary.md", "| run_name | status |\n")  # an earlier sweep's results
    _write(out / "keep.txt", "keep me\n")
    (tmp_path / "earlier-out").mkdir()
    return {"model": tiny_bert_dir, "data": tiny_sst2_dir, "out": out, "tmp": tmp_path}


@pytest.mark.parametrize("case_id,entry,argv,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_error_exit_2_and_loses_nothing(env, capsys, monkeypatch, case_id, entry, argv,
                                                            fragments):
    extra = argv(env, monkeypatch)
    before = _tree(env["out"])
    if entry == "main":
        args = ["--task", "sst2", "--model", env["model"], "--data-dir", env["data"], "--output-dir",
                str(env["out"]), "--no-progress", *extra]
        try:
            code = cli.main(args)
        except SystemExit as exc:  # argparse rejects choices itself, also with exit code 2
            code = exc.code
    elif entry == "report":
        try:
            code = cli.main(["report", *extra])
        except SystemExit as exc:
            code = exc.code
    else:
        code = generate_cli.main([*extra, "--prompt", "hi"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(re.findall(r"error:", err)) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    assert _tree(env["out"]) == before  # nothing written, nothing overwritten


def test_docs_list_every_bad_input_case():
    page = (ROOT / "docs" / "reliability.md").read_text()
    table = page.split("## Bad input")[1].split("\n## ")[0]
    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", table, flags=re.M)
    assert sorted(listed) == sorted(c[0] for c in CASES)
    assert len(CASES) >= 20

