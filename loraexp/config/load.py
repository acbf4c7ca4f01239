"""Load, merge and check an :class:`~loraexp.config.schema.ExperimentConfig`.

Layers, later wins: the dataclass defaults, the YAML file, the CLI flags, ``--set
key=value``. Merging, type checks and coercion are OmegaConf's structured configs
(docs/design.md, "Configuration schema and library"): YAML is read with OmegaConf's loader,
so ``3e-4`` is a float and a duplicate key is an error naming it. Every leaf of a layer is
applied on its own so that all problems (unknown keys, wrong types, bad values from
:func:`loraexp.config.checks.validate`) are collected and raised once as a
:class:`~loraexp.errors.ConfigError`.

A mapping merges into a mapping (``lora: {r: 4}`` keeps the other ``lora`` defaults), except
``sweep.grid``, which a later layer replaces: merging two grids would silently add axes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loraexp.config.checks import validate
from loraexp.config.schema import (  # noqa: F401  (re-exported: the public names of the config)
    DATA_DIR_ENV,
    EvaluationConfig,
    ExperimentConfig,
    QuantizationConfig,
    SweepConfig,
    TrackingConfig,
    VerificationConfig,
)
from loraexp.errors import ConfigError

REPLACED_BY_LATER_LAYERS = (("sweep", "grid"),)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def type_name(hint: Any) -> str:
    """``int``, ``int or null``, ``list of int``, ``mapping`` ... for an error message."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is list:
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if len(args) < len(typing.get_args(hint)):  # Optional
        return f"{type_name(args[0])} or null"
    return getattr(hint, "__name__", str(hint))


def _leaves(data: dict[str, Any], cls: type, path: tuple[str, ...], problems: list[str]
            ) -> Iterator[tuple[tuple[str, ...], Any]]:
    """``(path, value)`` for every setting in ``data``, a mapping shaped like dataclass ``cls``:
    sections are descended into, pass-through mappings (``lora``, ``training``) give one leaf
    per key; unknown keys are appended to ``problems``."""
    hints = _hints(cls)
    for key, value in data.items():
        where = ".".join((*path, str(key)))
        if key not in hints:
            problems.append(f"unknown key `{where}`; allowed keys: {', '.join(hints)}")
        elif dataclasses.is_dataclass(hints[key]):
            if isinstance(value, dict):
                yield from _leaves(value, hints[key], (*path, key), problems)
            else:
                problems.append(f"`{where}` must be a mapping of its settings, got {value!r}")
        elif (typing.get_origin(hints[key]) is dict and isinstance(value, dict)
              and (*path, key) not in REPLACED_BY_LATER_LAYERS):
            for inner, inner_value in value.items():
                yield (*path, key, str(inner)), inner_value
        else:
            yield (*path, key), value


def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"quantization.method": "nf4"}`` -> ``{"quantization": {"method": "nf4"}}``."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return out


def _interpolation(value: Any) -> str | None:
    """An OmegaConf interpolation (``${...}``) or missing-value marker (``???``) in ``value``."""
    if isinstance(value, str) and ("${" in value or value == "???"):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((found for found in map(_interpolation, items) if found), None)


def _set(conf, path: tuple[str, ...], value: Any, merge: bool, problems: list[str]) -> None:
    """``OmegaConf.update`` one setting; a value of the wrong type becomes a problem."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    key = ".".join(path)
    found = _interpolation(value)
    if found:
        problems.append(f"`{key}` value {found!r} is not allowed: OmegaConf interpolations (${{...}}) and '???' "
                        "are not supported in loraexp configs; write the value itself")
        return
    try:
        OmegaConf.update(conf, key, value, merge=merge)
    except OmegaConfBaseException:
        owner: Any = ExperimentConfig
        for part in path[:-1]:
            owner = _hints(owner).get(part) if dataclasses.is_dataclass(owner) else None
        hint = _hints(owner)[path[-1]] if dataclasses.is_dataclass(owner) else Any
        problems.append(f"`{key}` must be of type {type_name(hint)}, got {value!r}")


def _apply_layer(conf, layer: dict[str, Any], problems: list[str]) -> None:
    """Merge a nested ``layer`` (a YAML file) into ``conf`` leaf by leaf: mappings merge into
    mappings, except :data:`REPLACED_BY_LATER_LAYERS`."""
    for path, value in _leaves(layer, ExperimentConfig, (), problems):
        _set(conf, path, value, path[:2] not in REPLACED_BY_LATER_LAYERS, problems)


def _apply_dotted(conf, overrides: dict[str, Any], problems: list[str]) -> None:
    """Set each dotted key (a flag, ``--set``, a sweep point) to its value, replacing what is
    there (``--set lora.rank_pattern={}`` clears it); a whole section given as a mapping
    (``--set quantization={method: nf4}``) sets the fields it names."""
    for key, value in overrides.items():
        path = tuple(key.split("."))
        cls: Any = ExperimentConfig
        for depth, part in enumerate(path):
            hints = _hints(cls)
            where = ".".join(path[:depth + 1])
            if part not in hints:
                problems.append(f"unknown key `{where}`; allowed keys: {', '.join(hints)}")
                break
            if dataclasses.is_dataclass(hints[part]):
                cls = hints[part]
                if depth == len(path) - 1:
                    _apply_layer(conf, _nest({key: value}), problems)
                continue
            if depth < len(path) - 1 and typing.get_origin(hints[part]) is not dict:
                problems.append(f"`{where}` is not a mapping, so `{key}` does not exist")
            else:
                _set(conf, path, value, False, problems)
            break


def build_config(*layers: dict[str, Any], overrides: dict[str, Any] | None = None,
                 base: ExperimentConfig | None = None) -> ExperimentConfig:
    """Merge ``layers`` (nested dicts, later wins) over ``base`` (default: the schema
    defaults), then set the dotted-key ``overrides``, and validate.

    Raises:
        ConfigError: listing every unknown key, wrong type and bad value at once.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf = OmegaConf.structured(base if base is not None else ExperimentConfig)
    problems: list[str] = []
    for layer in layers:
        if not isinstance(layer, dict):
            problems.append(f"a config must be a mapping of settings, got {type(layer).__name__}")
            continue
        _apply_layer(conf, layer, problems)
    _apply_dotted(conf, overrides or {}, problems)
    try:
        cfg = OmegaConf.to_object(conf)
    except OmegaConfBaseException as exc:
        raise ConfigError(problems + [f"the config could not be resolved: {str(exc).splitlines()[0]}"]) from None
    problems.extend(validate(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


def apply_overrides(cfg: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """A new validated config: ``cfg`` with dotted ``overrides`` applied (sweep expansion).

    Raises:
        ConfigError: the result is not a valid config.
    """
    return build_config(overrides=overrides, base=cfg)


def parse_set_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``--set key=value`` items into dotted keys and values read as OmegaConf reads
    YAML (``lora.r=32``, ``training.learning_rate=3e-4`` (a float),
    ``lora.target_modules=[query,value]``, ``sweep.grid={lora.r: [4, 8]}``; an empty value
    is null).

    Raises:
        ConfigError: an item has no ``=``, an empty key, or a value that is not valid YAML.
    """
    from omegaconf import OmegaConf

    out: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"`--set` expects key=value, got {item!r}")
            continue
        if not raw.strip():
            out[key] = None
            continue
        try:
            out[key] = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]
        except Exception as exc:  # yaml.YAMLError (a ParserError with line and column)
            problems.append(f"`--set {key}` value {raw!r} is not valid YAML ({str(exc).splitlines()[0]})")
    if problems:
        raise ConfigError(problems)
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping with OmegaConf's loader (YAML 1.2 floats such as ``3e-4``;
    duplicate keys are errors).

    Raises:
        ConfigError: the file is missing, not UTF-8, not valid YAML (the message gives line
            and column, and names a duplicate key) or not a mapping.
    """
    import yaml
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"`--config` file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"`--config` file {str(path)!r} is not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})") from None
    if not text.strip():
        return {}
    try:
        data = yaml.safe_load(text)  # the structure, with line and column for a syntax error
        if isinstance(data, dict):  # the values as OmegaConf reads them: 3e-4 a float, duplicate keys errors
            data = OmegaConf.to_container(OmegaConf.create(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"`--config` file {str(path)!r} is not valid YAML{where}: "
                          f"{getattr(exc, 'problem', exc)}") from None
    except Exception as exc:  # OmegaConf's own: e.g. a value type it cannot hold (!!set)
        raise ConfigError(f"`--config` file {str(path)!r} holds a value loraexp cannot read: "
                          f"{str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"`--config` file {str(path)!r} must hold a mapping of settings, got "
                          f"{type(data).__name__}")
    return data


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                cli: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load ``path`` (optional YAML), apply CLI flag values ``cli`` (dotted keys, None = not
    given) and then ``overrides`` (dotted keys, from ``--set``).

    Raises:
        ConfigError: see :func:`read_yaml` and :func:`build_config`.
    """
    layers = [read_yaml(path)] if path else []
    flags = {k: v for k, v in (cli or {}).items() if v is not None}
    return build_config(*layers, overrides={**flags, **(overrides or {})})
