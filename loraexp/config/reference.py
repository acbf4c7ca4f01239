"""The configuration reference (``docs/configuration.md``), rendered from the schema's help
metadata so that it is never hand-kept: ``python scripts/gen_config_reference.py`` writes it,
and ``tests/test_docs.py`` fails when the file is stale."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from loraexp.config.load import type_name
from loraexp.config.schema import DEFAULT_LORA, DEFAULT_TRAINING, FAST_HELP, ExperimentConfig

HEADER = """# Configuration reference

Generated from the help text of the config schema (`loraexp/config/schema.py`) by
`python scripts/gen_config_reference.py`; do not edit by hand (`tests/test_docs.py` fails
when this file is stale).

Every key can be set in a YAML file (`--config`), with `--set key=value` (values are YAML:
`--set lora.target_modules=[query,value]`), and the keys marked with a flag also with that
flag. Precedence: defaults < YAML < flags < `--set`. A mapping merges into the defaults
(`lora: {r: 4}` keeps the other `lora` keys); `sweep.grid` is replaced, not merged. Unknown
keys, wrong types and bad values are reported together, each naming the key, the value and
what is allowed, with exit code 2 (docs/reliability.md, "Bad input").
"""


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _code(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict) and len(str(value)) > 40:
        return "see below"
    return f"`{value}`".replace("|", "\\|")


def _section(cls: type, prefix: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    doc = (cls.__doc__ or "").strip().splitlines()[0]
    title = prefix.rstrip(".") or "top level"
    lines = [f"## `{title}`" if prefix else "## Top level", "", doc, "",
             "| key | type | default | flag | allowed | meaning |", "| --- | --- | --- | --- | --- | --- |"]
    nested = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            nested.append((hints[f.name], f"{prefix}{f.name}."))
            continue
        allowed = ", ".join(f"`{c}`" for c in f.metadata.get("choices", ())) or ""
        flag = f"`{f.metadata['flag']}`" if "flag" in f.metadata else ""
        text = f.metadata["help"].replace("|", "\\|")
        lines.append(f"| `{prefix}{f.name}` | {type_name(hints[f.name])} | {_code(_default(f))} | {flag} | {allowed} "
                     f"| {text} |")
    lines.append("")
    for nested_cls, nested_prefix in nested:
        lines += _section(nested_cls, nested_prefix)
    return lines


def render_reference() -> str:
    """The whole ``docs/configuration.md`` text."""
    lines = [HEADER]
    lines += _section(ExperimentConfig, "")
    lines += ["## Defaults of the pass-through mappings", "",
              "`lora` goes to `peft.LoraConfig` and `training` to `transformers.TrainingArguments`, which "
              "validate their own fields; loraexp starts from these values:", "",
              "| key | default |", "| --- | --- |"]
    lines += [f"| `lora.{k}` | {_code(v)} |" for k, v in DEFAULT_LORA.items()]
    lines += [f"| `training.{k}` | {_code(v)} |" for k, v in DEFAULT_TRAINING.items()]
    lines += ["", "Flags that set a `training` key: `--max-steps N` (`training.max_steps`) and "
              "`--save-steps N` (`training.save_steps`, with `training.save_strategy: steps`).", ""]
    lines += ["## Throughput settings", "",
              f"`--fast`: {FAST_HELP}", "",
              "The knobs `benchmarks/throughput.py` measures side by side on the same run: `training.bf16` "
              "(bf16 autocast; on a machine without a GPU loraexp sets `training.use_cpu`, which transformers needs "
              "for it), `training.torch_compile` with `pad_to_multiple_of` (fewer batch shapes, fewer recompiles), "
              "`training.train_sampling_strategy: group_by_length` (batches of similar length, less padding) and "
              "`training.dataloader_num_workers`. A setting the device cannot do (fp16 or tf32 on the CPU, bf16 on a "
              "GPU without it, `torch_compile` without a working compiler, liger-kernel or an optimizer's package not "
              'installed) is refused before any model loads (docs/reliability.md, "Bad input"). The merge and reload '
              "checks of a mixed-precision run compare in the weights' dtype "
              '(docs/verification.md, "Mixed precision").', ""]
    return "\n".join(lines)
