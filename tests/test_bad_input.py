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

from loraexp.cli import generate as generate_cli
from loraexp.cli import main as cli
from loraexp.config.load import load_config
from loraexp.sweep.expand import expand

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


def _sst2_rows(e, name, rows):
    """A data directory whose SST-2 train file holds ``rows`` (sentence, label) after the header."""
    return _data_with(e, name, "sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows))


def _rte_with_label(e, mp):
    import pandas as pd

    root = e["tmp"] / "data-rte"
    (root / "glue" / "rte").mkdir(parents=True)
    for split, labels in (("train", [0, 1, -1]), ("validation", [0, 1])):
        pd.DataFrame({"sentence1": ["a"] * len(labels), "sentence2": ["b"] * len(labels), "label": labels,
                      "idx": range(len(labels))}).to_parquet(root / "glue" / "rte" / f"{split}.parquet")
    return ["--task", "rte", "--data-dir", str(root)]


def _latin1_data(e, mp):
    root = e["tmp"] / "data-latin1"
    _write(root / "glue/sst2/dev.tsv", "sentence\tlabel\na fine film\t1\n")
    (root / "glue/sst2/train.tsv").write_bytes("sentence\tlabel\na fine film\t1\nun café\t0\n".encode("latin-1"))
    return ["--data-dir", str(root)]


def _model_dir_without_weights(e, mp, extra: str | None = None):
    """The tiny BERT's config and tokenizer without its weights (plus an ``extra`` empty file)."""
    import shutil

    folder = e["tmp"] / "no-weights"
    shutil.copytree(e["model"], folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    if extra:
        (folder / extra).write_bytes(b"")
    return ["--model", str(folder)]


def _yaml_with(e, name, text):
    return ["--config", str(_write(e["tmp"] / name, text))]


def _other_config_in_run_dir(e, mp):
    base = load_config(cli={"task": "sst2", "model": e["model"], "data_dir": e["data"], "output_dir": str(e["out"])})
    ((name, cfg),) = expand(base)
    saved = cfg.to_dict()
    saved["max_seq_length"] = 64  # not part of the run name
    _write(e["out"] / "sst2-single" / name / "config.yaml", yaml.safe_dump(saved))
    return []


def fresh_wandb_session(mp, tmp: Path, **env: str) -> None:
    """wandb reads its settings (base_url) once per process and keeps session credentials: start
    both afresh, with only the given W&B variables set and no settings file."""
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib.wbauth import authenticate

    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_APP_URL"):
        mp.delenv(name, raising=False)
    mp.setenv("WANDB_CONFIG_DIR", str(tmp / "wandb-config"))
    mp.setenv("NETRC", str(tmp / "no-netrc"))
    for name, value in env.items():
        mp.setenv(name, value)
    mp.setattr(wandb_setup, "_singleton", None)
    mp.setattr(authenticate, "_session_auth", None)


def _data_changed_since_the_run(e, mp):
    """A completed run trained on data files with another fingerprint than today's."""
    import json

    base = load_config(cli={"task": "sst2", "model": e["model"], "data_dir": e["data"], "output_dir": str(e["out"])})
    ((name, cfg),) = expand(base)
    run_dir = e["out"] / "sst2-single" / name
    _write(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict()))
    _write(run_dir / "metrics.json", json.dumps({
        "status": "completed", "run_id": cfg.run_id, "run_name": name, "config": cfg.to_dict(),
        "resolved": {"data_dir": e["data"], "data_fingerprint": "sha256:0123456789abcdef"}}))
    return []


def _wandb_online_without_key(e, mp):
    fresh_wandb_session(mp, e["tmp"])
    return ["--wandb", "online"]


def _wandb_online_bad_key(e, mp):
    fresh_wandb_session(mp, e["tmp"], WANDB_API_KEY="abc")
    return ["--wandb", "online"]


def _wandb_online_bad_base_url(e, mp):
    fresh_wandb_session(mp, e["tmp"], WANDB_BASE_URL="https://app.wandb.ai", WANDB_API_KEY="a" * 40)
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
    """A model directory whose config.json names a causal LM (preflight reads only that, and
    checks that a weight file is there)."""
    from tests.conftest import tiny_llama_config

    config = tiny_llama_config()
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(e["tmp"] / "causal-lm")
    (e["tmp"] / "causal-lm" / "model.safetensors").write_bytes(b"")
    return str(e["tmp"] / "causal-lm")


def _squad_data(e):
    from tests.test_squad_v2_task import write_squad

    return write_squad(e["tmp"] / "squad-data", articles=3)


def _without_gpu(mp, *argv):
    """``argv`` on a machine seen without a GPU (and so without bf16 or TF32 on one)."""
    import torch
    from transformers.utils import import_utils

    mp.setattr(torch.accelerator, "is_available", lambda: False)
    mp.setattr(import_utils, "is_torch_bf16_gpu_available", lambda: False)
    mp.setattr(import_utils, "is_torch_tf32_available", lambda: False)
    return list(argv)


def _without_liger(e, mp):
    from transformers.utils import import_utils

    mp.setattr(import_utils, "is_liger_kernel_available", lambda: False)
    return ["--set", "training.use_liger_kernel=true"]


def _without_cxx_compiler(e, mp):
    """torch_compile where inductor finds no C++ compiler: the real trial compile, uncached."""
    from torch._inductor import config

    from loraexp.run import device as throughput

    probe = throughput.compile_problem.__wrapped__

    def without_compiler(*args):
        with config.patch({"cpp.cxx": (None, "/nonexistent/g++")}):
            return probe(*args)

    mp.setattr(throughput, "compile_problem", without_compiler)
    return _without_gpu(mp, "--set", "training.torch_compile=true")


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
    ("checkpoint-minutes-not-positive", "main", lambda e, mp: ["--checkpoint-minutes", "0"],
     ["`sweep.checkpoint_minutes` must be a finite number > 0", "got 0"]),
    ("prune-without-max-steps", "main",
     lambda e, mp: ["--mode", "sweep", "--prune", "successive-halving", "--max-steps", "-1"],
     ["`sweep.pruner` 'successive-halving' needs `training.max_steps` > 0", "got -1"]),
    ("prune-first-rung-not-below-max-steps", "main",
     lambda e, mp: ["--mode", "sweep", "--prune", "hyperband", "--max-steps", "20", "--min-resource", "20"],
     ["`sweep.min_resource` (the first rung) must be in [1, training.max_steps) = [1, 20), got 20"]),
    ("prune-reduction-factor-below-2", "main", lambda e, mp: ["--reduction-factor", "1"],
     ["`sweep.reduction_factor` must be an int >= 2", "got 1"]),
    ("prune-one-configuration", "main", lambda e, mp: ["--prune", "successive-halving", "--max-steps", "20"],
     ["`sweep.pruner` 'successive-halving' compares configurations, but this sweep has 1 it could stop"]),
    ("warm-start-not-an-adapter", "main", lambda e, mp: ["--warm-start", str(e["tmp"])],
     ["`warm_start` directory", "has no adapter_config.json"]),
    ("warm-start-full-fine-tuning", "main", lambda e, mp: ["--method", "full", "--warm-start", str(e["tmp"])],
     ["`warm_start`", "`method` full trains no adapter"]),
    ("data-changed-since-the-run", "main", _data_changed_since_the_run,
     ["the data files changed since run", "fingerprint sha256:0123456789abcdef then", "rerun with --rerun"]),
    ("wandb-online-without-api-key", "main", _wandb_online_without_key,
     ["`tracking.wandb` is 'online' but no W&B API key was found", "--wandb offline"]),
    ("wandb-online-key-malformed", "main", _wandb_online_bad_key,
     ["`tracking.wandb` is 'online' but wandb refuses its credentials", "API key must have 40+ characters"]),
    ("wandb-online-bad-server-address", "main", _wandb_online_bad_base_url,
     ["`tracking.wandb` is 'online' but wandb refuses its credentials or server address",
      "https://app.wandb.ai is not a valid server address"]),
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
    # training settings the device cannot do (loraexp/run/device.py), and throughput knobs
    ("fp16-on-cpu", "main", lambda e, mp: _without_gpu(mp, "--set", "training.fp16=true"),
     ["`training.fp16` true cannot work on the CPU", "use `training.bf16: true`"]),
    ("bf16-with-use-cpu-false-without-gpu", "main",
     lambda e, mp: _without_gpu(mp, "--set", "training.bf16=true", "--set", "training.use_cpu=false"),
     ["`training.use_cpu` false with `training.bf16` true cannot work on a machine without a GPU"]),
    ("fp16-and-bf16", "main", lambda e, mp: ["--set", "training.fp16=true", "--set", "training.bf16=true"],
     ["`training.fp16` and `training.bf16` are both true; allowed: at most one mixed precision"]),
    ("tf32-without-gpu", "main", lambda e, mp: _without_gpu(mp, "--set", "training.tf32=true"),
     ["`training.tf32` true needs an NVIDIA GPU of the Ampere generation or newer"]),
    ("liger-kernel-not-installed", "main", _without_liger,
     ["`training.use_liger_kernel` true needs liger-kernel >= 0.3.0 (pip install liger-kernel)"]),
    ("torch-compile-without-compiler", "main", _without_cxx_compiler,
     ["`training.torch_compile` true cannot work here", "InvalidCxxCompiler", "No working C++ compiler"]),
    ("optimizer-package-missing", "main", lambda e, mp: ["--set", "training.optim=adamw_anyprecision"],
     ["`training.optim` 'adamw_anyprecision' cannot be used here: Please install https://github.com/pytorch/torchdistx"]),
    ("pad-to-multiple-not-dividing-max-seq-length", "main", lambda e, mp: ["--set", "pad_to_multiple_of=48"],
     ["`pad_to_multiple_of` must be a positive int that divides `max_seq_length` (128)", "got 48"]),
    # batch sizes, training length, seeds
    ("batch-size-zero", "main", lambda e, mp: ["--set", "training.per_device_train_batch_size=0"],
     ["`training.per_device_train_batch_size` must be a positive int, got 0"]),
    ("batch-size-fraction", "main", lambda e, mp: ["--set", "training.per_device_train_batch_size=2.5"],
     ["`training.per_device_train_batch_size` must be a positive int, got 2.5"]),
    ("eval-batch-size-negative", "main", lambda e, mp: ["--set", "training.per_device_eval_batch_size=-1"],
     ["`training.per_device_eval_batch_size` must be a positive int, got -1"]),
    ("gradient-accumulation-zero", "main", lambda e, mp: ["--set", "training.gradient_accumulation_steps=0"],
     ["`training.gradient_accumulation_steps` must be a positive int, got 0"]),
    ("epochs-zero", "main", lambda e, mp: ["--set", "training.num_train_epochs=0"],
     ["`training.num_train_epochs` must be a finite number > 0 when `training.max_steps` is -1 or unset", "got 0"]),
    ("epochs-not-finite", "main", lambda e, mp: ["--max-steps", "-1", "--set", "training.num_train_epochs=.inf"],
     ["`training.num_train_epochs` must be a finite number > 0", "got inf"]),
    ("seed-negative", "main", lambda e, mp: ["--seed", "-1"],
     ["`seed` must be an int in [0, 2**32) (numpy's seed range, used by transformers.set_seed), got -1"]),
    ("seed-too-large", "main", lambda e, mp: ["--seed", str(2**32)], ["`seed` must be an int in [0, 2**32)",
                                                                     "got 4294967296"]),
    ("data-seed-negative", "main", lambda e, mp: ["--set", "data_seed=-1"],
     ["`data_seed` must be an int in [0, 2**32)", "got -1"]),
    ("sweep-seed-negative", "main", lambda e, mp: ["--seeds", "-1"],
     ["`sweep.seeds` must be a non-empty list of ints in [0, 2**32)", "got [-1]"]),
    ("sweep-seed-too-large", "main", lambda e, mp: ["--seeds", f"42,{2**32}"],
     ["`sweep.seeds` must be a non-empty list of ints in [0, 2**32)", "got [42, 4294967296]"]),
    # NaN and infinity
    ("learning-rate-nan", "main", lambda e, mp: ["--set", "training.learning_rate=nan"],
     ["`training.learning_rate` must be a finite number > 0, got 'nan'"]),
    ("learning-rate-inf", "main", lambda e, mp: ["--set", "training.learning_rate=.inf"],
     ["`training.learning_rate` must be a finite number > 0, got inf"]),
    ("lora-alpha-nan-in-yaml", "main", lambda e, mp: _yaml_with(e, "nan.yaml", "lora:\n  lora_alpha: .nan\n"),
     ["`lora.lora_alpha` must be a finite number > 0, got nan"]),
    ("sweep-learning-rate-nan", "main",
     lambda e, mp: ["--mode", "sweep", "--set", "sweep.learning_rates=[1e-4,.nan]"],
     ["`sweep.learning_rates` must be a non-empty list of finite numbers > 0, got [0.0001, nan]"]),
    ("sweep-alpha-inf", "main",
     lambda e, mp: ["--mode", "ablation", "--ablation-type", "alpha", "--set", "sweep.alphas=[8,.inf]"],
     ["`sweep.alphas` must be a non-empty list of finite numbers > 0, got [8, inf]"]),
    ("grid-learning-rate-nan", "main",
     lambda e, mp: ["--mode", "ablation", "--ablation-type", "grid", "--set",
                    "sweep.grid={training.learning_rate: [1e-4, .nan]}"],
     ["`sweep.grid.training.learning_rate` must list values that are each a finite number > 0, got [0.0001, nan]"]),
    # LoRA against the model's shapes (tiny BERT: 2 layers, 16 wide)
    ("r-above-layer-dimension", "main", lambda e, mp: ["--set", "lora.r=32"],
     ["`lora.r` must be at most 16, the smaller dimension of the targeted layers "
      "bert.encoder.layer.*.attention.self.query", "(16 in, 16 out)", "got 32"]),
    ("rank-pattern-above-layer-dimension", "main", lambda e, mp: ["--set", "lora.rank_pattern={value: 17}"],
     ["`lora.rank_pattern` entry 'value' must be at most 16", "bert.encoder.layer.*.attention.self.value", "got 17"]),
    ("rank-pattern-not-positive", "main", lambda e, mp: ["--set", "lora.rank_pattern={query: 0}"],
     ["`lora.rank_pattern` entry 'query' must be a positive int, got 0"]),
    ("layers-to-transform-out-of-range", "main", lambda e, mp: ["--set", "lora.layers_to_transform=[0,99]"],
     ["`lora.layers_to_transform` must name layers from 0 to 1 (the model has 2, num_hidden_layers), got [0, 99]"]),
    ("layers-to-transform-negative", "main", lambda e, mp: ["--set", "lora.layers_to_transform=-1"],
     ["`lora.layers_to_transform` must be a layer index (an int >= 0), a non-empty list of them, or null", "got -1"]),
    ("layers-to-transform-with-a-regex-preset", "main",
     lambda e, mp: ["--set", "lora.target_modules=mlp", "--set", "lora.layers_to_transform=0"],
     ["`lora` was rejected by peft.LoraConfig: `layers_to_transform` cannot be used when `target_modules` is a str"]),
    ("max-seq-length-above-positions", "main", lambda e, mp: ["--set", "max_seq_length=512"],
     ["`max_seq_length` must be at most 128, the model's max_position_embeddings (128)", "got 512"]),
    ("max-seq-length-not-positive", "main", lambda e, mp: ["--set", "max_seq_length=0"],
     ["`max_seq_length` must be a positive int, got 0"]),
    ("model-dir-without-weights", "main", _model_dir_without_weights,
     ["`model` directory", "has a config.json but no weights: expected one of model.safetensors",
      "it holds config.json, tokenizer.json"]),
    ("model-dir-with-only-a-gguf-file", "main", lambda e, mp: _model_dir_without_weights(e, mp, "model.Q4_1.gguf"),
     ["has a config.json but no weights", "its GGUF file 'model.Q4_1.gguf' is read only through an alias"]),
    # data files read whole
    ("data-label-out-of-range", "main", lambda e, mp: _sst2_rows(e, "label", [("fine", 1), ("dull", 0), ("odd", 2)]),
     ["sst2 file", "train.tsv' line 4 has label '2'; allowed labels: 0, 1"]),
    ("data-label-not-a-class", "main",
     lambda e, mp: _sst2_rows(e, "words", [("fine", "positive"), ("dull", "negative")]),
     ["train.tsv' line 2 has label 'positive'; allowed labels: 0, 1 (2 rows have a label outside that set)"]),
    ("data-label-out-of-range-parquet", "main", _rte_with_label,
     ["rte file", "train.parquet' row 2 (0-based) has label -1; allowed labels: 0, 1"]),
    ("data-file-not-utf8", "main", _latin1_data,
     ["sst2 file", "train.tsv' is not UTF-8 text (byte 0xe9 at offset 35, line 3: invalid continuation byte)"]),
    # every sweep axis: empty is refused (it would expand to zero runs and exit 0)
    ("empty-learning-rates", "main", lambda e, mp: ["--mode", "sweep", "--set", "sweep.learning_rates=[]"],
     ["`sweep.learning_rates` must be a non-empty list of numbers > 0, got []"]),
    ("empty-alphas", "main",
     lambda e, mp: ["--mode", "ablation", "--ablation-type", "alpha", "--set", "sweep.alphas=[]"],
     ["`sweep.alphas` must be a non-empty list of numbers > 0, got []"]),
    ("empty-presets", "main",
     lambda e, mp: ["--mode", "ablation", "--ablation-type", "modules", "--set", "sweep.presets=[]"],
     ["`sweep.presets` must be a non-empty list, got []"]),
    ("empty-quantizations", "main",
     lambda e, mp: ["--mode", "ablation", "--ablation-type", "quantization", "--set", "sweep.quantizations=[]"],
     ["`sweep.quantizations` must list values from none, nf4", "got []"]),
    ("empty-methods", "main", lambda e, mp: ["--mode", "ablation", "--ablation-type", "method", "--set",
                                             "sweep.methods=[]"],
     ["`sweep.methods` must list run types from lora, full", "got []"]),
    ("empty-grid", "main", lambda e, mp: ["--mode", "ablation", "--ablation-type", "grid", "--set", "sweep.grid={}"],
     ["`sweep.grid` must map at least one dotted key to a list of values for a grid ablation, got {}"]),
    ("empty-grid-axis", "main",
     lambda e, mp: ["--mode", "ablation", "--ablation-type", "grid", "--set", "sweep.grid={lora.r: [4], seed: []}"],
     ["`sweep.grid.seed` must be a non-empty list, got []"]),
    ("empty-seeds", "main", lambda e, mp: ["--set", "sweep.seeds=[]"],
     ["`sweep.seeds` must be a non-empty list of ints in [0, 2**32)", "got []"]),
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

