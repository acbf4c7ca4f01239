"""Build ``.gpu-kit/``: what a lent GPU machine (no network) lacks to run loraexp.

Run through ``scripts/gpu_kit.sh build [--clean]`` (with the project's ``.venv`` python: it
reads the versions of ``datasets``, ``dill`` and ``multiprocess`` from there and uses
transformers to write the model configs). The kit holds:

* ``site/``: wheels for CPython 3.12 manylinux x86_64, unzipped for ``PYTHONPATH``:
  bitsandbytes (trimmed to the CUDA 13.0 and CPU libraries), omegaconf, datasets and the
  two of its requirements the machine lacks (dill, multiprocess), liger-kernel;
* ``tokenizer/``: SmolLM2-135M-Instruct's tokenizer files (from loraexp's converted GGUF folder);
* ``models/<name>/config.json``: LlamaConfig files of real shapes, no weights
  (smollm2-135m, llama-3.2-1b, llama-3.2-3b, and a tiny one for the CPU dry run);
* ``data/``: tinyshakespeare and LIMA in the layout of ``shared/data``;
* ``MANIFEST.json``: every package with its version and bytes, every group's bytes, the
  working tree's bytes and the sum; the build fails (exit 1) when the sum exceeds the carry
  limit (64 MiB).

Idempotent: a package already unpacked at the wanted version is kept, downloaded wheels are
cached in ``~/.cache/loraexp/gpu-kit-wheels``; ``--clean`` removes the kit first.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
CARRY_LIMIT = 64 * MIB  # the device tool's limit for the working tree plus carried paths
KIT_TARGET = 48 * MIB   # what the kit itself should stay under
BNB_CUDA = "130"        # the lent machine's torch is 2.11.0+cu130
WHEEL_CACHE = Path(os.environ.get("LORAEXP_GPU_KIT_WHEELS", Path.home() / ".cache" / "loraexp" / "gpu-kit-wheels"))

PLATFORM_ARGS = [
    "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
    # bitsandbytes 0.50.2 is tagged py3-none-manylinux_2_24_x86_64: without this tag pip finds none
    "--platform", "manylinux_2_24_x86_64",
    "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
    "--platform", "manylinux1_x86_64",
]


def venv_version(name: str) -> str:
    return metadata.version(name)


def packages() -> list[tuple[str, str, str]]:
    """``(name, version, why)`` of every package in ``site/``."""
    return [
        ("bitsandbytes", "0.50.2", "QLoRA: 4-bit/8-bit quantization (loraexp.model.quantization, BitsAndBytesConfig); "
                                   "trimmed to libbitsandbytes_cuda130.so + libbitsandbytes_cpu.so"),
        ("omegaconf", "2.4.0", "config loading and merging (loraexp.config.load); 2.4.0 vendors antlr4 "
                               "(omegaconf/vendor/antlr4), so antlr4-python3-runtime is not needed"),
        ("datasets", venv_version("datasets"), "every task's data loading (loraexp.tasks.*)"),
        ("dill", venv_version("dill"), "requirement of datasets (dill<0.4.2), absent on the machine"),
        ("multiprocess", venv_version("multiprocess"), "requirement of datasets (multiprocess<0.70.20), "
                                                       "absent on the machine; this wheel is the py312 build"),
        ("liger-kernel", "0.8.5", "training.use_liger_kernel (Triton kernels; needs torch>=2.1.2, triton>=2.3.1); "
                                  "pure Python"),
    ]


def log(msg: str) -> None:
    print(f"[gpu-kit] {msg}", flush=True)


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def normalized(name: str) -> str:
    return name.replace("-", "_").lower()


def wheel_for(name: str, version: str) -> Path:
    """The cached wheel of ``name==version`` for CPython 3.12 manylinux x86_64, downloaded once."""
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    stem = f"{normalized(name)}-{version}-"
    found = [p for p in WHEEL_CACHE.glob("*.whl") if p.name.lower().startswith(stem)]
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(prefix="gpu-kit-dl-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", *PLATFORM_ARGS, "-d", tmp, f"{name}=={version}"]
        log("downloading " + f"{name}=={version}")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"pip download {name}=={version} failed (exit {done.returncode})")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"pip download {name}=={version} gave {wheels}")
        target = WHEEL_CACHE / wheels[0].name
        shutil.move(str(wheels[0]), target)
        return target


def top_level(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return sorted({n.split("/", 1)[0] for n in zf.namelist()})


def unpack(site: Path, name: str, version: str) -> tuple[Path, list[str]]:
    wheel = wheel_for(name, version)
    entries = top_level(wheel)
    dist_info = next(e for e in entries if e.endswith(".dist-info"))
    if not (site / dist_info).is_dir():
        # another version of the same package: remove it first
        for old in site.glob(f"{normalized(name)}-*.dist-info"):
            log(f"removing {old.name}")
            shutil.rmtree(old)
        for e in entries:
            p = site / e
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        log(f"unpacking {wheel.name}")
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
    return wheel, entries


def trim(site: Path) -> None:
    """Remove what no import needs: other CUDA/ROCm/XPU builds of bitsandbytes, test
    folders (dill/tests, multiprocess/tests: imported by nothing outside themselves),
    ``*.data`` folders (console scripts), RECORD files, ``__pycache__``."""
    bnb = site / "bitsandbytes"
    keep = {"libbitsandbytes_cpu.so", f"libbitsandbytes_cuda{BNB_CUDA}.so"}
    for so in bnb.glob("libbitsandbytes_*.so"):
        if so.name not in keep:
            so.unlink()
    missing = [k for k in keep if not (bnb / k).exists()]
    if missing:
        raise SystemExit(f"bitsandbytes wheel lacks {missing}")
    for tests in ("dill/tests", "multiprocess/tests"):
        if (site / tests).is_dir():
            shutil.rmtree(site / tests)
    for data in site.glob("*.data"):
        shutil.rmtree(data)
    for record in site.glob("*.dist-info/RECORD"):
        record.unlink()
    for cache in list(site.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)


def converted_smollm2() -> Path:
    sys.path.insert(0, str(REPO))
    from loraexp.model.gguf import smollm2_135m_path

    return Path(smollm2_135m_path())


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def build_tokenizer(kit: Path, source: Path) -> dict:
    out = kit / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copyfile(source / name, out / name)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
           "vocab_size": len(tok)}
    log(f"tokenizer: {sorted(p.name for p in out.iterdir())}; {ids}")
    return ids


LLAMA_32_COMMON = dict(
    vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
    rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                  "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    tie_word_embeddings=True, hidden_act="silu", attention_bias=False, mlp_bias=False,
    architectures=["LlamaForCausalLM"],
)


def build_models(kit: Path, source: Path, ids: dict) -> None:
    import torch
    from transformers import LlamaConfig

    special = {k: ids[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    models = kit / "models"
    (models / "smollm2-135m").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "config.json", models / "smollm2-135m" / "config.json")
    shapes = {
        "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                             num_attention_heads=32, num_key_value_heads=8, head_dim=64),
        "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                             num_attention_heads=24, num_key_value_heads=8, head_dim=128),
    }
    for name, shape in shapes.items():
        cfg = LlamaConfig(**LLAMA_32_COMMON, **shape, **special, dtype=torch.bfloat16)
        (models / name).mkdir(parents=True, exist_ok=True)
        cfg.to_json_file(str(models / name / "config.json"))
    tiny = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, vocab_size=ids["vocab_size"], max_position_embeddings=2048,
                       rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu",
                       architectures=["LlamaForCausalLM"], dtype=torch.float32, **special)
    (models / "tiny").mkdir(parents=True, exist_ok=True)
    tiny.to_json_file(str(models / "tiny" / "config.json"))
    for d in sorted(models.iterdir()):
        c = json.loads((d / "config.json").read_text())
        log(f"model {d.name}: hidden {c['hidden_size']}, layers {c['num_hidden_layers']}, "
            f"heads {c['num_attention_heads']}/{c['num_key_value_heads']}, vocab {c['vocab_size']}")


def data_source(arg: str | None) -> Path:
    candidates = [arg, os.environ.get("LORAEXP_GPU_KIT_DATA_SRC"), str(REPO.parent / "shared" / "data"),
                  "/work/shared/data"]
    for c in candidates:
        if c and (Path(c) / "lima" / "lima.json").exists() and (Path(c) / "tinyshakespeare" / "input.txt").exists():
            return Path(c)
    raise SystemExit(f"no shared/data with lima/lima.json and tinyshakespeare/input.txt among {candidates}")


def build_data(kit: Path, src: Path) -> None:
    for rel in ("tinyshakespeare/input.txt", "lima/lima.json"):
        dst = kit / "data" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists() or dst.stat().st_size != (src / rel).stat().st_size:
            shutil.copyfile(src / rel, dst)
            os.chmod(dst, 0o644)


def working_tree_bytes() -> tuple[int, int]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                         capture_output=True).stdout.decode()
    files = [f for f in out.split("\0") if f]
    total = 0
    for f in files:
        p = REPO / f
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total, len(files)


def fmt(n: int) -> str:
    return f"{n / MIB:8.2f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kit", default=str(REPO / ".gpu-kit"))
    ap.add_argument("--clean", action="store_true", help="remove the kit first and rebuild it from scratch")
    ap.add_argument("--data-src", default=None,
                    help="the shared/data folder (default ../shared/data, then /work/shared/data)")
    args = ap.parse_args(argv)

    kit = Path(args.kit).resolve()
    if args.clean and kit.exists():
        log(f"--clean: removing {kit}")
        shutil.rmtree(kit)
    site = kit / "site"
    site.mkdir(parents=True, exist_ok=True)

    pkg_rows = []
    for name, version, why in packages():
        _, entries = unpack(site, name, version)
        pkg_rows.append({"name": name, "version": version, "why": why, "entries": entries})
    stray = [p.name for p in site.iterdir()
             if not any(p.name in r["entries"] for r in pkg_rows)]
    for s in stray:  # left by an earlier build with another package list
        log(f"removing stray {s}")
        (shutil.rmtree if (site / s).is_dir() else os.unlink)(site / s)
    trim(site)
    for r in pkg_rows:
        r["bytes"] = sum(tree_bytes(site / e) for e in r["entries"] if (site / e).exists())
        del r["entries"]

    source = converted_smollm2()
    ids = build_tokenizer(kit, source)
    build_models(kit, source, ids)
    build_data(kit, data_source(args.data_src))

    groups = {g: tree_bytes(kit / g) for g in ("site", "tokenizer", "models", "data")}
    manifest = {
        "python": "cp312 manylinux x86_64", "bitsandbytes_cuda": BNB_CUDA,
        "packages": pkg_rows, "groups": groups,
        "tokenizer_ids": ids,
    }
    wt, nfiles = working_tree_bytes()
    # the manifest's own bytes are part of the kit: write it twice so its size is counted
    for _ in range(3):
        kit_bytes = sum(groups.values()) + ((kit / "MANIFEST.json").stat().st_size
                                             if (kit / "MANIFEST.json").exists() else 0)
        manifest.update({"kit_bytes": kit_bytes, "working_tree_bytes": wt, "working_tree_files": nfiles,
                         "total_bytes": kit_bytes + wt, "carry_limit_bytes": CARRY_LIMIT})
        (kit / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    kit_bytes = tree_bytes(kit)
    manifest.update({"kit_bytes": kit_bytes, "total_bytes": kit_bytes + wt})
    (kit / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")

    print()
    print(f"{'package':<16} {'version':<10} {'size':>12}")
    for r in pkg_rows:
        print(f"{r['name']:<16} {r['version']:<10} {fmt(r['bytes'])}")
    print()
    print(f"{'group':<27} {'size':>12}")
    for g, b in groups.items():
        print(f"{'.gpu-kit/' + g:<27} {fmt(b)}")
    print(f"{'.gpu-kit (total)':<27} {fmt(kit_bytes)}")
    print(f"{f'working tree ({nfiles} files)':<27} {fmt(wt)}")
    print(f"{'sum (carried)':<27} {fmt(kit_bytes + wt)}   limit {fmt(CARRY_LIMIT).strip()}")
    if kit_bytes > KIT_TARGET:
        print(f"[gpu-kit] WARNING: the kit is over its {KIT_TARGET // MIB} MiB target", file=sys.stderr)
    if kit_bytes + wt > CARRY_LIMIT:
        print(f"[gpu-kit] ERROR: kit + working tree = {(kit_bytes + wt) / MIB:.2f} MiB exceeds the "
              f"{CARRY_LIMIT // MIB} MiB carry limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
