"""Building a :class:`~agkd_bml.config.TrainConfig`: defaults < preset < YAML file < command-line flags.

This sits above the registries (methods, models, datasets, AMP modes), so it is where names are checked:
:func:`check` runs before anything is built, and :func:`complete` fills in every declared hyper-parameter, so
a run's ``config.yaml`` records each value that the training used. """

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from agkd_bml.config import FIELDS, TrainConfig
from agkd_bml.data import DATASETS
from agkd_bml.errors import UserError, unknown_choice
from agkd_bml.methods import METHODS, PARAMS, methods_using
from agkd_bml.models import check_arch
from agkd_bml.train.amp import AMP_CHOICES


def complete(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every declared hyper-parameter set (its default where the config does not say)."""
    return dataclasses.replace(cfg,
                               params={name: cfg.params.get(name, p.default) for name, p in PARAMS.items()})


def check(cfg: TrainConfig) -> None:
    """Check ``cfg`` against the registries (after :meth:`TrainConfig.validate`); raise :class:`UserError`."""
    cfg.validate()
    if cfg.method not in METHODS:
        raise unknown_choice("method", cfg.method, METHODS)
    check_arch(cfg.model.arch)
    if not (cfg.data.dataset in DATASETS or cfg.data.dataset.startswith("npz:")):
        raise unknown_choice("dataset", cfg.data.dataset, [*DATASETS, "npz:PATH"])
    if cfg.runtime.amp not in AMP_CHOICES:
        raise unknown_choice("--amp mode", cfg.runtime.amp, AMP_CHOICES)
    own = {p.name for p in METHODS[cfg.method].params}
    for name, value in cfg.params.items():
        if name not in PARAMS:
            raise unknown_choice("option", name, [*FIELDS, *PARAMS])
        p = PARAMS[name]
        if p.choices and value not in p.choices:
            raise unknown_choice(f"--{name.replace('_', '-')} value", str(value), p.choices)
        if name not in own and value != p.default:
            raise UserError(f"--{name.replace('_', '-')} {value} only applies to the methods that use it "
                            f"({', '.join(methods_using(name))}), not to {cfg.method}")


def _coerce(name: str, value: Any) -> Any:
    """Check a YAML value against the option's type (YAML gives ints, floats, bools, lists, None)."""
    default: Any
    if name in PARAMS:
        default = PARAMS[name].default
    else:
        default = FIELDS[name].default if FIELDS[name].default is not dataclasses.MISSING else []
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"config key {name!r} must be true or false; got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, list):
        if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
            raise UserError(f"config key {name!r} must be a list of integers; got {value!r}")
        return value
    if not isinstance(value, type(default)) or isinstance(value, bool) != isinstance(default, bool):
        raise UserError(f"config key {name!r} must be a {type(default).__name__}; got {value!r}")
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file (``yaml.safe_load``: no code runs), checking every key and value."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a mapping of option: value")
    keys = [k for k in (*FIELDS, *PARAMS) if k != "params"]
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name == "preset":
            out[name] = value
            continue
        if name not in keys:
            raise unknown_choice(f"config key in {path}:", str(key), [*keys, "preset"])
        out[name] = _coerce(name, value)
    return out


def preset_names() -> list[str]:
    """Names of the presets shipped in ``agkd_bml/presets``."""
    return sorted(p.name[:-5] for p in resources.files("agkd_bml.presets").iterdir()
                  if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    if name not in preset_names():
        raise unknown_choice("preset", name, preset_names())
    return Path(str(resources.files("agkd_bml.presets") / f"{name}.yaml"))


def preset_values(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The values of a preset, after those of the preset it names as its base (``preset: NAME``)."""
    if name in _seen:
        raise UserError(f"presets {' -> '.join((*_seen, name))} form a cycle")
    values = read_yaml(preset_path(name))
    base = values.pop("preset", None)
    merged = preset_values(base, (*_seen, name)) if base else {}
    merged.update(values)
    return merged


def resolve(preset: str | None = None, config_file: str | None = None,
            overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < preset < config file (which may name its own ``preset``) <
    command-line overrides; checked."""
    file_values = read_yaml(config_file) if config_file else {}
    preset = preset or file_values.get("preset")
    file_values.pop("preset", None)
    values = preset_values(preset) if preset else {}
    values.update(file_values)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    cfg = complete(TrainConfig.from_dict(values))
    check(cfg)
    return cfg
